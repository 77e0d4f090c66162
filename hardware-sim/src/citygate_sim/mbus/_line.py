"""Wired M-Bus meters on a pseudo-terminal: one simulated M-Bus line.

Written from EN 13757-2/-3. The master's requests the meters answer:

* ``SND_NKE`` (``10 40 A CS 16``): the addressed meters reset their link (the
  next ``REQ_UD2`` starts a readout) and answer ``E5``; to 253 it also
  deselects the selected meters; to 255 (broadcast) nobody answers;
* ``REQ_UD2`` (``10 5B|7B A CS 16``): the addressed meter answers ``RSP_UD``.
  After a reset or a selection the first request starts a readout; later, an
  FCB different from the last one asks for the next telegram (a multi-telegram
  readout ends and starts again), the same FCB for the same telegram again (the
  master's retry);
* ``SND_UD`` with CI 0x52 to 253 (``68 0B 0B 68 53|73 FD 52 id man ver med CS
  16``): every meter whose secondary address matches is selected (an F nibble
  of the id and FF bytes of manufacturer, version and medium match anything),
  every other meter deselected; the selected meters answer ``E5``. Address 253
  then means the selected meter.

When more than one meter answers, the answers collide: the master receives
garbage (bytes with framing errors, none of them a valid frame). Bad requests
(checksum, stop byte) are dropped like a meter drops them, unanswered.

Bytes are paced like the line: a request counts as received when its
characters would have crossed the wire at ``baudrate`` (11 bits a character,
8E1), an answer starts ``turnaround`` seconds later (EN 13757-2: 11 bit times
to 330 bit times + 50 ms) and its bytes arrive one character time apart.
Pseudo-terminals refuse even parity: a client opens the pty with parity N; the
pacing still counts 11 bits.

Faults on demand (:class:`MbusFault`, per meter, for the next N answers or
until cleared): no answer, a bad checksum, collision garbage, a truncated frame.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from .._pty import PtyLine
from ._encode import ACK, checksum, manufacturer_code
from ._meter import WaterMeter

__all__ = ["MbusFault", "MbusRequestDecoder", "MbusSimulator", "Request", "matches_secondary"]

logger = logging.getLogger("citygate_sim.mbus")

NETWORK_LAYER: Final = 253
BROADCAST_REPLY: Final = 254
BROADCAST_NO_REPLY: Final = 255
_C_SND_NKE: Final = 0x40
_C_REQ_UD2: Final = 0x5B
_C_SND_UD: Final = 0x53
_FCB: Final = 0x20
_CI_SELECT: Final = 0x52
_IDLE_CHARS: Final = 3.0  # a gap this long inside a frame ends it


class MbusFault(StrEnum):
    """What a meter's answer suffers."""

    SILENT = "silent"  # no answer at all
    CHECKSUM = "checksum"  # the checksum byte is wrong
    COLLISION = "collision"  # garbage, as when two meters answer at once
    TRUNCATED = "truncated"  # only the first half of the frame arrives


@dataclass(frozen=True, slots=True)
class Request:
    """A master request as received: C and A fields, and for a long frame CI and data."""

    control: int
    address: int
    ci: int | None = None
    data: bytes = b""


