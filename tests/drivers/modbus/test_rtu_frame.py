"""Modbus RTU framing (citygate.drivers.modbus.rtu): spec vectors, then properties."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.api import ReplyFramer
from citygate.drivers.modbus.rtu import (
    MAX_RTU_FRAME,
    BadReply,
    ExceptionReply,
    RegisterReply,
    RtuReplyFramer,
    crc16,
    encode_read_request,
    rtu_frame,
)

# ../shared/vectors/modbus/README.md C.0
M1_REQUEST = bytes.fromhex("01 04 00 00 00 02 71 CB")
M1_REPLY = bytes.fromhex("01 04 04 43 66 33 34 1B 38")  # 230.2 V
M3_REPLY_BAD_CRC = bytes.fromhex("01 04 04 FF FF FC 18 D6 41")  # the source's CRC is wrong
M4_REQUEST = bytes.fromhex("01 03 00 00 00 02 C4 0B")
M4_REPLY = bytes.fromhex("01 03 04 01 11 02 72 2A 8F")
M5_REQUEST = bytes.fromhex("0A 04 00 00 00 06 71 73")
M6_EXCEPTION = bytes.fromhex("01 84 02 C2 C1")
MAX_FRAME_BYTES = MAX_RTU_FRAME + 4  # a reply: unit, function, byte count 255, data, CRC


def feed_all(framer: RtuReplyFramer, data: bytes, chunks: list[int] | None = None) -> bool:
    done = False
    position = 0
    for size in chunks or [len(data)]:
        done = framer.feed(data[position : position + size]) or done
        position += size
    if position < len(data):
        done = framer.feed(data[position:]) or done
    return done


def test_crc_of_the_vectors() -> None:
    for frame in (M1_REQUEST, M1_REPLY, M4_REQUEST, M4_REPLY, M5_REQUEST, M6_EXCEPTION):
        assert struct.pack("<H", crc16(frame[:-2])) == frame[-2:]
    assert crc16(bytes.fromhex("01 04 04 FF FF FC 18")) == 0xAABA  # README: "BA AA"
    assert crc16(b"") == 0xFFFF


def test_requests_are_encoded_as_the_vectors() -> None:
    assert encode_read_request(1, 0x04, 0x0000, 2) == M1_REQUEST
    assert encode_read_request(1, 0x03, 0x0000, 2) == M4_REQUEST
    assert encode_read_request(10, 0x04, 0x0000, 6) == M5_REQUEST
    assert rtu_frame(1, bytes.fromhex("84 02")) == M6_EXCEPTION


def test_a_reply_decodes_to_its_registers() -> None:
    framer = RtuReplyFramer(1, 0x04, 2)
    assert isinstance(framer, ReplyFramer)
    assert not framer.feed(M1_REPLY[:5])
    assert framer.feed(M1_REPLY[5:])
    assert framer.outcome == RegisterReply(bytes.fromhex("43 66 33 34"))
    assert isinstance(framer.outcome, RegisterReply)
    assert framer.outcome.registers() == [0x4366, 0x3334]
    assert struct.unpack(">f", framer.outcome.data)[0] == pytest.approx(230.2, abs=1e-4)

    holding = RtuReplyFramer(1, 0x03, 2)
    assert holding.feed(M4_REPLY)
    assert isinstance(holding.outcome, RegisterReply)
    assert holding.outcome.registers() == [273, 626]


def test_an_exception_reply_carries_its_code() -> None:
    framer = RtuReplyFramer(1, 0x04, 2)
    assert framer.feed(M6_EXCEPTION)
    assert framer.outcome == ExceptionReply(2)


def test_a_bad_crc_is_a_verdict_without_waiting() -> None:
    framer = RtuReplyFramer(1, 0x04, 2)
    assert framer.feed(M3_REPLY_BAD_CRC)
    assert isinstance(framer.outcome, BadReply)
    assert framer.outcome.kind == "crc"


def test_stray_bytes_before_the_reply_are_skipped_and_counted() -> None:
    framer = RtuReplyFramer(1, 0x04, 2)
    assert framer.feed(b"\x00\xff\x13" + M1_REPLY)
    assert framer.outcome == RegisterReply(bytes.fromhex("43 66 33 34"))
    assert framer.stray_bytes == 3


def test_a_reply_from_another_unit_is_set_aside() -> None:
    other = rtu_frame(7, bytes.fromhex("04 04 00 00 00 00"))
    framer = RtuReplyFramer(1, 0x04, 2)
    assert not framer.feed(other)
    assert framer.wrong_units == [7]
    assert framer.failure() == ("wrong_unit", "reply from unit 7, expected unit 1")
    assert framer.feed(M1_REPLY)  # the right reply still counts when it follows
    assert isinstance(framer.outcome, RegisterReply)


def test_a_wrong_byte_count_is_a_length_error() -> None:
    framer = RtuReplyFramer(1, 0x04, 4)  # asked for 4 registers, 2 came
    assert framer.feed(M1_REPLY)
    assert framer.outcome == BadReply("length", "reply carries 4 data bytes, expected 8")


def test_what_a_timeout_leaves_is_named() -> None:
    silent = RtuReplyFramer(1, 0x04, 2)
    assert silent.failure() == ("silent", "no answer")
    truncated = RtuReplyFramer(1, 0x04, 2)
    assert not truncated.feed(M1_REPLY[:6])
    assert truncated.failure() == ("truncated", "truncated reply (6 of 9 bytes)")
    garbage = RtuReplyFramer(1, 0x04, 2)
    assert not garbage.feed(b"\x55\xaa\x55\xaa")
    assert garbage.failure() == ("garbage", "4 bytes that are no Modbus RTU reply")


def test_coils_unpack_lsb_first() -> None:
    reply = rtu_frame(3, bytes((0x01, 2, 0b1100_1101, 0b0000_0001)))
    framer = RtuReplyFramer(3, 0x01, 10)
    assert framer.feed(reply)
    assert isinstance(framer.outcome, RegisterReply)
    expected = [True, False, True, True, False, False, True, True, True, False]
    assert framer.outcome.bits(10) == expected


@given(st.binary(max_size=300), st.integers(1, 247), st.sampled_from([1, 2, 3, 4]))
def test_any_bytes_give_a_verdict_or_a_named_failure(data: bytes, unit: int, function: int) -> None:
    framer = RtuReplyFramer(unit, function, 2)
    if framer.feed(data):
        assert isinstance(framer.outcome, RegisterReply | ExceptionReply | BadReply)
    else:
        kind, message = framer.failure()
        assert kind in {"silent", "truncated", "wrong_unit", "garbage"}
        assert message


@given(
    st.binary(max_size=20),
    st.lists(st.integers(0, 125), min_size=1, max_size=125),
    st.lists(st.integers(1, 30), max_size=20),
)
def test_the_verdict_does_not_depend_on_chunking(
    noise: bytes, words: list[int], chunks: list[int]
) -> None:
    data = b"".join(struct.pack(">H", w) for w in words)
    reply = rtu_frame(5, bytes((0x03, len(data))) + data)
    whole = RtuReplyFramer(5, 0x03, len(words))
    split = RtuReplyFramer(5, 0x03, len(words))
    stream = noise + reply
    assert feed_all(whole, stream) == feed_all(split, stream, chunks)
    assert whole.outcome == split.outcome
    assert whole.stray_bytes == split.stray_bytes


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125), st.integers(1, 247))
def test_a_clean_reply_round_trips(words: list[int], unit: int) -> None:
    data = b"".join(struct.pack(">H", w) for w in words)
    framer = RtuReplyFramer(unit, 0x04, len(words))
    assert framer.feed(rtu_frame(unit, bytes((0x04, len(data))) + data))
    assert isinstance(framer.outcome, RegisterReply)
    assert framer.outcome.registers() == words
    assert framer.stray_bytes == 0


# ----------------------------------------------------------------- a babbling device (issue 12)


def no_reply_garbage(size: int, unit: int = 1) -> bytes:
    """Random bytes in which no frame of ``unit`` can start (so no verdict ends the feed)."""
    return random.Random(size).randbytes(size).replace(bytes((unit,)), b"\x00")


def feed_garbage(framer: RtuReplyFramer, data: bytes, chunk: int = 64) -> int:
    """Feed ``data`` in chunks as a line would; the most bytes the framer held."""
    most = 0
    for start in range(0, len(data), chunk):
        assert not framer.feed(data[start : start + chunk])
        most = max(most, framer.buffered)
    return most


def test_garbage_costs_the_same_work_per_byte_from_1_kb_to_1_mb_and_is_dropped() -> None:
    steps_per_byte = {}
    for size in (1024, 1024 * 1024):
        framer = RtuReplyFramer(1, 0x04, 2)
        most = feed_garbage(framer, no_reply_garbage(size))
        steps_per_byte[size] = framer.scan_steps / size
        assert most <= MAX_FRAME_BYTES + 64  # one frame's worth and one chunk, however long
        assert framer.stray_bytes + framer.buffered == size
        assert framer.discarded_bytes == framer.stray_bytes
        assert framer.failure()[0] == "garbage"
        # The reply behind the flood is still found.
        assert framer.feed(M1_REPLY)
        assert framer.outcome == RegisterReply(bytes.fromhex("43 66 33 34"))
        assert framer.stray_bytes == size
    # Before: every feed re-examined every byte held (quadratic, 11.5 KB = 12.9 s).
    assert steps_per_byte[1024 * 1024] <= 1.5 * steps_per_byte[1024]
    assert max(steps_per_byte.values()) < 4


def test_the_worst_garbage_costs_a_bounded_work_per_byte() -> None:
    # "03 FF" over and over: every other byte starts a 260-byte frame whose CRC is checked.
    steps_per_byte = {}
    for size in (1024, 32 * 1024):
        framer = RtuReplyFramer(1, 0x03, 2)
        most = feed_garbage(framer, (b"\x03\xff" * size)[:size], chunk=7)
        steps_per_byte[size] = framer.scan_steps / size
        assert most <= MAX_FRAME_BYTES + 7
    assert steps_per_byte[32 * 1024] <= 1.5 * steps_per_byte[1024]
    assert max(steps_per_byte.values()) <= MAX_FRAME_BYTES


def test_replies_from_other_units_are_counted_not_kept() -> None:
    other = rtu_frame(7, bytes.fromhex("04 04 00 00 00 00"))
    framer = RtuReplyFramer(1, 0x04, 2)
    for _ in range(1000):
        assert not framer.feed(other)
    assert framer.wrong_units == [7]
    assert framer.wrong_unit_frames == 1000
    assert framer.buffered == 0
