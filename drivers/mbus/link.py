"""EN 13757-2 link layer of wired M-Bus, sans-I/O.

Requests are encoded by plain functions (:func:`encode_snd_nke`,
:func:`encode_req_ud2`, :func:`encode_select`); replies are read by a streaming
:class:`FrameDecoder`: ``feed(bytes)`` whatever the line delivered, then call
``next_event()`` until it returns :data:`NEED_DATA`; when the reply window is
over (the reply timeout), :meth:`FrameDecoder.finish` decodes what is left.

Frame formats (all multi-byte checks per EN 13757-2 / IEC 60870-5-2)::

    single character   E5
    short frame        10 C A CS 16
    control frame      68 03 03 68 C A CI CS 16
    long frame         68 L L 68 C A CI data… CS 16      (L = 3 + len(data))

CS is the sum of C, A, CI and data modulo 256. The decoder never raises: a
frame that fails its checksum, its length or its stop byte, and any bytes that
cannot start a frame (collision garbage), come out as :class:`Discarded`
events with a reason, and decoding carries on with the following bytes.
Frames come out the same however the byte stream is split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from citygate.drivers.api import DecodeError

__all__ = [
    "ACK",
    "BROADCAST_NO_REPLY",
    "BROADCAST_REPLY",
    "CI_SELECT",
    "NEED_DATA",
    "NETWORK_LAYER_ADDRESS",
    "Ack",
    "Discarded",
    "Frame",
    "FrameDecoder",
    "NeedData",
    "encode_req_ud2",
    "encode_select",
    "encode_snd_nke",
    "parse_frame",
    "reply_timeout",
    "wire_time",
]

ACK: Final = 0xE5
START_SHORT: Final = 0x10
START_LONG: Final = 0x68
STOP: Final = 0x16

# C field (master to slave); FCB is bit 5, FCV bit 4
C_SND_NKE: Final = 0x40
C_SND_UD: Final = 0x53
C_REQ_UD2: Final = 0x5B
FCB: Final = 0x20

CI_SELECT: Final = 0x52
"""CI of a SND_UD that selects a slave by secondary address."""

NETWORK_LAYER_ADDRESS: Final = 0xFD
"""Primary address 253: talk to the slave selected by secondary address."""
BROADCAST_REPLY: Final = 0xFE
BROADCAST_NO_REPLY: Final = 0xFF

_MAX_PRIMARY = 250
_MAX_LONG_L = 255
_SECONDARY = re.compile(r"[0-9F]{8}(?:[0-9A-F]{8})?")


def _checksum(data: bytes | bytearray | memoryview) -> int:
    return sum(data) & 0xFF


def _check_address(address: int) -> None:
    if not (0 <= address <= _MAX_PRIMARY or address in (NETWORK_LAYER_ADDRESS, 254, 255)):
        raise ValueError(f"primary address must be 0–250, 253, 254 or 255, not {address}")


def _short(control: int, address: int) -> bytes:
    _check_address(address)
    return bytes((START_SHORT, control, address, (control + address) & 0xFF, STOP))


def _long(control: int, address: int, ci: int, data: bytes) -> bytes:
    _check_address(address)
    body = bytes((control, address, ci)) + data
    if len(body) > _MAX_LONG_L:
        raise ValueError(f"user data of {len(data)} bytes do not fit a long frame")
    length = len(body)
    return bytes((START_LONG, length, length, START_LONG)) + body + bytes((_checksum(body), STOP))


def encode_snd_nke(address: int) -> bytes:
    """SND_NKE: reset the link of ``address`` (the next REQ_UD2 starts with FCB set)."""
    return _short(C_SND_NKE, address)


def encode_req_ud2(address: int, fcb: bool) -> bytes:
    """REQ_UD2: ask ``address`` for its class 2 data.

    The master toggles ``fcb`` after each successful exchange (the slave sends
    the next telegram of a multi-telegram readout) and repeats it unchanged on a
    retry (the slave repeats its last telegram). After SND_NKE the first
    request carries ``fcb=True``.
    """
    return _short(C_REQ_UD2 | (FCB if fcb else 0), address)


def encode_select(secondary: str) -> bytes:
    """SND_UD with CI 0x52 selecting the slave whose secondary address matches.

    ``secondary`` is 8 digits of identification number, optionally followed by
    4 hex digits of manufacturer code, 2 of version and 2 of medium (16 in all,
    the format of the ``address`` config key). ``F`` is a wildcard digit in the
    id and a wildcard byte pair in the other fields (``FFFF``, ``FF``); fields
    not given are wildcards.
    """
    digits = secondary.upper()
    if not _SECONDARY.fullmatch(digits):
        raise ValueError(
            f"secondary address {secondary!r}: expected 8 digits 0-9/F and optionally "
            "8 hex digits of manufacturer, version and medium"
        )
    rest = digits[8:] or "FFFFFFFF"
    # id: 4 BCD bytes, least significant byte first; each F nibble is a wildcard
    ident = bytes.fromhex(digits[:8])[::-1]
    manufacturer = bytes.fromhex(rest[:4])[::-1]
    version_medium = bytes.fromhex(rest[4:8])
    return _long(C_SND_UD, NETWORK_LAYER_ADDRESS, CI_SELECT, ident + manufacturer + version_medium)


def wire_time(n_bytes: int, baudrate: int, bits_per_char: int = 11) -> float:
    """Seconds ``n_bytes`` take on the wire (M-Bus: 8E1 = 11 bits a character)."""
    return n_bytes * bits_per_char / baudrate


def reply_timeout(baudrate: int, expected_bytes: int = 0) -> float:
    """How long to wait for the start of a reply, plus the wire time of ``expected_bytes``.

    EN 13757-2 lets a slave answer within 330 bit times + 50 ms; this adds
    the transmission time of the reply and a margin for USB level converters.
    """
    return 330 / baudrate + 0.05 + 0.05 + wire_time(expected_bytes, baudrate)


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class Frame:
    """A short, control or long frame with a valid length, checksum and stop byte.

    ``ci`` and ``data`` are None/empty for a short frame; ``raw`` holds the
    frame's bytes as received.
    """

    kind: Literal["short", "control", "long"]
    control: int
    address: int
    ci: int | None
    data: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """The single character E5: a slave acknowledged SND_NKE or a selection."""


@dataclass(frozen=True, slots=True)
class Discarded:
    """Bytes that were not a valid frame (garbage, bad checksum, bad length)."""

    data: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more can be decoded until more bytes arrive."""


