"""Amber / Würth Elektronik AMB8465 receivers: their command frames, sans-I/O.

A command frame on the serial line (9 600 baud, 8N1)::

    FF | command | length | payload | checksum (XOR of every byte before it)

An answer carries the request's command with bit 0x80 set (``CMD_SET_MODE_REQ``
0x04 → 0x84). A received telegram comes in one of two ways, by the stick's
``UART_CMD_Out_Enable`` setting (non-volatile memory position 0x05):

* command mode: ``CMD_DATA_IND`` (0x03), payload = the telegram from its C-field
  on, block CRCs removed, then the RSSI byte when ``RSSI_Enable`` (position 0x45)
  is set; the payload length then counts the RSSI byte too;
* transparent mode: the telegram as is, from its L-field on (L counts the bytes
  after it), then the RSSI byte when enabled.

The RSSI byte is two's complement: dBm = value / 2 − 74 (the module's manual).
:func:`get_config_request` reads both settings (:class:`ConfigRead`) so that a
receiver knows how telegrams will come; :func:`set_mode_request` sets the radio
mode in RAM only (``CMD_SET_REQ``, :func:`set_request`, writes flash: never done
automatically).

:class:`Amb8465Decoder` resynchronises after garbage (counted in
:attr:`Amb8465Decoder.discarded_bytes`), counts command frames whose checksum is
wrong (:attr:`Amb8465Decoder.checksum_errors`), and holds at most one frame's bytes.
Transparent telegrams carry no checksum: the wireless M-Bus decoder judges them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from citygate.drivers.wmbus.im871a import Discarded, RadioTelegram

__all__ = [
    "LINK_MODES",
    "MAX_FRAME",
    "Amb8465Decoder",
    "CommandReply",
    "ConfigRead",
    "Discarded",
    "Event",
    "ModeAck",
    "RadioTelegram",
    "encode",
    "firmware_request",
    "get_config_request",
    "rssi_dbm",
    "set_mode_request",
    "set_request",
]

SOF: Final = 0xFF
BAUDRATE: Final = 9600

CMD_DATA_IND: Final = 0x03
CMD_SET_MODE_REQ: Final = 0x04
CMD_SET_REQ: Final = 0x09
CMD_GET_REQ: Final = 0x0A
CMD_SERIALNO_REQ: Final = 0x0B
CMD_FWV_REQ: Final = 0x0C
CMD_RSSI_REQ: Final = 0x0D

_REPLIES: Final = frozenset(
    0x80 | c for c in (0x00, 0x02, 0x04, 0x05, 0x06, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x10, 0x11)
)
"""Commands the stick answers with (request | 0x80)."""

UART_CMD_OUT_ENABLE: Final = 0x05
RSSI_ENABLE: Final = 0x45

LINK_MODES: Final = {"S1": 0x03, "T1": 0x08, "C1": 0x0E}
"""Collector receive modes: S2 (hears S1, S1-m), T2-other (hears T1), C2-other (hears C1)."""

MAX_FRAME: Final = 3 + 255 + 1
"""The longest frame: FF, command, length, payload, checksum (a transparent
telegram with its RSSI byte is shorter: 1 + 255 + 1)."""

_C_FIELDS: Final = frozenset({0x44, 0x46, 0x47, 0x48, 0x06, 0x08, 0x18, 0x28, 0x38})
"""C-fields a meter sends (SND_NR, SND_IR, ACC_NR, ACC_DMD, RSP_UD…): a transparent
telegram starts with L then one of them."""

_MIN_TELEGRAM: Final = 10
"""The least L of a telegram: C, M (2), A (6), CI."""


def checksum(data: bytes | bytearray) -> int:
    """XOR of ``data``."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def rssi_dbm(raw: int) -> int:
    """The dBm of the stick's RSSI byte (two's complement, half dB steps, −74 offset)."""
    signed = raw - 256 if raw >= 128 else raw
    return round(signed / 2 - 74)


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ModeAck:
    """The answer to :func:`set_mode_request` (or :func:`set_request`): ``status`` 0 is success."""

    command: int
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass(frozen=True, slots=True)
class ConfigRead:
    """The answer to :func:`get_config_request`: ``values`` from memory ``position`` on."""

    position: int
    values: bytes

    def setting(self, position: int) -> int | None:
        """The byte at memory ``position``, if it was read."""
        index = position - self.position
        return self.values[index] if 0 <= index < len(self.values) else None


@dataclass(frozen=True, slots=True)
class CommandReply:
    """Another answer (firmware version, serial number…): its command and payload."""

    command: int
    payload: bytes


Event = RadioTelegram | ModeAck | ConfigRead | CommandReply | Discarded


# --------------------------------------------------------------------------- requests


