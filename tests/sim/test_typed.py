"""The typed map: documented values in every type and word order."""

from __future__ import annotations

import struct

import pytest

from citygate_sim.modbus import RequestHandler, TypedMeter, ValueType, WordOrder, typed_address

# The values documented in hardware-sim/README.md ("typed" table).
DOCUMENTED: dict[str, tuple[str, float]] = {
    "int16": ("h", -12345),
    "uint16": ("H", 0xCAFE),
    "int32": ("i", -123456789),
    "uint32": ("I", 0xDEADBEEF),
    "int64": ("q", -1234567890123456789),
    "uint64": ("Q", 0x0123456789ABCDEF),
    "float32": ("f", struct.unpack(">f", bytes.fromhex("43663334"))[0]),
    "float64": ("d", -1234.5678),
}
TYPES = list(DOCUMENTED)
ORDERS = ["ABCD", "CDAB", "BADC", "DCBA"]


def to_big_endian(data: bytes, order: str) -> bytes:
    """The test's own reading of the order definitions in the brief."""
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order == "ABCD":
        return data
    if order == "CDAB":
        return b"".join(reversed(words))
    if order == "BADC":
        return b"".join(w[1:2] + w[0:1] for w in words)
    return bytes(reversed(data))


def read(handler: RequestHandler, function: int, address: int, count: int) -> bytes:
    response = handler.handle_request(1, struct.pack(">BHH", function, address, count))
    assert response is not None
    assert response[0] == function, response.hex()
    assert response[1] == 2 * count
    return response[2:]


@pytest.mark.parametrize("function", [3, 4], ids=["holding", "input"])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_name", TYPES)
def test_every_type_and_order_decodes_to_the_documented_value(
    type_name: str, order: str, function: int
) -> None:
    fmt, expected = DOCUMENTED[type_name]
    size = struct.calcsize(fmt)
    address = 1000 + 16 * TYPES.index(type_name) + 4 * ORDERS.index(order)
    assert typed_address(ValueType(type_name), WordOrder(order)) == address
    data = read(RequestHandler({1: TypedMeter()}), function, address, size // 2)
    (value,) = struct.unpack(">" + fmt, to_big_endian(data, order))
    assert value == expected


@pytest.mark.parametrize(
    ("address", "wire"),
    [
        # vectors/modbus README C.1 worked example: 230.2 V = 0x43663334
        (1096, "43 66 33 34"),
        (1100, "33 34 43 66"),
        (1104, "66 43 34 33"),
        (1108, "34 33 66 43"),
        (1048, "DE AD BE EF"),
        (1052, "BE EF DE AD"),
        (1056, "AD DE EF BE"),
        (1060, "EF BE AD DE"),
        (1000, "CF C7"),
        (1004, "CF C7"),
        (1008, "C7 CF"),
        (1012, "C7 CF"),
        (1084, "CD EF 89 AB 45 67 01 23"),
    ],
)
def test_wire_bytes_written_by_hand(address: int, wire: str) -> None:
    expected = bytes.fromhex(wire)
    assert read(RequestHandler({1: TypedMeter()}), 3, address, len(expected) // 2) == expected


def test_truth_holds_the_documented_values() -> None:
    truth = TypedMeter().truth()
    for type_name, (_, expected) in DOCUMENTED.items():
        for order in ORDERS:
            for table in ("holding", "input"):
                assert truth[f"{table}_{type_name}_{order.lower()}"] == expected


def test_slot_padding_is_mapped_so_the_block_reads_in_one_go() -> None:
    handler = RequestHandler({1: TypedMeter()})
    data = read(handler, 3, 1000, 125)
    assert data[2:8] == bytes(6)  # int16 ABCD then three padding registers of 0
    assert read(handler, 4, 1003, 125)[-2:] == read(handler, 4, 1127, 1)
    assert handler.handle_request(1, struct.pack(">BHH", 3, 1127, 2)) == bytes.fromhex("83 02")
