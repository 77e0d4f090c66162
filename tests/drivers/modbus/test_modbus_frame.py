"""Modbus TCP framing (sans-I/O), from bytes written by hand from the spec."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.api import DecodeError
from citygate.drivers.modbus.frame import (
    MbapDecoder,
    MbapFrame,
    MbapFramingError,
    ReadRequestFrame,
    encode_read_request,
    parse_read_reply,
)
from citygate.drivers.modbus.rtu import ExceptionReply, RegisterReply

# MBAP: tid 0x0007, protocol 0, length 6, unit 3; PDU: FC 04, address 0x0000, count 2
REQUEST = bytes.fromhex("0007 0000 0006 03 04 0000 0002")
READ = ReadRequestFrame(transaction_id=7, unit=3, function=4, address=0, count=2)
# the reply of vectors/modbus M1 (230.2 V) in a TCP frame
GOOD = bytes.fromhex("0007 0000 0007 03 04 04 43663334")


def frames_of(data: bytes) -> list[MbapFrame]:
    return MbapDecoder().feed(data)


def reply(data: bytes, request: ReadRequestFrame = READ) -> RegisterReply | ExceptionReply:
    (frame,) = frames_of(data)
    return parse_read_reply(frame, request)


def test_encode_read_request() -> None:
    assert encode_read_request(READ) == REQUEST
    coils = ReadRequestFrame(1, 1, 0x01, 0x13, 19)
    assert encode_read_request(coils) == bytes.fromhex("0001 0000 0006 01 01 0013 0013")
    assert coils.reply_data_bytes == 3  # 19 coils: 3 bytes (spec example 6.1)
    assert READ.reply_data_bytes == 4
    with pytest.raises(ValueError, match="not a read"):
        encode_read_request(ReadRequestFrame(1, 1, 0x10, 0, 1))
    with pytest.raises(ValueError, match="out of range"):
        encode_read_request(ReadRequestFrame(1, 1, 0x03, 0, 0))


def test_good_replies() -> None:
    assert reply(GOOD) == RegisterReply(bytes.fromhex("43663334"))
    assert reply(GOOD).registers() == [0x4366, 0x3334]
    # exception 02 to FC 04 (vectors/modbus M6's PDU: 84 02)
    assert reply(bytes.fromhex("0007 0000 0003 03 84 02")) == ExceptionReply(2)


def test_incomplete_frames_wait_for_more() -> None:
    decoder = MbapDecoder()
    for byte in GOOD[:-1]:
        assert decoder.feed(bytes([byte])) == []
    assert decoder.pending == len(GOOD) - 1
    assert decoder.feed(GOOD[-1:]) == [MbapFrame(7, 3, bytes.fromhex("04 04 43663334"))]
    assert decoder.pending == 0


def test_several_frames_in_one_chunk() -> None:
    stale = bytes.fromhex("0006 0000 0007 03 04 04 00000000")
    found = frames_of(stale + GOOD + GOOD[:3])
    assert [f.transaction_id for f in found] == [6, 7]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("0007 0001 0007 03 04 04 43663334", "protocol id 1, expected 0"),
        ("0007 0000 0001 03", "frame length 1 out of range 2–254"),
        ("0007 0000 00FF 03", "frame length 255 out of range"),
        ("0000 4500 0000", "protocol id 17664"),  # garbage: not a header at all
    ],
)
def test_broken_streams_stay_broken(data: str, problem: str) -> None:
    decoder = MbapDecoder()
    with pytest.raises(MbapFramingError, match=problem):
        decoder.feed(bytes.fromhex(data))
    assert isinstance(decoder.error, DecodeError)
    with pytest.raises(MbapFramingError, match=problem):
        decoder.feed(GOOD)


def test_frames_before_a_break_are_delivered_first() -> None:
    decoder = MbapDecoder()
    assert decoder.feed(GOOD + bytes.fromhex("0008 0001")) == frames_of(GOOD)
    assert decoder.error is not None
    with pytest.raises(MbapFramingError, match="protocol id 1"):
        decoder.feed(b"")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("0007 0000 0007 05 04 04 43663334", "reply from unit 5, expected unit 3"),
        ("0007 0000 0007 03 03 04 43663334", "reply with function code 3, expected 4"),
        ("0007 0000 0005 03 04 02 4366", "reply carries 2 data bytes, expected 4"),
        ("0007 0000 0007 03 04 06 43663334", "reply carries 6 data bytes, expected 4"),
        ("0007 0000 0009 03 04 04 4366333400 00", "reply frame holds 6 data bytes but says 4"),
        ("0007 0000 0004 03 84 02 00", "exception reply of 3 bytes, expected 2"),
        ("0007 0000 0002 03 84", "exception reply of 1 bytes, expected 2"),
        ("0007 0000 0002 03 04", "reply without a byte count"),
    ],
)
def test_malformed_replies_say_what_is_wrong(data: str, problem: str) -> None:
    with pytest.raises(DecodeError) as caught:
        reply(bytes.fromhex(data))
    assert str(caught.value) == problem


def test_unit_zero_accepts_a_reply_from_any_unit() -> None:
    request = ReadRequestFrame(transaction_id=7, unit=0, function=4, address=0, count=2)
    assert isinstance(reply(GOOD, request), RegisterReply)


def decode_all(chunks: list[bytes]) -> tuple[list[MbapFrame], str | None]:
    """Every frame the chunks give, and the error that ends the stream (if any)."""
    decoder = MbapDecoder()
    frames: list[MbapFrame] = []
    try:
        for chunk in [*chunks, b""]:
            frames.extend(decoder.feed(chunk))
    except MbapFramingError as exc:  # anything else fails the test
        return frames, str(exc)
    return frames, None


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# Streams near the protocol: real frames (good, stale, odd) mixed with junk.
_frame = st.builds(
    lambda tid, proto, unit, pdu, length: (
        tid.to_bytes(2, "big")
        + proto.to_bytes(2, "big")
        + (len(pdu) + 1 if length is None else length).to_bytes(2, "big")
        + bytes([unit])
        + pdu
    ),
    st.integers(0, 0xFFFF),
    st.sampled_from([0, 0, 0, 0, 1, 0xFFFF]),
    st.integers(0, 255),
    st.binary(min_size=0, max_size=20),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
)
_stream = st.lists(st.one_of(_frame, st.binary(max_size=12)), max_size=8).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(st.binary(max_size=400), _stream),
    cuts=st.lists(st.integers(0, 400), max_size=12),
    request=st.builds(
        ReadRequestFrame,
        st.integers(0, 0xFFFF),
        st.integers(0, 255),
        st.sampled_from([1, 2, 3, 4]),
        st.integers(0, 0xFFFF),
        st.integers(1, 125),
    ),
)
def test_any_bytes_any_chunking_give_frames_or_a_decode_error(
    data: bytes, cuts: list[int], request: ReadRequestFrame
) -> None:
    whole = decode_all([data])
    assert decode_all(chunked(data, cuts)) == whole
    assert decode_all([bytes([b]) for b in data]) == whole
    frames, _ = whole
    for frame in frames:
        assert 1 <= len(frame.pdu) <= 253
        try:
            parsed = parse_read_reply(frame, request)
        except DecodeError:
            continue
        assert isinstance(parsed, RegisterReply | ExceptionReply)
        if isinstance(parsed, RegisterReply):
            assert len(parsed.data) == request.reply_data_bytes
