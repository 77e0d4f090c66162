"""IMST iM871A / iU891A receivers: their HCI framing, sans-I/O.

A frame on the serial line (57 600 baud, 8N1)::

    A5 | control (4 bits) endpoint (4 bits) | message id | length | payload
       | [timestamp, 4 bytes LE] | [RSSI, 1 byte] | [CRC-16, 2 bytes LE]

The control bits say which optional fields follow the payload: 0x2 timestamp,
0x4 RSSI, 0x8 CRC (bit 0x1 is reserved and never set). The CRC is CRC-16/X-25
(CCITT reflected, initial 0xFFFF, complemented) over everything after the A5.
Endpoints: 1 device management, 2 radio link, 3 radio link test, 4 hardware test.

A received telegram is a radio-link ``WMBUS_MSG_IND`` (id 3) whose payload is the
telegram from its C-field on, block CRCs removed; its length byte is the L-field
(:class:`RadioTelegram` puts it back in front). With "RSSI attached" configured
(:func:`set_config_request` does) the RSSI field follows: its raw value is mapped
to dBm by IMST's approximately linear curve (:func:`rssi_dbm`).

:class:`Im871aDecoder` turns a byte stream in any chunking into events, skipping
what cannot start a frame (counted in :attr:`Im871aDecoder.discarded_bytes`) and
frames whose CRC is wrong (:attr:`Im871aDecoder.crc_errors`); its buffer never
holds more than one frame's worth of bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "LINK_MODES",
    "MAX_FRAME",
    "ConfigAck",
    "DeviceInfo",
    "Discarded",
    "Event",
    "Im871aDecoder",
    "Other",
    "Pong",
    "RadioTelegram",
    "crc16_x25",
    "device_info_request",
    "encode",
    "ping_request",
    "rssi_dbm",
    "set_config_request",
]

SOF: Final = 0xA5
BAUDRATE: Final = 57600

DEVMGMT: Final = 0x01
RADIOLINK: Final = 0x02
RADIOLINKTEST: Final = 0x03
HWTEST: Final = 0x04

PING_REQ: Final = 0x01
PING_RSP: Final = 0x02
SET_CONFIG_REQ: Final = 0x03
SET_CONFIG_RSP: Final = 0x04
GET_DEVICEINFO_REQ: Final = 0x0F
GET_DEVICEINFO_RSP: Final = 0x10
WMBUS_MSG_IND: Final = 0x03

_HIGHEST_ID: Final = {DEVMGMT: 0x27, RADIOLINK: 0x05, RADIOLINKTEST: 0x07, HWTEST: 0x02}
"""The message ids each endpoint defines (1…n): anything else is not a frame."""

CONTROL_TIMESTAMP: Final = 0x2
CONTROL_RSSI: Final = 0x4
CONTROL_CRC: Final = 0x8

LINK_MODES: Final = {"S1": 0x00, "T1": 0x03, "C1": 0x07}
"""The stick's link-mode codes for listening to meters (S1 0, S1-m 1, S2 2, T1 3,
T2 4, R2 5, C1 frame A 6, C1 frame B 7; "C1" is 7, which hears both frame formats)."""

MAX_FRAME: Final = 4 + 255 + 4 + 1 + 2
"""The longest frame: header, payload, timestamp, RSSI, CRC."""


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE: Final = _crc_table()


def crc16_x25(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25 (the HCI frame CRC): reflected 0x1021, initial 0xFFFF, complemented."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


def rssi_dbm(raw: int) -> int:
    """The dBm of the stick's raw RSSI (0…255): about ``raw / 2 - 122.5``, 0 at most."""
    return min(0, round(raw / 2 - 122.5))


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RadioTelegram:
    """A telegram heard by a receiver: from its L-field on, block CRCs removed."""

    data: bytes
    rssi: int | None
    """Signal strength in dBm, when the receiver attached it."""


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to :func:`ping_request`."""


@dataclass(frozen=True, slots=True)
class ConfigAck:
    """The answer to :func:`set_config_request`: ``status`` 0 is success."""

    status: int

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """The answer to :func:`device_info_request`."""

    module_type: int
    device_mode: int
    firmware_version: int
    hci_version: int
    device_id: int | None


@dataclass(frozen=True, slots=True)
class Other:
    """A valid frame this codec does not interpret (another message id)."""

    endpoint: int
    message_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Discarded:
    """Bytes dropped from the stream: ``reason`` is ``"garbage"`` or ``"crc"``."""

    reason: str
    size: int


Event = RadioTelegram | Pong | ConfigAck | DeviceInfo | Other | Discarded


# --------------------------------------------------------------------------- requests


def encode(endpoint: int, message_id: int, payload: bytes = b"", *, crc: bool = False) -> bytes:
    """One HCI frame (without timestamp or RSSI; with a CRC when ``crc``)."""
    if not 0 < endpoint <= 0x0F or not 0 <= message_id <= 0xFF or len(payload) > 255:
        raise ValueError("endpoint, message id or payload length out of range")
    control = CONTROL_CRC if crc else 0
    body = bytes([(control << 4) | endpoint, message_id, len(payload)]) + payload
    if crc:
        body += crc16_x25(body).to_bytes(2, "little")
    return bytes([SOF]) + body


def ping_request() -> bytes:
    """``DEVMGMT_MSG_PING_REQ``: the stick answers :class:`Pong`."""
    return encode(DEVMGMT, PING_REQ)


def device_info_request() -> bytes:
    """``DEVMGMT_MSG_GET_DEVICEINFO_REQ``: the stick answers :class:`DeviceInfo`."""
    return encode(DEVMGMT, GET_DEVICEINFO_REQ)


def set_config_request(mode: str, *, rssi: bool = True) -> bytes:
    """``DEVMGMT_MSG_SET_CONFIG_REQ``: listen in link mode ``mode`` (T1, C1, S1), attach
    the RSSI (or not), no timestamp; kept in RAM only (no flash write). Answer: :class:`ConfigAck`.
    """
    code = LINK_MODES[mode]
    # 00: temporary; IIFlag1 0x02: link mode; IIFlag2 0x10 RSSI, 0x20 timestamp.
    return encode(DEVMGMT, SET_CONFIG_REQ, bytes([0x00, 0x02, code, 0x30, int(rssi), 0x00]))


# --------------------------------------------------------------------------- decoder


class Im871aDecoder:
    """Bytes from the stick in, :data:`Event` out; see the module docstring."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.discarded_bytes = 0
        self.crc_errors = 0
        self.frames = 0

    @property
    def pending(self) -> int:
        """Bytes waiting for the rest of their frame (never more than one frame's worth)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Event]:
        """Take received bytes (any chunking); return the events they complete."""
        events: list[Event] = []
        buffer = self._buffer
        offset = 0
        while offset < len(data):
            # Bounded: never more than one frame's worth waits in the buffer.
            room = MAX_FRAME - len(buffer)
            buffer += data[offset : offset + room]
            offset += room
            self._parse(events)
        return events

    def _drop(self, size: int, reason: str, events: list[Event]) -> None:
        del self._buffer[:size]
        if reason == "crc":
            self.crc_errors += 1
        self.discarded_bytes += size
        if events and isinstance(events[-1], Discarded) and events[-1].reason == reason:
            events[-1] = Discarded(reason, events[-1].size + size)
        else:
            events.append(Discarded(reason, size))

    def _parse(self, events: list[Event]) -> None:
        buffer = self._buffer
        while buffer:
            start = buffer.find(SOF)
            if start != 0:
                self._drop(len(buffer) if start < 0 else start, "garbage", events)
                continue
            if len(buffer) < 4:
                return
            control, endpoint, message_id, length = (
                buffer[1] >> 4,
                buffer[1] & 0x0F,
                buffer[2],
                buffer[3],
            )
            highest = _HIGHEST_ID.get(endpoint)
            if control & 0x1 or highest is None or not 1 <= message_id <= highest:
                self._drop(1, "garbage", events)  # an A5 that starts no frame
                continue
            size = (
                4
                + length
                + (4 if control & CONTROL_TIMESTAMP else 0)
                + (1 if control & CONTROL_RSSI else 0)
                + (2 if control & CONTROL_CRC else 0)
            )
            if len(buffer) < size:
                return
            frame = bytes(buffer[:size])
            if control & CONTROL_CRC and crc16_x25(frame[1:-2]) != int.from_bytes(
                frame[-2:], "little"
            ):
                # The length may be noise too: look for the next A5 inside.
                self._drop(1, "crc", events)
                continue
            del buffer[:size]
            self.frames += 1
            rssi = None
            if control & CONTROL_RSSI:
                index = 4 + length + (4 if control & CONTROL_TIMESTAMP else 0)
                rssi = rssi_dbm(frame[index])
            events.append(_event(endpoint, message_id, frame[4 : 4 + length], rssi))


def _event(endpoint: int, message_id: int, payload: bytes, rssi: int | None) -> Event:
    if endpoint == RADIOLINK and message_id == WMBUS_MSG_IND and payload:
        return RadioTelegram(bytes([len(payload)]) + payload, rssi)
    if endpoint == DEVMGMT:
        if message_id == PING_RSP:
            return Pong()
        if message_id == SET_CONFIG_RSP and payload:
            return ConfigAck(payload[0])
        if message_id == GET_DEVICEINFO_RSP and len(payload) >= 4:
            device_id = int.from_bytes(payload[4:8], "little") if len(payload) >= 8 else None
            return DeviceInfo(payload[0], payload[1], payload[2], payload[3], device_id)
    return Other(endpoint, message_id, payload)
