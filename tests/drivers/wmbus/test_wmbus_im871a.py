"""The iM871A / iU891A HCI codec: requests, frames, resynchronisation, bounded buffers."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.mbus.decode import to_measurements
from citygate.drivers.wmbus import im871a
from citygate.drivers.wmbus.decode import decode_telegram
from citygate.drivers.wmbus.im871a import (
    ConfigAck,
    DeviceInfo,
    Discarded,
    Im871aDecoder,
    Other,
    Pong,
    RadioTelegram,
)

TELEGRAMS = Path(__file__).parent / "telegrams"


def crc_bitwise(data: bytes) -> int:
    """CRC-16/X-25 bit by bit (the test's own oracle, not the codec's table)."""
    crc = 0xFFFF
    for byte in data:
        for bit in range(8):
            mix = (crc ^ (byte >> bit)) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8408
    return crc ^ 0xFFFF


def frame(endpoint: int, msg: int, payload: bytes, *, rssi: int | None = None, crc: bool = True,
          timestamp: bytes | None = None) -> bytes:  # fmt: skip
    control = (0x2 if timestamp else 0) | (0x4 if rssi is not None else 0) | (0x8 if crc else 0)
    body = bytes([(control << 4) | endpoint, msg, len(payload)]) + payload
    body += timestamp or b""
    body += b"" if rssi is None else bytes([rssi])
    if crc:
        body += crc_bitwise(body).to_bytes(2, "little")
    return b"\xa5" + body


def data_ind(telegram: bytes, rssi: int = 150) -> bytes:
    """A WMBUS_MSG_IND as the stick sends it: the telegram without its L-field."""
    return frame(2, 3, telegram[1:], rssi=rssi)


def real(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((TELEGRAMS / name).read_text())
    return loaded


def test_crc_matches_the_standard_check_value() -> None:
    assert im871a.crc16_x25(b"123456789") == 0x906E == crc_bitwise(b"123456789")


def test_requests_are_the_documented_bytes() -> None:
    assert im871a.ping_request() == bytes.fromhex("A5010100")
    assert im871a.device_info_request() == bytes.fromhex("A5010F00")
    # temporary, IIFlag1 = link mode, T1 = 3, IIFlag2 = RSSI + timestamp, RSSI on, timestamp off
    assert im871a.set_config_request("T1") == bytes.fromhex(
        "A50103060002033001 00".replace(" ", "")
    )
    assert im871a.set_config_request("C1")[6] == 0x07
    assert im871a.set_config_request("S1")[6] == 0x00
    with_crc = im871a.encode(1, 1, crc=True)
    assert with_crc[1] == 0x81 and int.from_bytes(with_crc[-2:], "little") == crc_bitwise(
        with_crc[1:-2]
    )


def test_a_real_encrypted_telegram_comes_out_whole_with_its_rssi() -> None:
    vector = real("kdn-kadenwater-1.json")
    telegram = bytes.fromhex(str(vector["hex"]))
    events = Im871aDecoder().feed(data_ind(telegram, rssi=150))
    assert events == [RadioTelegram(telegram, -48)]
    decoded = decode_telegram(telegram, bytes.fromhex(str(vector["key"])), crc_present=False)
    values = {m.name: m.value for m in to_measurements(decoded)}
    assert values["volume"] == 81.0976


def test_byte_by_byte_garbage_and_crc_errors() -> None:
    telegram = bytes.fromhex(str(real("apa-elf-1.json")["hex"]))
    good = data_ind(telegram)
    corrupt = bytearray(good)
    corrupt[10] ^= 0xFF
    stream = b"\x00\x13\xa5\xff" + bytes(corrupt) + good + frame(1, 2, b"") + b"\xa5"
    decoder = Im871aDecoder()
    events = [e for byte in stream for e in decoder.feed(bytes([byte]))]
    telegrams = [e for e in events if isinstance(e, RadioTelegram)]
    assert [t.data for t in telegrams] == [telegram]
    assert Pong() in events
    assert decoder.crc_errors >= 1
    assert decoder.discarded_bytes >= 4 + len(corrupt) - len(good) + 1
    assert decoder.pending == 1  # the trailing A5 waits for the rest of its frame


def test_management_answers() -> None:
    decoder = Im871aDecoder()
    events = decoder.feed(
        frame(1, 4, b"\x00")
        + frame(1, 4, b"\x01", crc=False)
        + frame(1, 0x10, bytes([0x33, 0x00, 0x15, 0x02, 0x78, 0x56, 0x34, 0x12]))
        + frame(2, 3, b"\x44" + bytes(9), rssi=60, timestamp=b"\x01\x02\x03\x04")
        + frame(1, 0x06, b"\x01\x02")
    )
    assert events[0] == ConfigAck(0) and events[0].ok
    assert events[1] == ConfigAck(1) and not events[1].ok
    assert events[2] == DeviceInfo(0x33, 0x00, 0x15, 0x02, 0x12345678)
    assert isinstance(events[3], RadioTelegram) and events[3].data[0] == 10
    assert events[3].rssi == im871a.rssi_dbm(60)
    assert events[4] == Other(1, 6, b"\x01\x02")


def test_an_a5_that_starts_no_frame_is_skipped() -> None:
    # Reserved control bit, unknown endpoint, message id out of range: not frames.
    decoder = Im871aDecoder()
    events = decoder.feed(b"\xa5\x11\x01\x00" + b"\xa5\x05\x01\x00" + b"\xa5\x01\x30\x00")
    assert all(isinstance(e, Discarded) for e in events)
    assert decoder.frames == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_random_bytes_give_events_only_and_stay_bounded(data: bytes, chunk: int) -> None:
    whole = Im871aDecoder()
    whole_events = whole.feed(data)
    chunked = Im871aDecoder()
    chunked_events = []
    for start in range(0, len(data), chunk):
        chunked_events += chunked.feed(data[start : start + chunk])
        assert chunked.pending < im871a.MAX_FRAME
    kinds = (RadioTelegram, Pong, ConfigAck, DeviceInfo, Other, Discarded)
    assert all(isinstance(e, kinds) for e in whole_events)
    assert [e for e in whole_events if not isinstance(e, Discarded)] == [
        e for e in chunked_events if not isinstance(e, Discarded)
    ]
    assert whole.discarded_bytes == chunked.discarded_bytes


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_a_frame_after_any_garbage_is_found(before: bytes, after: bytes) -> None:
    telegram = bytes.fromhex(str(real("sen-iperl-1.json")["hex"]))
    copies = 8  # more bytes than the longest frame a fake header in the garbage can claim
    events = Im871aDecoder().feed(before + data_ind(telegram) * copies + after)
    found = [e.data for e in events if isinstance(e, RadioTelegram) and e.data == telegram]
    # A fake header in the garbage may swallow the first copies, never all of them.
    assert len(found) >= 1
