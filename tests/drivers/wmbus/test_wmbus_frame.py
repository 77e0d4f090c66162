"""Link layer (EN 13757-4): formats A and B, block CRCs, typed errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.wmbus.frame import (
    BadLength,
    CrcMismatch,
    FrameError,
    FrameFormat,
    FrameTooShort,
    crc16,
    parse_frame,
)
from tests.drivers.wmbus.vectors import WMBUSMETERS

HEADER = bytes.fromhex("44 2D2C 99873476 1B 16")  # SND_NR, KAM, id 76348799, v 0x1B, cold water


def crc_bitwise(data: bytes) -> bytes:
    """CRC-16 EN 13757 written out bit by bit (independent of the table in frame.py)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = (crc << 1) ^ 0x3D65 if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return (crc ^ 0xFFFF).to_bytes(2, "big")


def format_a(header: bytes, payload: bytes) -> bytes:
    first = bytes((len(header) + len(payload),)) + header
    blocks = [payload[i : i + 16] for i in range(0, len(payload), 16)]
    return first + crc_bitwise(first) + b"".join(b + crc_bitwise(b) for b in blocks)


def format_b(header: bytes, payload: bytes) -> bytes:
    body = header + payload
    if len(body) + 3 <= 128:
        frame = bytes((len(body) + 2,)) + body
        return frame + crc_bitwise(frame)
    frame = bytes((len(body) + 4,)) + body
    first, rest = frame[:126], frame[126:]
    return first + crc_bitwise(first) + rest + crc_bitwise(rest)


def test_crc_matches_the_bitwise_definition() -> None:
    assert crc16(b"") == 0xFFFF
    for sample in (b"\x00", b"123456789", bytes(range(256))):
        assert crc16(sample).to_bytes(2, "big") == crc_bitwise(sample)


def test_real_format_a_frame_with_crcs() -> None:
    # wmbusmeters simulations/simulation_dll_crcs.txt (first telegram), CRCs on
    raw = bytes.fromhex(
        "734414867CC30B0003030D58A00EDF0700DC41343CEA390306FF0A0D44EADF07000DDF07000DDF0700"
        "0DDF07000E44F9DF07000EDF07000EDF07000EDF07000E931EDF07000DDF07000DDF07000DDF070003"
        "5A4500000000374F0B20000000000000243412B31C07050C12280000000000002C002302062F19080F"
        "2F000000000000DCF5"
    )
    frame = parse_frame(raw)
    assert frame.frame_format == "A"
    assert (frame.address.manufacturer, frame.address.id) == ("APT", "000BC37C")
    assert (frame.address.version, frame.address.device_type, frame.address.medium) == (3, 3, "gas")
    assert len(frame.payload) == 0x73 - 9
    assert frame.payload[0] == 0xA0, WMBUSMETERS


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 32, 100, 115, 116, 117, 200, 245])
def test_format_a_and_b_round_trip(size: int) -> None:
    payload = bytes((0x78,)) + bytes((i * 7) & 0xFF for i in range(size))
    builders: tuple[tuple[Callable[[bytes, bytes], bytes], FrameFormat], ...] = (
        (format_a, "A"),
        (format_b, "B"),
    )
    for build, name in builders:
        if len(HEADER) + len(payload) + (4 if name == "B" else 0) > 255:
            continue  # L would not fit in a byte
        raw = build(HEADER, payload)
        frame = parse_frame(raw)
        assert (frame.frame_format, frame.payload, frame.control) == (name, payload, 0x44)
        assert (frame.address.id, frame.address.manufacturer) == ("76348799", "KAM")
        assert parse_frame(raw, frame_format=name).payload == payload


def test_crc_mismatch_names_the_block() -> None:
    raw = bytearray(format_a(HEADER, bytes(40)))
    raw[12 + 18 + 3] ^= 0x01  # a byte of the third block (second data block)
    with pytest.raises(CrcMismatch, match="block 3") as caught:
        parse_frame(bytes(raw))
    assert caught.value.block == 3
    first = bytearray(format_a(HEADER, bytes(40)))
    first[3] ^= 0x80
    with pytest.raises(CrcMismatch, match="block 1"):
        parse_frame(bytes(first))


def test_format_b_long_frame_second_crc() -> None:
    raw = bytearray(format_b(HEADER, bytes(150)))
    raw[-3] ^= 0xFF
    with pytest.raises(CrcMismatch, match="block 2"):
        parse_frame(bytes(raw))


def test_length_and_size_errors() -> None:
    with pytest.raises(FrameTooShort):
        parse_frame(b"\x0b\x44")
    with pytest.raises(FrameTooShort):
        parse_frame(bytes(11))
    good = format_a(HEADER, bytes(20))
    with pytest.raises(BadLength, match="format A"):
        parse_frame(good + b"\x00")
    with pytest.raises(BadLength):
        parse_frame(good, frame_format="B")
    with pytest.raises(BadLength, match="shorter than the link header"):
        parse_frame(b"\x05" + bytes(12))


def test_frames_without_crcs() -> None:
    stripped = bytes((9 + 3,)) + HEADER + b"\x78\x2f\x2f"
    frame = parse_frame(stripped, crc_present=False)
    assert (frame.frame_format, frame.payload) == (None, b"\x78\x2f\x2f")
    with pytest.raises(BadLength):
        parse_frame(stripped + b"\x00", crc_present=False)
    # format B sticks that keep the on-air L (CRC bytes counted)
    on_air_l = bytes((len(stripped) - 1 + 2,)) + stripped[1:]
    with pytest.raises(BadLength):
        parse_frame(on_air_l, crc_present=False)
    assert parse_frame(on_air_l, crc_present=False, frame_format="B").payload == b"\x78\x2f\x2f"


FORMATS: tuple[FrameFormat | None, ...] = (None, "A", "B")


@given(st.binary(max_size=300), st.booleans(), st.sampled_from(FORMATS))
def test_any_bytes_give_a_frame_or_a_frame_error(
    data: bytes, crc: bool, fmt: FrameFormat | None
) -> None:
    try:
        frame = parse_frame(data, crc_present=crc, frame_format=fmt)
    except FrameError:
        return
    assert len(frame.payload) < len(data)


@given(st.binary(min_size=1, max_size=200), st.data())
def test_any_single_byte_change_is_caught(payload: bytes, data: st.DataObject) -> None:
    raw = bytearray(format_a(HEADER, payload))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FrameError):
        parse_frame(bytes(raw), frame_format="A")