class MbusRequestDecoder:
    """Frames master requests in a byte stream (sans-I/O); bytes that frame nothing are dropped."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.dropped_bytes = 0

    def feed(self, data: bytes) -> list[Request]:
        """Take bytes; return the complete, valid requests."""
        self._buffer += data
        requests: list[Request] = []
        buf = self._buffer
        while buf:
            start = buf[0]
            if start == 0x10:
                if len(buf) < 5:
                    break
                if buf[4] == 0x16 and checksum(bytes(buf[1:3])) == buf[3]:
                    requests.append(Request(buf[1], buf[2]))
                    del buf[:5]
                    continue
            elif start == 0x68:
                if len(buf) < 4:
                    break
                length = buf[1]
                if buf[2] == length and buf[3] == 0x68 and length >= 3:
                    total = length + 6
                    if len(buf) < total:
                        break
                    body = bytes(buf[4 : 4 + length])
                    if buf[total - 1] == 0x16 and checksum(body) == buf[total - 2]:
                        requests.append(Request(body[0], body[1], body[2], body[3:]))
                        del buf[:total]
                        continue
            del buf[:1]  # not a valid frame here: resynchronise one byte on
            self.dropped_bytes += 1
        return requests

    def reset(self) -> None:
        """Forget a partial frame (a silence ends any frame)."""
        self.dropped_bytes += len(self._buffer)
        self._buffer.clear()


def matches_secondary(meter: WaterMeter, pattern: bytes) -> bool:
    """Does ``meter`` match the 8 bytes of a selection (id, manufacturer, version, medium)?"""
    if len(pattern) != 8:
        return False
    ident = pattern[:4][::-1].hex().upper()  # most significant digit first
    own = f"{meter.ident:08d}"
    if any(p not in ("F", o) for p, o in zip(ident, own, strict=True)):
        return False
    manufacturer = int.from_bytes(pattern[4:6], "little")
    if manufacturer != 0xFFFF and manufacturer != manufacturer_code(meter.manufacturer):
        return False
    if pattern[6] != 0xFF and pattern[6] != meter.version:
        return False
    return not (pattern[7] != 0xFF and pattern[7] != meter.medium_code)


@dataclass(slots=True)
class _Link:
    """A meter's link state."""

    fresh: bool = True  # reset or selected: the next REQ_UD2 starts a readout
    last_fcb: bool | None = None
    readout: list[bytes] = field(default_factory=list)
    index: int = 0  # the telegram of ``readout`` sent last
    selected: bool = False


@dataclass(slots=True)
class _Fault:
    kind: MbusFault
    remaining: int | None


