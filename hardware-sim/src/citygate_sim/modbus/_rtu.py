"""Modbus RTU meters on a pseudo-terminal: one simulated RS-485 line.

Written from *Modbus over Serial Line, Specification and Implementation Guide
V1.02*: an RTU frame is the unit id, the PDU and a CRC-16 (polynomial 0xA001,
start 0xFFFF, low byte first); a server answers only requests addressed to its
own id, discards frames whose CRC fails, and never answers broadcasts (id 0).

:class:`RtuRequestDecoder` frames requests (sans-I/O); :class:`ModbusRtuSimulator`
serves a :class:`~citygate_sim.modbus.RequestHandler` on the master side of a pty, so a
client opens the slave path (or a symlink to it) as its serial port. Bytes are
paced as the line would carry them: a request is taken as received once its
characters would have crossed the wire, the reply starts ``turnaround``
seconds later and its bytes arrive at one character time each (10 bits a
character for 8N1, 11 for 8E1 or 8N2).

Line faults on demand (:class:`LineFault`, per unit): a reply with a bad CRC, a
truncated reply, garbage instead of a reply, a reply carrying another unit id, a
babbling unit (random bytes back to back, the line never silent, its own replies
lost in them; other units' replies still get through between its bytes);
:meth:`ModbusRtuSimulator.inject_noise` puts stray bytes on the line;
:meth:`~ModbusRtuSimulator.unplug` / :meth:`~ModbusRtuSimulator.replug` make the
port vanish and come back (a USB adapter pulled out), moving ``link``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import struct
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from .._pty import PtyLine
from ._meter import Meter
from ._server import RequestHandler, UnknownUnit

__all__ = ["LineFault", "ModbusRtuSimulator", "RtuRequestDecoder", "crc16", "rtu_frame"]

logger = logging.getLogger("citygate_sim.modbus.rtu")


def crc16(data: bytes | bytearray) -> int:
    """The Modbus CRC-16 (bitwise, as in the specification's appendix)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    """``unit`` + ``pdu`` + CRC, low byte first."""
    body = bytes((unit,)) + pdu
    return body + struct.pack("<H", crc16(body))


class LineFault(StrEnum):
    """What a unit's reply suffers on the wire."""

    CRC = "crc"  # the last CRC byte is flipped
    TRUNCATED = "truncated"  # only the first half of the reply is sent
    GARBAGE = "garbage"  # random bytes instead of the reply
    WRONG_UNIT = "wrong_unit"  # the reply carries unit id + 1 (CRC valid)
    BABBLE = "babble"  # sends random bytes without pause; never a reply


def _request_length(buffer: bytes | bytearray) -> int | None:
    """Length of the request frame at the start of ``buffer``; None if not known yet;
    0 if the function code has no length rule here."""
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if 1 <= function <= 6:
        return 8
    if function in (15, 16):
        return None if len(buffer) < 7 else 9 + buffer[6]
    return 0


class RtuRequestDecoder:
    """Frames requests in a byte stream; bytes that frame nothing are dropped."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.dropped_bytes = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Take bytes; return the complete requests as ``(unit id, pdu)``."""
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        while self._buffer:
            length = _request_length(self._buffer)
            if length is None or length > len(self._buffer):
                # Incomplete here; a complete frame further on means this was noise.
                later = self._next_valid(1)
                if later is None:
                    break
                del self._buffer[:later]
                self.dropped_bytes += later
                continue
            if length and self._valid(0, length):
                frame = bytes(self._buffer[:length])
                del self._buffer[:length]
                frames.append((frame[0], frame[1:-2]))
                continue
            del self._buffer[:1]  # resynchronise one byte on
            self.dropped_bytes += 1
        return frames

    def _valid(self, start: int, length: int) -> bool:
        if start + length > len(self._buffer):
            return False
        crc: int = struct.unpack_from("<H", self._buffer, start + length - 2)[0]
        return crc16(self._buffer[start : start + length - 2]) == crc

    def _next_valid(self, first: int) -> int | None:
        for start in range(first, len(self._buffer)):
            length = _request_length(self._buffer[start:])
            if length and self._valid(start, length):
                return start
        return None

    def reset(self) -> None:
        """Forget a partial frame (a long silence ends any frame)."""
        self.dropped_bytes += len(self._buffer)
        self._buffer.clear()


class ModbusRtuSimulator(PtyLine):
    """Simulated meters on one RS-485 line behind a pseudo-terminal.

    ``async with`` it to create the pty; :attr:`port` is the path a client opens
    (``link`` if given: a symlink to the pty kept up to date, else the pty itself).
    """

    _logger = logger

    def __init__(
        self,
        meters: Mapping[int, Meter],
        *,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: int = 1,
        turnaround: float = 0.0,
        link: Path | str | None = None,
        unknown_unit: UnknownUnit = "silent",
        seed: int = 0,
    ) -> None:
        if baudrate <= 0:
            raise ValueError("baudrate must be positive")
        if parity not in ("N", "E", "O") or stopbits not in (1, 2) or bytesize not in (7, 8):
            raise ValueError("parity N/E/O, stopbits 1/2, bytesize 7/8")
        if turnaround < 0:
            raise ValueError("turnaround must be >= 0")
        self.handler = RequestHandler(meters, unknown_unit=unknown_unit)
        super().__init__(
            baudrate=baudrate,
            character_bits=1 + bytesize + (0 if parity == "N" else 1) + stopbits,
            turnaround=turnaround,
            link=link,
        )
        self.line_faults: dict[int, LineFault] = {}
        self.request_log: collections.deque[tuple[float, int]] = collections.deque(maxlen=10_000)
        """``(loop time received, unit id)`` of the latest requests with a valid CRC."""
        self._rng = random.Random(seed)
        self._decoder = RtuRequestDecoder()
        self.babbled_bytes = 0
        """Bytes a babbling unit put on the line."""
        # Babble comes in bursts shorter than half the silent interval (3.5 characters,
        # 1.75 ms above 19200 baud), so a reader never sees the line fall silent.
        silent = 3.5 * self.character_time if baudrate <= 19200 else 0.00175
        self._babble_chars = max(1, int(silent / 2 / self.character_time))
        self._babble_timer: asyncio.TimerHandle | None = None

    # -- state and controls ---------------------------------------------------------------

    @property
    def pty_path(self) -> str | None:
        """The pty's slave path now (None while unplugged)."""
        return self._pty_path

    @property
    def meters(self) -> dict[int, Meter]:
        """The served meters by unit id."""
        return self.handler.meters

    @property
    def requests_by_unit(self) -> collections.Counter[int]:
        """Requests received with a valid CRC, per unit id."""
        return self.handler.requests_by_unit

    @property
    def dropped_bytes(self) -> int:
        """Received bytes that framed no valid request (bad CRC, noise)."""
        return self._decoder.dropped_bytes

    def set_fault(self, unit_id: int, fault: object) -> None:
        """Inject a :class:`~citygate_sim.modbus.Fault` (silent, exception, delay) or a
        :class:`LineFault` into ``unit_id``, replacing its fault; None clears it."""
        self.handler.set_fault(unit_id, None)
        self.line_faults.pop(unit_id, None)
        if fault is None:
            return  # a babble in progress ends at its next burst
        if isinstance(fault, LineFault):
            self.line_faults[unit_id] = fault
        else:
            self.handler.set_fault(unit_id, fault)  # type: ignore[arg-type]
        self._start_babble()

    def inject_noise(self, data: bytes) -> None:
        """Put ``data`` on the line now (stray bytes, as from a noisy bus)."""
        self._send(data, self._now())

    def reply_wire_time(self, request_bytes: int, reply_bytes: int) -> float:
        """Seconds a request and its reply occupy the wire (without silences)."""
        return (request_bytes + reply_bytes) * self.character_time

    # -- lifecycle -----------------------------------------------------------------------

    def unplug(self) -> None:
        """The adapter vanishes: the pty closes (clients get a hangup), the link goes."""
        self._close_pty()
        logger.info("unplugged")

    def replug(self) -> None:
        """The adapter comes back, on a new pty; the link points at it again."""
        if self._master is not None:
            raise RuntimeError("still plugged in")
        self._open_pty()
        logger.info("plugged in again at %s", self.port)

    # -- internals -----------------------------------------------------------------------

    def _open_pty(self) -> None:
        super()._open_pty()
        self._decoder.reset()
        self._babble_timer = None  # closing the pty cancelled it
        self._start_babble()

    def _babbling(self) -> bool:
        return LineFault.BABBLE in self.line_faults.values()

    def _start_babble(self) -> None:
        if self._babble_timer is None and self._master is not None and self._babbling():
            self._babble_next(self._now())

    def _babble_next(self, when: float) -> None:
        assert self._loop is not None
        if self._babble_timer is not None:
            self._timers.discard(self._babble_timer)
        self._babble_timer = self._loop.call_at(when, self._babble)
        self._timers.add(self._babble_timer)  # cancelled when the pty closes

    def _babble(self) -> None:
        """One burst, as if its characters had just crossed the wire; the next one
        right after it, or after a reply already on its way."""
        if self._babble_timer is not None:
            self._timers.discard(self._babble_timer)
        self._babble_timer = None
        if self._master is None or not self._babbling():
            return
        now = self._now()
        burst = self._babble_chars * self.character_time
        if self._line_free > now - burst + 1e-6:  # the wire carries another frame
            self._babble_next(self._line_free + burst)
            return
        data = self._rng.randbytes(self._babble_chars)
        try:
            os.write(self._master, data)
        except OSError as exc:
            logger.debug("babble write failed: %s", exc)
        else:
            self.bytes_sent += len(data)
            self.babbled_bytes += len(data)
        self._line_free = now
        self._babble_next(now + burst)

    def _received(self, data: bytes, now: float) -> None:
        if now > self._line_free + 3.5 * self.character_time:
            self._decoder.reset()  # a silence ends any partial frame
        received_at = self._arrived(data, now)
        for unit_id, pdu in self._decoder.feed(data):
            self.request_log.append((received_at, unit_id))
            if unit_id == 0:  # broadcast: served, never answered
                self.handler.handle_request(unit_id, pdu)
                continue
            response = self.handler.handle_request(unit_id, pdu)
            logger.debug(
                "unit %d: %s -> %s",
                unit_id,
                pdu.hex(" "),
                "no answer" if response is None else response.hex(" "),
            )
            if response is None:
                continue
            start = received_at + self.turnaround + self.handler.delay_for(unit_id)
            reply = self._damage(unit_id, rtu_frame(unit_id, response))
            if reply:
                self._send(reply, start)

    def _damage(self, unit_id: int, frame: bytes) -> bytes:
        fault = self.line_faults.get(unit_id)
        if fault is LineFault.CRC:
            return frame[:-1] + bytes((frame[-1] ^ 0xFF,))
        if fault is LineFault.TRUNCATED:
            return frame[: max(1, len(frame) // 2)]
        if fault is LineFault.GARBAGE:
            return bytes(self._rng.randrange(256) for _ in range(len(frame)))
        if fault is LineFault.WRONG_UNIT:
            return rtu_frame((unit_id + 1) % 248 or 1, frame[1:-2])
        if fault is LineFault.BABBLE:
            return b""  # lost in its own babble
        return frame
