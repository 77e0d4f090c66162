"""Modbus TCP framing, sans-I/O (Modbus Messaging on TCP/IP V1.0b, 3.1.3).

An ADU is the MBAP header (transaction id, protocol id 0, length of what
follows, unit id) and a PDU. This module turns read requests (FC 01–04) into
bytes (:func:`encode_read_request`), a received byte stream into frames
(:class:`MbapDecoder`) and a frame into the reply to a request
(:func:`parse_read_reply`); the same for writes (FC 05/06/15/16, PDUs from
:mod:`citygate.drivers.modbus.pdu`): :func:`encode_write_request` and
:func:`parse_write_reply`, which refuses a reply that does not echo the request.
Nothing here does I/O; every problem is a :class:`~citygate.drivers.api.DecodeError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from citygate.drivers.api import DecodeError
from citygate.drivers.modbus.pdu import ExceptionReply, WriteReply, WriteRequest
from citygate.drivers.modbus.pdu import parse_write_reply as parse_write_reply_pdu
from citygate.drivers.modbus.rtu import RegisterReply

__all__ = [
    "MAX_LENGTH",
    "MBAP",
    "MbapDecoder",
    "MbapFrame",
    "MbapFramingError",
    "ReadRequestFrame",
    "WriteRequestFrame",
    "encode_read_request",
    "encode_write_request",
    "parse_read_reply",
    "parse_write_reply",
]

MBAP: Final = struct.Struct(">HHHB")
"""Transaction id, protocol id (0), length of what follows, unit id."""
_READ_ADU: Final = struct.Struct(">HHHBBHH")
_READ_FUNCTIONS: Final = frozenset({0x01, 0x02, 0x03, 0x04})
_REGISTER_FUNCTIONS: Final = frozenset({0x03, 0x04})
MAX_LENGTH: Final = 254
"""The largest MBAP length: unit id + the largest PDU (253 bytes)."""
_MIN_LENGTH: Final = 2  # unit id + a function code


@dataclass(frozen=True, slots=True)
class ReadRequestFrame:
    """A read request (FC 01–04) as it goes on the wire."""

    transaction_id: int
    unit: int
    function: int
    address: int
    count: int

    @property
    def reply_data_bytes(self) -> int:
        """The byte count a well-formed reply carries."""
        if self.function in _REGISTER_FUNCTIONS:
            return 2 * self.count
        return (self.count + 7) // 8


def encode_read_request(request: ReadRequestFrame) -> bytes:
    """The ADU of ``request``. Raises ValueError out of range."""
    if request.function not in _READ_FUNCTIONS:
        raise ValueError(f"function {request.function} is not a read (1–4)")
    if not 0 <= request.transaction_id <= 0xFFFF or not 0 <= request.unit <= 0xFF:
        raise ValueError("transaction id or unit out of range")
    if not 0 <= request.address <= 0xFFFF or not 1 <= request.count <= 2000:
        raise ValueError(f"address {request.address} / count {request.count} out of range")
    return _READ_ADU.pack(
        request.transaction_id,
        0,
        6,
        request.unit,
        request.function,
        request.address,
        request.count,
    )


@dataclass(frozen=True, slots=True)
class WriteRequestFrame:
    """A write request (FC 05/06/15/16) as it goes on the wire."""

    transaction_id: int
    unit: int
    request: WriteRequest


def encode_write_request(frame: WriteRequestFrame) -> bytes:
    """The ADU of a write request. Raises ValueError out of range."""
    if not 0 <= frame.transaction_id <= 0xFFFF or not 0 <= frame.unit <= 0xFF:
        raise ValueError("transaction id or unit out of range")
    pdu = frame.request.pdu()
    return MBAP.pack(frame.transaction_id, 0, 1 + len(pdu), frame.unit) + pdu


@dataclass(frozen=True, slots=True)
class MbapFrame:
    """One received ADU: its header fields and its PDU."""

    transaction_id: int
    unit: int
    pdu: bytes


class MbapFramingError(DecodeError):
    """The byte stream is not Modbus TCP: nothing after this point can be framed."""


class MbapDecoder:
    """Splits a received byte stream into :class:`MbapFrame` s, however it is chunked.

    ``feed(data)`` returns the frames completed by ``data``. A header that cannot
    be Modbus TCP (protocol id not 0, length outside 2–254) breaks the stream for
    good (it cannot be resynchronised): :attr:`error` is set, and ``feed`` raises
    it — at once, or on the next call when this one completed frames before the
    break, so no frame is lost and the outcome never depends on the chunking.
    """

    __slots__ = ("_buffer", "_error")

    def __init__(self) -> None:
        self._buffer = b""
        self._error: MbapFramingError | None = None

    @property
    def error(self) -> MbapFramingError | None:
        """Why the stream broke, or None."""
        return self._error

    @property
    def pending(self) -> int:
        """Bytes received that are not yet a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[MbapFrame]:
        """The frames ``data`` completes; raise MbapFramingError on a broken stream."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer + data if self._buffer else bytes(data)
        frames: list[MbapFrame] = []
        position = 0
        end = len(buffer)
        while end - position >= 4:
            if buffer[position + 2] or buffer[position + 3]:
                protocol = int.from_bytes(buffer[position + 2 : position + 4], "big")
                return self._fail(
                    f"not a Modbus TCP frame (protocol id {protocol}, expected 0)", frames
                )
            if end - position < MBAP.size:
                break
            transaction_id, _, length, unit = MBAP.unpack_from(buffer, position)
            if not _MIN_LENGTH <= length <= MAX_LENGTH:
                return self._fail(
                    f"frame length {length} out of range {_MIN_LENGTH}–{MAX_LENGTH}", frames
                )
            stop = position + 6 + length
            if stop > end:
                break
            frames.append(MbapFrame(transaction_id, unit, buffer[position + MBAP.size : stop]))
            position = stop
        self._buffer = buffer[position:]
        return frames

    def _fail(self, message: str, frames: list[MbapFrame]) -> list[MbapFrame]:
        self._buffer = b""
        self._error = MbapFramingError(message)
        if frames:
            return frames
        raise self._error


def _check_unit(frame: MbapFrame, unit: int) -> None:
    if unit not in (frame.unit, 0):  # unit 0 means "any unit" on TCP
        raise DecodeError(f"reply from unit {frame.unit}, expected unit {unit}")


def parse_read_reply(frame: MbapFrame, request: ReadRequestFrame) -> RegisterReply | ExceptionReply:
    """The reply ``frame`` (of ``request``'s transaction) carries; raise DecodeError."""
    _check_unit(frame, request.unit)
    pdu = frame.pdu
    function = pdu[0]
    if function == request.function | 0x80:
        if len(pdu) != 2:
            raise DecodeError(f"exception reply of {len(pdu)} bytes, expected 2")
        return ExceptionReply(pdu[1])
    if function != request.function:
        raise DecodeError(f"reply with function code {function}, expected {request.function}")
    if len(pdu) < 2:
        raise DecodeError("reply without a byte count")
    expected = request.reply_data_bytes
    byte_count = pdu[1]
    if byte_count != expected:
        raise DecodeError(f"reply carries {byte_count} data bytes, expected {expected}")
    if len(pdu) != 2 + byte_count:
        raise DecodeError(f"reply frame holds {len(pdu) - 2} data bytes but says {byte_count}")
    return RegisterReply(pdu[2:])


def parse_write_reply(frame: MbapFrame, request: WriteRequestFrame) -> WriteReply | ExceptionReply:
    """The reply ``frame`` (of ``request``'s transaction) carries: the echo of the
    write or an exception; raise DecodeError for anything else (wrong unit,
    function or length, an echo that differs from the request)."""
    _check_unit(frame, request.unit)
    return parse_write_reply_pdu(request.request, frame.pdu)
