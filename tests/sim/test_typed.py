"""The typed map: documented values in every type and word order."""

from __future__ import annotations

import struct

import pytest

from citygate_sim.modbus import (
    TYPED_TEXT,
    TYPED_TEXT_ADDRESS,
    RequestHandler,
    TypedMeter,
    ValueType,
    WordOrder,
    typed_address,
)

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
    # the typed block ends after the 48-bit types, at 1160
    assert read(handler, 4, 1035, 125)[-2:] == read(handler, 4, 1159, 1)
    assert handler.handle_request(1, struct.pack(">BHH", 3, 1159, 2)) == bytes.fromhex("83 02")


# 48-bit integers and the string block (drivers/modbus README: CDAB reverses the
# registers, BADC swaps the bytes of each, DCBA reverses the whole value).
@pytest.mark.parametrize("function", [3, 4], ids=["holding", "input"])
@pytest.mark.parametrize(
    ("type_name", "address", "wire"),
    [
        ("int48", 1128, "ED CB A9 87 65 44"),
        ("int48", 1132, "65 44 A9 87 ED CB"),
        ("int48", 1136, "CB ED 87 A9 44 65"),
        ("int48", 1140, "44 65 87 A9 CB ED"),
        ("uint48", 1144, "01 23 45 67 89 AB"),
        ("uint48", 1148, "89 AB 45 67 01 23"),
        ("uint48", 1152, "23 01 67 45 AB 89"),
        ("uint48", 1156, "AB 89 67 45 23 01"),
    ],
)
def test_48_bit_values_on_the_wire(type_name: str, address: int, wire: str, function: int) -> None:
    order = ORDERS[(address - 1128) // 4 % 4]
    assert typed_address(ValueType(type_name), WordOrder(order)) == address
    assert read(RequestHandler({1: TypedMeter()}), function, address, 3) == bytes.fromhex(wire)


@pytest.mark.parametrize(
    ("order", "wire"),
    [
        ("ABCD", b"CG-SIM v1.0.3\x00\x00\x00"),
        ("CDAB", b"\x00\x003\x000.1. vIM-SCG"),  # the registers in reverse order
        ("BADC", b"GCS-MIv .1.0\x003\x00\x00"),  # the two bytes of each register swapped
        ("DCBA", b"\x00\x00\x003.0.1v MIS-GC"),  # the whole text reversed
    ],
)
def test_the_string_block_in_every_order(order: str, wire: bytes) -> None:
    address = typed_address(ValueType.STRING, WordOrder(order))
    assert address == TYPED_TEXT_ADDRESS + 8 * ORDERS.index(order)
    assert read(RequestHandler({1: TypedMeter()}), 3, address, 8) == wire
    assert TypedMeter().texts()[f"holding_string_{order.lower()}"] == TYPED_TEXT