class MbusSimulator(PtyLine):
    """Simulated M-Bus meters on one line behind a pseudo-terminal.

    ``async with`` it to create the pty; :attr:`port` is the path a client opens
    (``link`` if given: a symlink to the pty, else the pty itself).
    """

    _logger = logger

    def __init__(
        self,
        meters: Iterable[WaterMeter],
        *,
        baudrate: int = 2400,
        turnaround: float | None = None,
        link: Path | str | None = None,
        seed: int = 0,
    ) -> None:
        if baudrate <= 0:
            raise ValueError("baudrate must be positive")
        self.meters = list(meters)
        if turnaround is not None and turnaround < 0:
            raise ValueError("turnaround must be >= 0")
        super().__init__(
            baudrate=baudrate,
            character_bits=11,  # 8E1: start, 8 data, parity, stop
            turnaround=33 / baudrate if turnaround is None else turnaround,
            link=link,
        )
        self.requests: collections.Counter[str] = collections.Counter()
        """Valid requests received, by kind (``snd_nke``, ``req_ud2``, ``select``, ``other``)."""
        self.request_log: collections.deque[tuple[float, Request]] = collections.deque(
            maxlen=10_000
        )
        self.collisions = 0
        self._links = {id(m): _Link() for m in self.meters}
        self._faults: dict[int, _Fault] = {}
        self._rng = random.Random(seed)
        self._decoder = MbusRequestDecoder()
        self._last_byte = 0.0

    # -- state and controls -----------------------------------------------------------

    @property
    def dropped_bytes(self) -> int:
        """Received bytes that framed no valid request."""
        return self._decoder.dropped_bytes

    def set_fault(
        self, meter: WaterMeter, fault: MbusFault | None, times: int | None = None
    ) -> None:
        """Make ``meter``'s next ``times`` answers (all, if None) suffer ``fault``; None clears."""
        if fault is None:
            self._faults.pop(id(meter), None)
        else:
            self._faults[id(meter)] = _Fault(MbusFault(fault), times)

    def add_meter(self, meter: WaterMeter) -> None:
        """Hang another meter on the line."""
        self.meters.append(meter)
        self._links[id(meter)] = _Link()

    def wire_time(self, n_bytes: int) -> float:
        """Seconds ``n_bytes`` take on this line."""
        return n_bytes * self.character_time

    # -- the meters' side (sans-I/O) ----------------------------------------------------

    def answer(self, request: Request) -> bytes | None:
        """What goes on the wire in reply to ``request`` (None: nothing)."""
        kind, replies = self._dispatch(request)
        self.requests[kind] += 1
        sent = [(meter, reply) for meter, reply in replies if reply is not None]
        if not sent:
            return None
        if len(sent) > 1:
            self.collisions += 1
            longest = max(len(reply) for _, reply in sent)
            return self._garbage(longest + self._rng.randrange(1, 3))
        return sent[0][1]

    def _dispatch(self, request: Request) -> tuple[str, list[tuple[WaterMeter, bytes | None]]]:
        control, address = request.control, request.address
        if request.ci is None and control == _C_SND_NKE:
            targets = self._targets(address)
            for meter in targets:
                link = self._links[id(meter)]
                link.fresh = True
                if address == NETWORK_LAYER:
                    link.selected = False
            if address == BROADCAST_NO_REPLY:
                return "snd_nke", []
            return "snd_nke", [(m, self._faulted(m, ACK)) for m in targets]
        if request.ci is None and control & ~_FCB == _C_REQ_UD2:
            fcb = bool(control & _FCB)
            targets = self._targets(address)
            if address == BROADCAST_NO_REPLY:
                return "req_ud2", []
            return "req_ud2", [(m, self._faulted(m, self._rsp_ud(m, fcb))) for m in targets]
        if (
            request.ci == _CI_SELECT
            and control & ~_FCB == _C_SND_UD
            and address == NETWORK_LAYER
            and len(request.data) == 8
        ):
            replies: list[tuple[WaterMeter, bytes | None]] = []
            for meter in self.meters:
                link = self._links[id(meter)]
                link.selected = matches_secondary(meter, request.data)
                if link.selected:
                    link.fresh = True
                    replies.append((meter, self._faulted(meter, ACK)))
            return "select", replies
        return "other", []

    def _targets(self, address: int) -> list[WaterMeter]:
        if address == NETWORK_LAYER:
            return [m for m in self.meters if self._links[id(m)].selected]
        if address in (BROADCAST_REPLY, BROADCAST_NO_REPLY):
            return list(self.meters)
        return [m for m in self.meters if m.address == address]

    def _rsp_ud(self, meter: WaterMeter, fcb: bool) -> bytes:
        link = self._links[id(meter)]
        if link.fresh or not link.readout:
            link.readout = meter.readout()
            link.index = 0
        elif fcb != link.last_fcb:
            link.index += 1
            if link.index >= len(link.readout):
                link.readout = meter.readout()
                link.index = 0
        link.fresh = False
        link.last_fcb = fcb
        return link.readout[link.index]

    def _faulted(self, meter: WaterMeter, reply: bytes) -> bytes | None:
        fault = self._faults.get(id(meter))
        if fault is None:
            return reply
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                del self._faults[id(meter)]
        if fault.kind is MbusFault.SILENT:
            return None
        if fault.kind is MbusFault.CHECKSUM:
            if len(reply) == 1:
                return self._garbage(1)
            return reply[:-2] + bytes(((reply[-2] + 1) % 256,)) + reply[-1:]
        if fault.kind is MbusFault.TRUNCATED:
            return reply[: max(1, len(reply) // 2)] if len(reply) > 1 else None
        return self._garbage(len(reply) + self._rng.randrange(1, 3))

    def _garbage(self, length: int) -> bytes:
        """Bytes as a receiver makes of colliding characters: none starts a frame."""
        out = bytearray()
        while len(out) < length:
            byte = self._rng.randrange(256)
            if byte not in (0xE5, 0x10, 0x68):
                out.append(byte)
        return bytes(out)

    # -- the wire -----------------------------------------------------------------------

    def _received(self, data: bytes, now: float) -> None:
        if now > self._last_byte + _IDLE_CHARS * self.character_time + 0.05:
            self._decoder.reset()
        received_at = self._arrived(data, now)
        self._last_byte = now
        for request in self._decoder.feed(data):
            self.request_log.append((received_at, request))
            reply = self.answer(request)
            logger.debug(
                "request C=%02X A=%d%s -> %s",
                request.control,
                request.address,
                "" if request.ci is None else f" CI={request.ci:02X}",
                "no answer" if reply is None else reply.hex(" "),
            )
            if reply is not None:
                self._send(reply, received_at + self.turnaround)