NEED_DATA: Final = NeedData()
_ACK: Final = Ack()
_STARTS = frozenset((ACK, START_SHORT, START_LONG))

Event = Frame | Ack | Discarded | NeedData


class FrameDecoder:
    """Split a byte stream from the line into frames, acks and discarded bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Append bytes received from the line."""
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet decoded (an incomplete frame)."""
        return len(self._buffer)

    def reset(self) -> bytes:
        """Drop and return the buffered bytes."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def finish(self) -> list[Frame | Ack | Discarded]:
        """The reply window is over: decode what is buffered; nothing more will come.

        An incomplete frame is discarded, and so is the start of a false frame in
        garbage (``68 FF FF 68`` would otherwise wait for 261 bytes): the bytes after
        it are decoded again, so a real frame behind it is still found. The buffer is
        empty afterwards.
        """
        events: list[Frame | Ack | Discarded] = []
        while self._buffer:
            event = self.next_event()
            if isinstance(event, NeedData):
                event = self._garbage("incomplete frame at the end of the reply")
            events.append(event)
        return events

    def next_event(self) -> Frame | Ack | Discarded | NeedData:
        """Return the next event; :data:`NEED_DATA` when the buffer holds no complete one."""
        buf = self._buffer
        if not buf:
            return NEED_DATA
        first = buf[0]
        if first == ACK:
            del buf[0]
            return _ACK
        if first == START_SHORT:
            return self._short_frame()
        if first == START_LONG:
            return self._long_frame()
        return self._garbage("no frame starts with this byte")

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _garbage(self, reason: str) -> Discarded:
        """Discard the first byte and every following byte that cannot start a frame."""
        buf = self._buffer
        end = 1
        while end < len(buf) and buf[end] not in _STARTS:
            end += 1
        return Discarded(self._take(end), reason)

    def _short_frame(self) -> Event:
        buf = self._buffer
        if len(buf) < 5:
            return NEED_DATA
        if buf[4] != STOP:
            return self._garbage("short frame without stop byte")
        raw = self._take(5)
        if _checksum(raw[1:3]) != raw[3]:
            return Discarded(raw, "checksum mismatch")
        return Frame("short", raw[1], raw[2], None, b"", raw)

    def _long_frame(self) -> Event:
        buf = self._buffer
        if len(buf) < 4:
            return NEED_DATA
        length = buf[1]
        if buf[2] != length or buf[3] != START_LONG:
            return self._garbage("long frame header is not 68 L L 68")
        if length < 3:
            return self._garbage(f"long frame length {length} is below 3")
        total = length + 6
        if len(buf) < total:
            return NEED_DATA
        if buf[total - 1] != STOP:
            return self._garbage("long frame without stop byte at its length")
        raw = self._take(total)
        body = raw[4 : 4 + length]
        if _checksum(body) != raw[total - 2]:
            return Discarded(raw, "checksum mismatch")
        kind: Literal["control", "long"] = "control" if length == 3 else "long"
        return Frame(kind, body[0], body[1], body[2], body[3:], raw)


def parse_frame(data: bytes) -> Frame:
    """Decode ``data`` holding exactly one frame; raise DecodeError otherwise.

    Bytes after the frame are an error here (use :class:`FrameDecoder` to read
    a stream).
    """
    decoder = FrameDecoder()
    decoder.feed(data)
    event = decoder.next_event()
    if isinstance(event, Frame):
        if decoder.pending:
            raise DecodeError(f"{decoder.pending} bytes after the end of the frame")
        return event
    if isinstance(event, Discarded):
        raise DecodeError(f"not a valid M-Bus frame: {event.reason}")
    if isinstance(event, Ack):
        raise DecodeError("an acknowledgement (E5), not a frame")
    if not data:
        raise DecodeError("no data")
    raise DecodeError(f"incomplete frame: {len(data)} bytes")