def encode(command: int, payload: bytes = b"") -> bytes:
    """One command frame with its checksum."""
    if not 0 <= command <= 0xFF or len(payload) > 255:
        raise ValueError("command or payload length out of range")
    frame = bytes([SOF, command, len(payload)]) + payload
    return frame + bytes([checksum(frame)])


def set_mode_request(mode: str) -> bytes:
    """``CMD_SET_MODE_REQ``: listen in ``mode`` (T1, C1, S1), in RAM. Answer: :class:`ModeAck`."""
    return encode(CMD_SET_MODE_REQ, bytes([LINK_MODES[mode]]))


def get_config_request(position: int = 0, count: int = 0x80) -> bytes:
    """``CMD_GET_REQ``: read ``count`` bytes of settings. Answer: :class:`ConfigRead`."""
    return encode(CMD_GET_REQ, bytes([position, count]))


def set_request(position: int, values: bytes) -> bytes:
    """``CMD_SET_REQ``: write settings to flash (the stick resets). Answer: :class:`ModeAck`."""
    return encode(CMD_SET_REQ, bytes([position, len(values)]) + values)


def firmware_request() -> bytes:
    """``CMD_FWV_REQ``: the firmware version (a harmless request: the liveness check)."""
    return encode(CMD_FWV_REQ)


# --------------------------------------------------------------------------- decoder


class Amb8465Decoder:
    """Bytes from the stick in, :data:`Event` out; see the module docstring.

    ``rssi``: the stick appends an RSSI byte to each telegram (``RSSI_Enable``).
    """

    def __init__(self, *, rssi: bool = True) -> None:
        self.rssi = rssi
        self._buffer = bytearray()
        self.discarded_bytes = 0
        self.checksum_errors = 0
        self.frames = 0

    @property
    def pending(self) -> int:
        """Bytes waiting for the rest of their frame (never more than one frame's worth)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Event]:
        """Take received bytes (any chunking); return the events they complete."""
        events: list[Event] = []
        offset = 0
        while offset < len(data):
            room = MAX_FRAME - len(self._buffer)
            self._buffer += data[offset : offset + room]
            offset += room
            self._parse(events)
        return events

    def _drop(self, size: int, reason: str, events: list[Event]) -> None:
        del self._buffer[:size]
        if reason == "crc":
            self.checksum_errors += 1
        self.discarded_bytes += size
        if events and isinstance(events[-1], Discarded) and events[-1].reason == reason:
            events[-1] = Discarded(reason, events[-1].size + size)
        else:
            events.append(Discarded(reason, size))

    def _parse(self, events: list[Event]) -> None:
        buffer = self._buffer
        while buffer:
            if buffer[0] == SOF:
                if len(buffer) < 3:
                    return
                command, length = buffer[1], buffer[2]
                if command != CMD_DATA_IND and command not in _REPLIES:
                    self._drop(1, "garbage", events)
                    continue
                size = 4 + length
                if len(buffer) < size:
                    return
                frame = bytes(buffer[:size])
                if checksum(frame[:-1]) != frame[-1]:
                    self._drop(1, "crc", events)
                    continue
                del buffer[:size]
                self.frames += 1
                event = self._command(command, frame[3:-1])
                if event is None:
                    self._count_garbage(size, events)
                else:
                    events.append(event)
                continue
            if len(buffer) < 2:
                return
            length = buffer[0]
            if length < _MIN_TELEGRAM or buffer[1] not in _C_FIELDS:
                self._drop(1, "garbage", events)
                continue
            size = 1 + length + (1 if self.rssi else 0)
            if len(buffer) < size:
                return
            frame = bytes(buffer[:size])
            del buffer[:size]
            self.frames += 1
            rssi = rssi_dbm(frame[-1]) if self.rssi else None
            events.append(RadioTelegram(frame[: 1 + length], rssi))

    def _count_garbage(self, size: int, events: list[Event]) -> None:
        self.discarded_bytes += size
        events.append(Discarded("garbage", size))

    def _command(self, command: int, payload: bytes) -> Event | None:
        if command == CMD_DATA_IND:
            extra = 1 if self.rssi else 0
            if len(payload) < _MIN_TELEGRAM - 1 + extra:
                return None  # too short for a telegram: nothing to decode
            body = payload[: len(payload) - extra]
            rssi = rssi_dbm(payload[-1]) if self.rssi else None
            return RadioTelegram(bytes([len(body)]) + body, rssi)
        if command in (0x80 | CMD_SET_MODE_REQ, 0x80 | CMD_SET_REQ) and payload:
            return ModeAck(command & 0x7F, payload[0])
        if command == 0x80 | CMD_GET_REQ and len(payload) >= 2:
            return ConfigRead(payload[0], payload[2:])
        return CommandReply(command, payload)
