"""EN 13757-2 link layer: request encoding, the streaming frame decoder, its properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.api import DecodeError
from citygate.drivers.mbus.link import (
    NEED_DATA,
    Ack,
    Discarded,
    Frame,
    FrameDecoder,
    NeedData,
    encode_req_ud2,
    encode_select,
    encode_snd_nke,
    parse_frame,
    reply_timeout,
    wire_time,
)
from tests.drivers.mbus.libmbus import FRAMES

REAL_FRAMES = [bytes.fromhex(p.read_text()) for p in sorted(FRAMES.glob("*.hex"))]


def _events(decoder: FrameDecoder) -> list[Frame | Ack | Discarded]:
    events: list[Frame | Ack | Discarded] = []
    while not isinstance(event := decoder.next_event(), NeedData):
        events.append(event)
    return events


# --------------------------------------------------------------------------- requests


def test_snd_nke_and_req_ud2_are_short_frames() -> None:
    # EN 13757-2: 10 C A CS 16, CS = C + A; SND_NKE C=40, REQ_UD2 C=5B (+20 with FCB)
    assert encode_snd_nke(1) == bytes.fromhex("10 40 01 41 16")
    assert encode_req_ud2(1, fcb=False) == bytes.fromhex("10 5B 01 5C 16")
    assert encode_req_ud2(1, fcb=True) == bytes.fromhex("10 7B 01 7C 16")
    assert encode_req_ud2(0xFD, fcb=True) == bytes.fromhex("10 7B FD 78 16")


@pytest.mark.parametrize("address", [-1, 251, 252, 256])
def test_reserved_primary_addresses_are_refused(address: int) -> None:
    with pytest.raises(ValueError, match="primary address"):
        encode_req_ud2(address, fcb=False)


def test_select_with_wildcards() -> None:
    # SND_UD to 253, CI 52: id 12345678 LSB first, manufacturer/version/medium wildcards FF
    frame = encode_select("12345678")
    assert frame[:7] == bytes.fromhex("68 0B 0B 68 53 FD 52")
    assert frame[7:15] == bytes.fromhex("78 56 34 12 FF FF FF FF")
    assert frame[15] == sum(frame[4:15]) % 256
    assert frame[16] == 0x16
    # wildcard digits stay F nibbles; a full address carries manufacturer, version, medium
    full = encode_select("1234FFFF23240107")  # HYD = 0x2324 sent LSB first, version 1, water
    assert full[7:15] == bytes.fromhex("FF FF 34 12 24 23 01 07")


@pytest.mark.parametrize("bad", ["1234567", "1234567A", "12345678ZZ000000", ""])
def test_select_refuses_a_malformed_address(bad: str) -> None:
    with pytest.raises(ValueError, match="secondary address"):
        encode_select(bad)


def test_requests_decode_as_frames() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_snd_nke(5) + encode_req_ud2(5, fcb=True) + encode_select("0000FFFF"))
    short1, short2, select = _events(decoder)
    assert isinstance(short1, Frame) and (short1.control, short1.address) == (0x40, 5)
    assert isinstance(short2, Frame) and short2.control == 0x7B
    assert isinstance(select, Frame) and select.kind == "long" and select.ci == 0x52


def test_timing_from_the_baud_rate() -> None:
    # 11 bits per character (8E1): a 5-byte request takes 55 bit times
    assert wire_time(5, 2400) == pytest.approx(55 / 2400)
    # at least the 330 bit times + 50 ms EN 13757-2 allows, plus the reply's own wire time
    assert reply_timeout(2400) >= 330 / 2400 + 0.05
    assert reply_timeout(300, 100) > reply_timeout(2400, 100) > reply_timeout(9600, 100)


# --------------------------------------------------------------------------- decoding


def test_ack_short_and_long_frames() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\xe5" + REAL_FRAMES[0] + bytes.fromhex("10 40 01 41 16"))
    ack, long_frame, short = _events(decoder)
    assert isinstance(ack, Ack)
    assert isinstance(long_frame, Frame) and long_frame.raw == REAL_FRAMES[0]
    assert long_frame.ci == 0x72 and long_frame.data == REAL_FRAMES[0][7:-2]
    assert isinstance(short, Frame) and short.kind == "short"
    assert decoder.next_event() is NEED_DATA
    assert decoder.pending == 0


def test_bad_checksum_is_discarded_and_decoding_carries_on() -> None:
    corrupt = bytearray(REAL_FRAMES[1])
    corrupt[-2] ^= 0x01
    decoder = FrameDecoder()
    decoder.feed(bytes(corrupt) + REAL_FRAMES[2])
    discarded, frame = _events(decoder)
    assert discarded == Discarded(bytes(corrupt), "checksum mismatch")
    assert isinstance(frame, Frame) and frame.raw == REAL_FRAMES[2]


def test_collision_garbage_before_a_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\xff\x42\x68\x05\x06" + REAL_FRAMES[3])
    events = _events(decoder)
    assert isinstance(events[-1], Frame) and events[-1].raw == REAL_FRAMES[3]
    assert all(isinstance(e, Discarded) for e in events[:-1])
    assert b"".join(e.data for e in events[:-1] if isinstance(e, Discarded)) == (
        b"\x00\xff\x42\x68\x05\x06"
    )


def test_truncated_frame_waits_then_reset_returns_it() -> None:
    decoder = FrameDecoder()
    decoder.feed(REAL_FRAMES[4][:-3])
    assert decoder.next_event() is NEED_DATA
    assert decoder.reset() == REAL_FRAMES[4][:-3]
    assert decoder.pending == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no data"),
        (b"\xe5", "acknowledgement"),
        (bytes.fromhex("10 40 01 42 16"), "checksum"),
        (bytes.fromhex("68 04 05 68 08 01 72 00 7B 16"), "68 L L 68"),
        (bytes.fromhex("68 02 02 68 08 01 09 16"), "below 3"),
        (bytes.fromhex("68 03 03 68 08 01 72"), "incomplete"),
    ],
)
def test_parse_frame_errors(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        parse_frame(data)


def test_parse_frame_refuses_bytes_after_the_frame() -> None:
    with pytest.raises(DecodeError, match="after the end"):
        parse_frame(REAL_FRAMES[0] + b"\x00")


# --------------------------------------------------------------------------- properties


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_give_a_frame_or_decode_error(data: bytes) -> None:
    try:
        frame = parse_frame(data)
    except DecodeError:
        return
    assert frame.raw == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_every_byte_is_accounted_for(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(data)
    events = _events(decoder)
    seen = b"".join(
        e.raw if isinstance(e, Frame) else e.data if isinstance(e, Discarded) else b"\xe5"
        for e in events
    )
    assert seen + decoder.reset() == data


_pieces = st.lists(
    st.one_of(
        st.sampled_from(REAL_FRAMES),
        st.just(b"\xe5"),
        st.sampled_from([encode_snd_nke(7), encode_req_ud2(7, fcb=True)]),
        st.binary(min_size=1, max_size=12),  # collision garbage, may hold start bytes
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(_pieces, st.data())
def test_same_frames_however_the_stream_is_split(pieces: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(pieces)
    whole = FrameDecoder()
    whole.feed(stream)
    expected = _events(whole)

    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=12)))
    split = FrameDecoder()
    got: list[Frame | Ack | Discarded] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        split.feed(stream[start:cut])
        start = cut
        got += _events(split)

    def frames(events: list[Frame | Ack | Discarded]) -> list[Frame | Ack]:
        return [e for e in events if not isinstance(e, Discarded)]

    def discarded(events: list[Frame | Ack | Discarded]) -> bytes:
        return b"".join(e.data for e in events if isinstance(e, Discarded))

    assert frames(got) == frames(expected)
    assert discarded(got) == discarded(expected)
    assert split.pending == whole.pending


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(REAL_FRAMES), st.binary(min_size=1, max_size=20))
def test_a_real_frame_survives_garbage_that_holds_no_start_byte(frame: bytes, junk: bytes) -> None:
    junk = bytes(b for b in junk if b not in (0x10, 0x68, 0xE5)) or b"\x00"
    decoder = FrameDecoder()
    decoder.feed(junk + frame)
    events = _events(decoder)
    assert isinstance(events[-1], Frame) and events[-1].raw == frame


def test_finish_finds_a_frame_behind_a_false_start() -> None:
    # garbage that looks like the header of a 255-byte frame, then a real reply
    decoder = FrameDecoder()
    decoder.feed(bytes.fromhex("68 FF FF 68") + REAL_FRAMES[5])
    assert decoder.next_event() is NEED_DATA
    events = decoder.finish()
    assert isinstance(events[-1], Frame) and events[-1].raw == REAL_FRAMES[5]
    assert b"".join(e.data for e in events[:-1] if isinstance(e, Discarded)) == bytes.fromhex(
        "68 FF FF 68"
    )
    assert decoder.pending == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_finish_accounts_for_every_byte(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(data)
    events = _events(decoder) + decoder.finish()
    seen = b"".join(
        e.raw if isinstance(e, Frame) else e.data if isinstance(e, Discarded) else b"\xe5"
        for e in events
    )
    assert seen == data
    assert decoder.pending == 0


# --------------------------------------------------------------------------- a babbling device


def test_a_flood_of_false_frame_starts_stays_bounded_and_the_frame_behind_it_decodes() -> None:
    """Issue 12 guard: garbage full of false long-frame headers (each waits for 261
    bytes) is discarded as it goes, never held; the buffer stays one frame's worth."""
    flood = (bytes.fromhex("68 FF FF 68") + bytes(range(0x20, 0x60))) * 4000  # 272 KB
    decoder = FrameDecoder()
    discarded = 0
    most = 0
    for start in range(0, len(flood), 32):
        decoder.feed(flood[start : start + 32])
        for event in _events(decoder):
            assert isinstance(event, Discarded)
            discarded += len(event.data)
        most = max(most, decoder.pending)
    assert most <= 255 + 6 + 32
    decoder.feed(REAL_FRAMES[0])
    events = [*_events(decoder), *decoder.finish()]
    discarded += sum(len(e.data) for e in events if isinstance(e, Discarded))
    assert discarded == len(flood)
    assert [e.raw for e in events if isinstance(e, Frame)] == [REAL_FRAMES[0]]
