"""The AMB8465 codec: command frames, command and transparent telegrams, resynchronisation."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.wmbus import amb8465
from citygate.drivers.wmbus.amb8465 import (
    Amb8465Decoder,
    CommandReply,
    ConfigRead,
    Discarded,
    ModeAck,
    RadioTelegram,
)
from citygate.drivers.wmbus.decode import inspect

TELEGRAMS = Path(__file__).parent / "telegrams"


def xor(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def command(cmd: int, payload: bytes) -> bytes:
    head = bytes([0xFF, cmd, len(payload)]) + payload
    return head + bytes([xor(head)])


def real(name: str) -> bytes:
    return bytes.fromhex(json.loads((TELEGRAMS / name).read_text())["hex"])


def test_requests_are_the_documented_bytes() -> None:
    assert amb8465.set_mode_request("T1") == bytes.fromhex("FF040108") + bytes([0xFF ^ 4 ^ 1 ^ 8])
    assert amb8465.set_mode_request("C1")[3] == 0x0E
    assert amb8465.set_mode_request("S1")[3] == 0x03
    assert amb8465.get_config_request() == bytes.fromhex("FF0A02008077")  # as the manual's example
    assert amb8465.firmware_request() == bytes.fromhex("FF0C00F3")


def test_command_mode_telegram_with_rssi() -> None:
    telegram = real("kdn-kadenwater-1.json")
    # CMD_DATA_IND: the telegram without its L-field, then the RSSI byte (counted in the length)
    stream = command(0x03, telegram[1:] + bytes([0xB0]))
    events = Amb8465Decoder(rssi=True).feed(stream)
    assert events == [RadioTelegram(telegram, (0xB0 - 256) // 2 - 74)]
    assert inspect(telegram, crc_present=False).meter.id == "19228217"


def test_transparent_telegrams_with_and_without_rssi() -> None:
    telegram = real("sen-iperl-1.json")
    events = Amb8465Decoder(rssi=True).feed(telegram + b"\x20" + telegram + b"\x30")
    assert [e.data for e in events if isinstance(e, RadioTelegram)] == [telegram, telegram]
    assert [e.rssi for e in events if isinstance(e, RadioTelegram)] == [16 - 74, 24 - 74]
    events = Amb8465Decoder(rssi=False).feed(b"\x00\x01\x02" + telegram)
    assert events[-1] == RadioTelegram(telegram, None)
    assert events[0] == Discarded("garbage", 3)


def test_answers_and_checksum_errors() -> None:
    decoder = Amb8465Decoder()
    values = bytes(range(0x80))
    good = command(0x84, b"\x00")
    bad = bytearray(command(0x84, b"\x01"))
    bad[-1] ^= 0x55
    events = decoder.feed(
        bytes(bad) + good + command(0x8A, b"\x00\x80" + values) + command(0x8C, b"\x01\x02\x03")
    )
    assert decoder.checksum_errors == 1
    replies = [e for e in events if not isinstance(e, Discarded)]
    assert replies[0] == ModeAck(0x04, 0) and replies[0].ok
    assert isinstance(replies[1], ConfigRead)
    assert replies[1].setting(amb8465.RSSI_ENABLE) == 0x45
    assert replies[1].setting(0x90) is None
    assert replies[2] == CommandReply(0x8C, b"\x01\x02\x03")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64), st.booleans())
def test_random_bytes_give_events_only_and_stay_bounded(
    data: bytes, chunk: int, rssi: bool
) -> None:
    whole = Amb8465Decoder(rssi=rssi)
    whole_events = whole.feed(data)
    chunked = Amb8465Decoder(rssi=rssi)
    chunked_events = []
    for start in range(0, len(data), chunk):
        chunked_events += chunked.feed(data[start : start + chunk])
        assert chunked.pending < amb8465.MAX_FRAME
    kinds = (RadioTelegram, ModeAck, ConfigRead, CommandReply, Discarded)
    assert all(isinstance(e, kinds) for e in whole_events)
    assert [e for e in whole_events if not isinstance(e, Discarded)] == [
        e for e in chunked_events if not isinstance(e, Discarded)
    ]
