"""Modbus RTU framing, sans-I/O (Modbus over Serial Line V1.02, 2.5).

An RTU frame is ``unit id, PDU, CRC-16`` (CRC low byte first). Frames are
delimited on the wire by silence, which a reader on a USB adapter cannot see
reliably; :class:`RtuReplyFramer` therefore finds the reply to one read request
by its structure:

* a complete frame with a valid CRC from the expected unit and function (or its
  exception) is the reply; bytes before it are stray and counted;
* a complete, valid frame from another unit (a late reply, another master) is
  set aside and counted (``wrong_units``);
* a frame from the expected unit whose CRC fails once its length is in is a
  CRC error — the verdict, without waiting for the timeout;
* a reply whose byte count does not fit the request is a length error.

The verdict is in :attr:`RtuReplyFramer.outcome` once :meth:`~RtuReplyFramer.feed`
returned True; after a timeout, :meth:`RtuReplyFramer.failure` says what the
bytes received amount to (truncated frame, wrong unit, garbage).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BadReply",
    "ExceptionReply",
    "RegisterReply",
    "RtuReplyFramer",
    "crc16",
    "encode_read_request",
    "rtu_frame",
]

_READ_FUNCTIONS: Final = frozenset({0x01, 0x02, 0x03, 0x04})
_REGISTER_FUNCTIONS: Final = frozenset({0x03, 0x04})
MAX_RTU_FRAME: Final = 256


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """The Modbus CRC-16 of ``data`` (polynomial 0xA001 reflected, start 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """``unit`` + ``pdu`` + CRC (low byte first)."""
    body = bytes((unit,)) + pdu
    return body + struct.pack("<H", crc16(body))


def encode_read_request(unit: int, function: int, address: int, count: int) -> bytes:
    """The RTU frame of a read request (FC 01–04). Raises ValueError out of range."""
    if function not in _READ_FUNCTIONS:
        raise ValueError(f"function {function} is not a read (1–4)")
    if not 0 <= unit <= 247:
        raise ValueError(f"unit {unit} outside 0–247")
    if not 0 <= address <= 0xFFFF or not 1 <= count <= 2000:
        raise ValueError(f"address {address} / count {count} out of range")
    return rtu_frame(unit, struct.pack(">BHH", function, address, count))


@dataclass(frozen=True, slots=True)
class RegisterReply:
    """A well-formed reply: the data bytes after the byte count."""

    data: bytes

    def registers(self) -> list[int]:
        """The data as 16-bit registers (big-endian)."""
        return list(struct.unpack(f">{len(self.data) // 2}H", self.data))

    def bits(self, count: int) -> list[bool]:
        """The first ``count`` bits of the data (LSB of the first byte first)."""
        return [bool(self.data[i // 8] >> (i % 8) & 1) for i in range(count)]


@dataclass(frozen=True, slots=True)
class ExceptionReply:
    """The device refused the request with an exception code."""

    code: int


@dataclass(frozen=True, slots=True)
class BadReply:
    """A reply that cannot be used: ``kind`` (``crc``, ``length``) and why."""

    kind: str
    message: str


Outcome = RegisterReply | ExceptionReply | BadReply


class RtuReplyFramer:
    """Finds the reply to one read request in the bytes received after it.

    A :class:`citygate.drivers.api.ReplyFramer`: ``feed(data)`` returns True once the
    verdict is in :attr:`outcome`.
    """

    def __init__(self, unit: int, function: int, count: int) -> None:
        self.unit = unit
        self.function = function
        self.expected_data = 2 * count if function in _REGISTER_FUNCTIONS else (count + 7) // 8
        self.outcome: Outcome | None = None
        self.stray_bytes = 0
        self.wrong_units: list[int] = []
        self._buffer = bytearray()

    def feed(self, data: bytes) -> bool:
        """Take received bytes; True once :attr:`outcome` is set."""
        if self.outcome is not None:
            return True
        self._buffer += data
        self._scan()
        return self.outcome is not None

    def failure(self) -> tuple[str, str]:
        """``(kind, message)`` of what arrived, for an exchange that timed out:
        ``("silent", …)``, ``("truncated", …)``, ``("wrong_unit", …)`` or ``("garbage", …)``."""
        if self.outcome is not None:
            raise RuntimeError("the reply was complete")
        pending = bytes(self._buffer)
        if not pending and not self.stray_bytes and not self.wrong_units:
            return "silent", "no answer"
        if self.wrong_units and not pending:
            units = ", ".join(str(u) for u in sorted(set(self.wrong_units)))
            return "wrong_unit", f"reply from unit {units}, expected unit {self.unit}"
        start = self._candidate(pending)
        if start is not None:
            got = len(pending) - start
            length = self._length(pending, start)
            of = f" of {length}" if length else ""
            return "truncated", f"truncated reply ({got}{of} bytes)"
        total = len(pending) + self.stray_bytes
        return "garbage", f"{total} bytes that are no Modbus RTU reply"

    # ------------------------------------------------------------------ internals

    def _length(self, buffer: bytes | bytearray, start: int) -> int | None:
        """Frame length at ``start`` if it starts a reply to our function, else None."""
        if len(buffer) - start < 2:
            return None
        function = buffer[start + 1]
        if function == self.function | 0x80:
            return 5
        if function != self.function:
            return None
        if len(buffer) - start < 3:
            return 0  # not known yet
        return 5 + buffer[start + 2]

    def _valid_at(self, start: int) -> int | None:
        """End of a complete frame with a valid CRC at ``start``, else None."""
        buffer = self._buffer
        length = self._length(buffer, start)
        if not length or start + length > len(buffer):
            return None
        body = buffer[start : start + length - 2]
        (crc,) = struct.unpack_from("<H", buffer, start + length - 2)
        return start + length if crc16(body) == crc else None

    def _candidate(self, buffer: bytes | bytearray) -> int | None:
        for start in range(len(buffer)):
            if buffer[start] == self.unit and (
                len(buffer) - start < 2 or self._length(buffer, start) is not None
            ):
                return start
        return None

    def _scan(self) -> None:
        while True:
            buffer = self._buffer
            found: tuple[int, int] | None = None
            for offset in range(len(buffer)):
                frame_end = self._valid_at(offset)
                if frame_end is not None:
                    found = (offset, frame_end)
                    break
            if found is None:
                break
            start, end = found
            self.stray_bytes += start
            frame = bytes(buffer[start:end])
            del buffer[:end]
            if frame[0] != self.unit:
                self.wrong_units.append(frame[0])
                continue
            self.outcome = self._reply(frame)
            return
        # No valid frame: a frame of our unit whose length is in has a bad CRC.
        candidate = self._candidate(self._buffer)
        if candidate is None:
            return
        length = self._length(self._buffer, candidate)
        if length and candidate + length <= len(self._buffer):
            self.stray_bytes += candidate
            self.outcome = BadReply("crc", "CRC error in the reply")

    def _reply(self, frame: bytes) -> Outcome:
        if frame[1] & 0x80:
            return ExceptionReply(frame[2])
        byte_count = frame[2]
        if byte_count != self.expected_data:
            return BadReply(
                "length", f"reply carries {byte_count} data bytes, expected {self.expected_data}"
            )
        return RegisterReply(frame[3 : 3 + byte_count])
