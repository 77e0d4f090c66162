"""Modbus TCP framing: MBAP header vectors and stream properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate_sim.modbus import (
    NEED_DATA,
    Discarded,
    MbapDecoder,
    MbapFrame,
    MbapFramingError,
    encode_adu,
)

# Transaction 0x0001, protocol 0, length 6, unit 0x11, then "read registers 108-110".
REQUEST = bytes.fromhex("0001 0000 0006 11 03 006B 0003")


def drain(decoder: MbapDecoder) -> list[object]:
    events: list[object] = []
    while (event := decoder.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def test_one_request() -> None:
    decoder = MbapDecoder()
    decoder.feed(REQUEST)
    assert drain(decoder) == [MbapFrame(1, 0x11, bytes.fromhex("03 006B 0003"))]
    assert decoder.buffered == 0


def test_byte_by_byte() -> None:
    decoder = MbapDecoder()
    for byte in REQUEST[:-1]:
        decoder.feed(bytes([byte]))
        assert decoder.next_event() is NEED_DATA
    decoder.feed(REQUEST[-1:])
    assert drain(decoder) == [MbapFrame(1, 0x11, bytes.fromhex("03 006B 0003"))]


def test_truncated_header_waits() -> None:
    decoder = MbapDecoder()
    decoder.feed(bytes.fromhex("0001 0000 00"))
    assert decoder.next_event() is NEED_DATA
    assert decoder.buffered == 5


def test_truncated_pdu_waits() -> None:
    decoder = MbapDecoder()
    decoder.feed(REQUEST[:-2])
    assert decoder.next_event() is NEED_DATA


def test_two_requests_in_one_chunk() -> None:
    second = bytes.fromhex("0002 0000 0006 01 04 0008 0001")
    decoder = MbapDecoder()
    decoder.feed(REQUEST + second)
    assert drain(decoder) == [
        MbapFrame(1, 0x11, bytes.fromhex("03 006B 0003")),
        MbapFrame(2, 0x01, bytes.fromhex("04 0008 0001")),
    ]


def test_foreign_protocol_id_is_discarded_and_the_stream_goes_on() -> None:
    foreign = bytes.fromhex("0005 0001 0003 01 03 00")
    decoder = MbapDecoder()
    decoder.feed(foreign + REQUEST)
    events = drain(decoder)
    assert isinstance(events[0], Discarded)
    assert events[0].data == foreign
    assert events[1] == MbapFrame(1, 0x11, bytes.fromhex("03 006B 0003"))


def test_frame_without_function_code_is_discarded() -> None:
    decoder = MbapDecoder()
    decoder.feed(bytes.fromhex("0009 0000 0001 05") + REQUEST)
    events = drain(decoder)
    assert isinstance(events[0], Discarded)
    assert "function code" in events[0].reason
    assert isinstance(events[1], MbapFrame)


@pytest.mark.parametrize("length", [0x0000, 0x00FF, 0xFFFF])
def test_length_field_out_of_range_breaks_the_stream(length: int) -> None:
    decoder = MbapDecoder()
    decoder.feed(bytes.fromhex("0001 0000") + length.to_bytes(2, "big") + b"\x01" + REQUEST)
    with pytest.raises(MbapFramingError, match="length"):
        decoder.next_event()
    with pytest.raises(MbapFramingError):  # and stays broken
        decoder.next_event()


def test_largest_pdu_is_accepted() -> None:
    decoder = MbapDecoder()
    decoder.feed(bytes.fromhex("0001 0000 00FE 01") + bytes(253))
    assert drain(decoder) == [MbapFrame(1, 1, bytes(253))]


def test_encode_adu_written_by_hand() -> None:
    assert encode_adu(1, 0x11, bytes.fromhex("03 06 022B 0000 0064")) == bytes.fromhex(
        "0001 0000 0009 11 03 06 022B 0000 0064"
    )
    assert encode_adu(0xFFFF, 0xFF, b"\x84\x02") == bytes.fromhex("FFFF 0000 0003 FF 84 02")


def test_encode_adu_rejects_oversized_pdus() -> None:
    with pytest.raises(ValueError, match="253"):
        encode_adu(1, 1, bytes(254))


def events_of(stream: bytes, cuts: list[int]) -> tuple[list[object], bool]:
    """Events from feeding ``stream`` cut at ``cuts``; True if framing broke."""
    decoder = MbapDecoder()
    events: list[object] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        decoder.feed(stream[start:cut])
        start = max(start, cut)
        try:
            events += drain(decoder)
        except MbapFramingError:
            return events, True
    return events, False


@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=12))
def test_any_bytes_any_chunking_same_events(stream: bytes, cuts: list[int]) -> None:
    whole = events_of(stream, [])
    assert events_of(stream, [min(c, len(stream)) for c in cuts]) == whole
    for event in whole[0]:
        assert isinstance(event, MbapFrame | Discarded)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.binary(min_size=1, max_size=253)
        ),
        max_size=5,
    )
)
def test_encoded_frames_decode_to_themselves(frames: list[tuple[int, int, bytes]]) -> None:
    decoder = MbapDecoder()
    decoder.feed(b"".join(encode_adu(*frame) for frame in frames))
    assert drain(decoder) == [MbapFrame(*frame) for frame in frames]
