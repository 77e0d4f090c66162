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

Write requests (FC 05/06/15/16, :class:`~citygate.drivers.modbus.pdu.WriteRequest`)
are framed by :func:`encode_write_request`; their replies, 8 bytes that echo the
request (or a 5-byte exception), by :class:`RtuWriteReplyFramer`, which gives a
reply that does not echo the request as a ``BadReply("echo", …)``.

The verdict is in :attr:`RtuReplyFramer.outcome` once :meth:`~RtuReplyFramer.feed`
returned True; after a timeout, :meth:`RtuReplyFramer.failure` says what the
bytes received amount to (truncated frame, wrong unit, garbage).
"""

from __future__ import annotations

import collections
import heapq
import struct
from dataclasses import dataclass
from typing import Final

from citygate.drivers.api import DecodeError
from citygate.drivers.modbus.pdu import ExceptionReply, WriteReply, WriteRequest, parse_write_reply

__all__ = [
    "BadReply",
    "ExceptionReply",
    "RegisterReply",
    "RtuReplyFramer",
    "RtuWriteReplyFramer",
    "WriteReply",
    "crc16",
    "encode_read_request",
    "encode_write_request",
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


def encode_write_request(unit: int, request: WriteRequest) -> bytes:
    """The RTU frame of a write request (FC 05/06/15/16). Raises ValueError out of range."""
    if not 0 <= unit <= 247:
        raise ValueError(f"unit {unit} outside 0–247")
    return rtu_frame(unit, request.pdu())


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
class BadReply:
    """A reply that cannot be used: ``kind`` (``crc``, ``length``) and why."""

    kind: str
    message: str


Outcome = RegisterReply | WriteReply | ExceptionReply | BadReply


class RtuReplyFramer:
    """Finds the reply to one read request in the bytes received after it.

    A :class:`citygate.drivers.api.ReplyFramer`: ``feed(data)`` returns True once the
    verdict is in :attr:`outcome`. It never raises on what it is fed.

    Every byte position is examined once as it arrives and its CRC checked once,
    when its frame is complete: the work is linear in the bytes received
    (:attr:`scan_steps` counts it). Positions that can no longer start a reply
    (a function code that fits no reply, a complete frame with a bad CRC) are
    dropped, so the buffer holds at most one frame's worth of bytes whatever a
    babbling device sends; dropped bytes count in :attr:`stray_bytes`.
    """

    def __init__(self, unit: int, function: int, count: int) -> None:
        self.unit = unit
        self.function = function
        self.expected_data = 2 * count if function in _REGISTER_FUNCTIONS else (count + 7) // 8
        self.outcome: Outcome | None = None
        self.stray_bytes = 0
        """Bytes that framed nothing (garbage, noise before the reply), dropped."""
        self.wrong_units: list[int] = []
        """Other units whose valid frames arrived, each once, in order of arrival."""
        self.wrong_unit_frames = 0
        self.scan_steps = 0
        """Work done: one per byte position examined, one per byte through the CRC."""
        self._buffer = bytearray()
        self._base = 0  # stream offset of _buffer[0]; offsets below are all absolute
        self._next = 0  # the first offset not examined yet
        self._due: list[tuple[int, int]] = []  # heap of (offset the decision waits for, start)
        self._open: dict[int, int] = {}  # undecided starts -> the offset they wait for
        self._order: collections.deque[int] = collections.deque()  # undecided starts, ascending
        self._valid: list[tuple[int, int]] = []  # heap of complete valid frames (start, end)
        self._candidates: list[int] = []  # heap of starts of our unit not yet ruled out
        self._bad_crc: set[int] = set()  # candidates complete with a bad CRC

    @property
    def discarded_bytes(self) -> int:
        """Bytes dropped as framing nothing (:attr:`stray_bytes`; see
        :class:`citygate.drivers.api.CountsDiscarded`)."""
        return self.stray_bytes

    @property
    def buffered(self) -> int:
        """Bytes held that may still start a reply (at most one frame and a chunk)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> bool:
        """Take received bytes; True once :attr:`outcome` is set."""
        if self.outcome is not None:
            return True
        if data:
            self._buffer += data
            self._scan()
        return self.outcome is not None

    def failure(self) -> tuple[str, str]:
        """``(kind, message)`` of what arrived, for an exchange that timed out:
        ``("silent", …)``, ``("truncated", …)``, ``("wrong_unit", …)`` or ``("garbage", …)``."""
        if self.outcome is not None:
            raise RuntimeError("the reply was complete")
        pending = len(self._buffer)
        if not pending and not self.stray_bytes and not self.wrong_units:
            return "silent", "no answer"
        if self.wrong_units and not pending:
            units = ", ".join(str(u) for u in sorted(self.wrong_units))
            return "wrong_unit", f"reply from unit {units}, expected unit {self.unit}"
        start = self._first_candidate()
        if start is not None:
            got = self._end - start
            length = self._length(self._buffer, start - self._base)
            of = f" of {length}" if length else ""
            return "truncated", f"truncated reply ({got}{of} bytes)"
        total = pending + self.stray_bytes
        return "garbage", f"{total} bytes that are no Modbus RTU reply"

    # ------------------------------------------------------------------ internals

    @property
    def _end(self) -> int:
        return self._base + len(self._buffer)

    def _length(self, buffer: bytes | bytearray, index: int) -> int | None:
        """Frame length at ``index`` if it starts a reply to our function, else None
        (0: the byte count has not arrived yet)."""
        if len(buffer) - index < 2:
            return None
        function = buffer[index + 1]
        if function == self.function | 0x80:
            return 5
        if function != self.function:
            return None
        if len(buffer) - index < 3:
            return 0
        return 5 + buffer[index + 2]

    def _scan(self) -> None:
        end = self._end
        for start in range(self._next, end):
            if self._buffer[start - self._base] == self.unit:
                heapq.heappush(self._candidates, start)
            self._examine(start)
        self._next = end
        due = self._due
        while due and due[0][0] <= end:
            _, start = heapq.heappop(due)
            if start >= self._base:  # else inside a frame taken before
                self._examine(start)
        while self._valid:
            start, stop = heapq.heappop(self._valid)
            if start < self._base:
                continue  # inside a frame taken before
            frame = bytes(self._buffer[start - self._base : stop - self._base])
            self._drop(start)  # stray bytes before the frame
            self._cut(stop)  # the frame itself
            if frame[0] != self.unit:
                self.wrong_unit_frames += 1
                if frame[0] not in self.wrong_units:
                    self.wrong_units.append(frame[0])
                continue
            self.outcome = self._reply(frame)
            return
        # No valid frame: the first frame of our unit whose length is in has a bad CRC.
        candidate = self._first_candidate()
        if candidate is not None and candidate in self._bad_crc:
            self._drop(candidate)
            self.outcome = BadReply("crc", "CRC error in the reply")
            return
        self._drop(self._oldest_undecided())

    def _examine(self, start: int) -> None:
        """Decide what ``start`` is as far as the bytes in allow (once each stage)."""
        self.scan_steps += 1
        index = start - self._base
        buffer = self._buffer
        available = len(buffer) - index
        length = self._length(buffer, index)
        if available < 2 or length == 0:
            self._wait(start, start + (2 if available < 2 else 3))
            return
        self._open.pop(start, None)
        if length is None:
            return  # no reply to our function starts here
        if available < length:
            self._wait(start, start + length)
            return
        self.scan_steps += length - 2
        (crc,) = struct.unpack_from("<H", buffer, index + length - 2)
        if crc16(memoryview(buffer)[index : index + length - 2]) == crc:
            heapq.heappush(self._valid, (start, start + length))
        elif buffer[index] == self.unit:
            self._bad_crc.add(start)

    def _wait(self, start: int, until: int) -> None:
        if start not in self._open:
            self._order.append(start)
        self._open[start] = until
        heapq.heappush(self._due, (until, start))

    def _oldest_undecided(self) -> int:
        order = self._order
        while order and (order[0] not in self._open or order[0] < self._base):
            self._open.pop(order.popleft(), None)
        return order[0] if order else self._next

    def _first_candidate(self) -> int | None:
        """The first start of our unit that may still be (or was) a reply to our function."""
        candidates = self._candidates
        while candidates:
            start = candidates[0]
            if start >= self._base and (start in self._open or start in self._bad_crc):
                return start
            heapq.heappop(candidates)
            self._bad_crc.discard(start)
        return None

    def _drop(self, upto: int) -> None:
        """Count the bytes before ``upto`` as stray and forget them."""
        if upto > self._base:
            self.stray_bytes += upto - self._base
            self._cut(upto)

    def _cut(self, upto: int) -> None:
        del self._buffer[: upto - self._base]
        self._base = upto
        self._next = max(self._next, upto)

    def _reply(self, frame: bytes) -> Outcome:
        if frame[1] & 0x80:
            return ExceptionReply(frame[2])
        byte_count = frame[2]
        if byte_count != self.expected_data:
            return BadReply(
                "length", f"reply carries {byte_count} data bytes, expected {self.expected_data}"
            )
        return RegisterReply(frame[3 : 3 + byte_count])


class RtuWriteReplyFramer(RtuReplyFramer):
    """Finds the reply to one write request: its 8-byte echo or a 5-byte exception.

    A complete frame of the expected unit and function with a valid CRC that does
    not echo the request (address, value or quantity) is ``BadReply("echo", …)``.
    """

    def __init__(self, unit: int, request: WriteRequest) -> None:
        super().__init__(unit, request.function, 1)
        self.request = request

    def _length(self, buffer: bytes | bytearray, index: int) -> int | None:
        if len(buffer) - index < 2:
            return None
        function = buffer[index + 1]
        if function == self.function | 0x80:
            return 5
        return _WRITE_REPLY_LENGTH if function == self.function else None

    def _reply(self, frame: bytes) -> Outcome:
        try:
            return parse_write_reply(self.request, frame[1:-2])
        except DecodeError as exc:
            return BadReply("echo", str(exc))


_WRITE_REPLY_LENGTH: Final = 8  # unit, function, address, value or quantity, CRC
