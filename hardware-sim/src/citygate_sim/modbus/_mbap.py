"""Modbus TCP framing (the MBAP header), sans-I/O.

From the Modbus Messaging on TCP/IP Implementation Guide V1.0b: every ADU is a
7-byte MBAP header (transaction id, protocol id = 0, length = the bytes that
follow it including the unit id, unit id) and a PDU of at most 253 bytes.

The decoder takes bytes as they arrive, in any chunks, and yields events:

* :class:`MbapFrame`: one complete request;
* :class:`Discarded`: a frame that the length field delimits but that is not a
  Modbus request (protocol id not 0, or no function code); the stream goes on;
* :data:`NEED_DATA`: no complete frame buffered.

A length field outside 1..254 leaves no way to find the next frame: the decoder
raises :class:`MbapFramingError` and the transport closes the connection.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal

__all__ = [
    "MAX_PDU_SIZE",
    "NEED_DATA",
    "Discarded",
    "MbapDecoder",
    "MbapFrame",
    "MbapFramingError",
    "NeedData",
    "encode_adu",
]

MAX_PDU_SIZE: Final = 253
HEADER: Final = struct.Struct(">HHHB")
_MAX_LENGTH_FIELD: Final = MAX_PDU_SIZE + 1


@dataclass(frozen=True, slots=True)
class MbapFrame:
    """One Modbus TCP request."""

    transaction_id: int
    unit_id: int
    pdu: bytes


@dataclass(frozen=True, slots=True)
class Discarded:
    """A delimited frame that is not a Modbus request; ``data`` is the whole frame."""

    reason: str
    data: bytes


class NeedData(Enum):
    """The decoder needs more bytes before it can yield the next frame."""

    NEED_DATA = "need data"


NEED_DATA: Final = NeedData.NEED_DATA


class MbapFramingError(Exception):
    """The byte stream cannot be split into frames any more."""


def encode_adu(transaction_id: int, unit_id: int, pdu: bytes) -> bytes:
    """One Modbus TCP ADU: the MBAP header (protocol id 0) and ``pdu``."""
    if len(pdu) > MAX_PDU_SIZE:
        raise ValueError(f"PDU of {len(pdu)} bytes: at most {MAX_PDU_SIZE}")
    return HEADER.pack(transaction_id & 0xFFFF, 0, len(pdu) + 1, unit_id & 0xFF) + pdu


class MbapDecoder:
    """Splits a Modbus TCP byte stream into frames (see the module docstring)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._broken: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of an event."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        self._buffer += data

    def next_event(self) -> MbapFrame | Discarded | Literal[NeedData.NEED_DATA]:
        """The next complete frame, a discarded frame, or NEED_DATA."""
        if self._broken is not None:
            raise MbapFramingError(self._broken)
        if len(self._buffer) < HEADER.size:
            return NEED_DATA
        transaction_id, protocol_id, length, unit_id = HEADER.unpack_from(self._buffer)
        if not 1 <= length <= _MAX_LENGTH_FIELD:
            self._broken = f"MBAP length field {length} outside 1..{_MAX_LENGTH_FIELD}"
            raise MbapFramingError(self._broken)
        frame_size = HEADER.size - 1 + length
        if len(self._buffer) < frame_size:
            return NEED_DATA
        frame = bytes(self._buffer[:frame_size])
        del self._buffer[:frame_size]
        if protocol_id != 0:
            return Discarded(f"protocol id {protocol_id}, not 0 (Modbus)", frame)
        if length == 1:
            return Discarded("no function code", frame)
        return MbapFrame(transaction_id, unit_id, frame[HEADER.size :])
