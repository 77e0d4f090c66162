"""Hypothesis: any bytes into the request handler give an answer, never an exception."""

from __future__ import annotations

import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st

from citygate_sim.modbus import (
    UNMAPPED_POLICIES,
    Meter,
    RequestHandler,
    StaticMeter,
    Table,
    TypedMeter,
    Unmapped,
    exception_response,
    handle_pdu,
    make_meter,
)


def all_models_handler() -> RequestHandler:
    meters = {
        1: make_meter("sdm630", seed=1),
        2: make_meter("sdm120", seed=2),
        3: make_meter("generic10", seed=3),
        4: TypedMeter(),
        5: TypedMeter(unmapped="zero"),
        6: make_meter("sdm630", seed=6, unmapped="zero"),
        7: StaticMeter(holding={0: 1}, coils={0: True}),
        8: make_meter("sdm630", seed=8, unmapped="exception"),
        9: make_meter("sdm120", seed=9, unmapped="exception"),
        10: make_meter("generic10", seed=10, unmapped="zero_in_map"),
    }
    return RequestHandler(meters, unknown_unit="gateway_error")


HANDLER = all_models_handler()
FUNCTION_CODES = st.sampled_from([1, 2, 3, 4]) | st.integers(0, 255)


def check_response(pdu: bytes, response: bytes | None) -> None:
    if response is None:
        return
    function = pdu[0]
    assert response[0] in (function, function | 0x80)
    if response[0] & 0x80:
        assert len(response) == 2
        assert response[1] in (1, 2, 3, 4, 0x0B)
        return
    if function in (5, 6, 15, 16):  # a write (issue 14): 05/06 echo the request, 15/16 its
        assert response == pdu[:5]  # function, address and quantity
        return
    assert function in (1, 2, 3, 4)
    _, _, count = struct.unpack(">BHH", pdu)
    expected = (count + 7) // 8 if function in (1, 2) else 2 * count
    assert response[1] == expected == len(response) - 2


@given(st.integers(0, 255), st.binary(max_size=300))
def test_random_bytes_never_raise(unit: int, pdu: bytes) -> None:
    response = HANDLER.handle_request(unit, pdu)
    if pdu:
        check_response(pdu, response)
    else:
        assert response is None


@given(st.integers(1, 10), FUNCTION_CODES, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
@example(unit=4, function=5, address=0, count=0)  # coil 0 off: a write the simulators accept
def test_read_shaped_requests_get_well_formed_answers(
    unit: int, function: int, address: int, count: int
) -> None:
    pdu = struct.pack(">BHH", function, address, count)
    response = HANDLER.handle_request(unit, pdu)
    assert response is not None
    check_response(pdu, response)


@given(st.integers(1, 10), st.sampled_from([3, 4]), st.integers(0, 0x01FF), st.integers(1, 125))
def test_register_reads_near_the_maps(unit: int, function: int, address: int, count: int) -> None:
    pdu = struct.pack(">BHH", function, address, count)
    check_response(pdu, HANDLER.handle_request(unit, pdu))


def frozen_meter(model: str, unmapped: Unmapped) -> Meter:
    meter = make_meter(model, seed=3, clock=lambda: 0.0, start_time=1.7e9, unmapped=unmapped)
    meter.freeze()
    return meter


SAME_METER = {
    (model, policy): frozen_meter(model, policy)
    for model in ("sdm630", "sdm120")
    for policy in UNMAPPED_POLICIES
}


@given(
    st.sampled_from(["sdm630", "sdm120"]),
    st.sampled_from([3, 4]),
    st.integers(0, 0x01FF) | st.integers(0xFBF0, 0xFC08),
    st.integers(1, 80),
)
def test_eastron_policies_agree_inside_the_map(
    model: str, function: int, address: int, count: int
) -> None:
    """Inside the documented map the default reads like ``zero``, outside it is 02;
    the strict meter answers the same data or 02."""
    pdu = struct.pack(">BHH", function, address, count)
    default = handle_pdu(SAME_METER[model, "zero_in_map"], pdu)
    zeros = handle_pdu(SAME_METER[model, "zero"], pdu)
    strict = handle_pdu(SAME_METER[model, "exception"], pdu)
    illegal_address = exception_response(function, 0x02)
    table = Table.HOLDING_REGISTERS if function == 3 else Table.INPUT_REGISTERS
    ranges = SAME_METER[model, "zero_in_map"].map_ranges(table)
    whole_floats = address % 2 == 0 and count % 2 == 0
    inside = any(start <= address and address + count <= end for start, end in ranges)
    if whole_floats and inside:
        assert default == zeros
        assert default[0] == function
    else:
        assert default == illegal_address
    assert strict in (default, illegal_address)


@settings(max_examples=50)
@given(st.dictionaries(st.integers(0, 300), st.booleans(), min_size=1))
def test_bits_come_back_in_protocol_order(bits: dict[int, bool]) -> None:
    meter = StaticMeter(coils=bits, unmapped="zero")
    first, last = min(bits), max(bits)
    count = last - first + 1
    response = handle_pdu(meter, struct.pack(">BHH", 1, first, count))
    packed = response[2:]
    assert len(packed) == (count + 7) // 8
    for offset in range(8 * len(packed)):
        bit = packed[offset // 8] >> (offset % 8) & 1
        assert bit == (int(bits.get(first + offset, False)) if offset < count else 0)


@settings(max_examples=50)
@given(st.dictionaries(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), min_size=1, max_size=40))
def test_words_come_back_big_endian(words: dict[int, int]) -> None:
    meter = StaticMeter(holding=words)
    for address, word in words.items():
        assert handle_pdu(meter, struct.pack(">BHH", 3, address, 1)) == b"\x03\x02" + struct.pack(
            ">H", word
        )
