"""Unit routing and fault injection (sans-I/O), and the asyncio Modbus TCP transport.

:class:`RequestHandler` answers ``(unit id, request PDU)`` with a response PDU or
None (no answer); it knows nothing of TCP, so a serial RTU transport can share it.
:class:`ModbusTcpSimulator` frames it with MBAP over asyncio's protocol API: no
tasks of its own, every timer owned by a connection and cancelled with it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal

from .._service import Service
from ._mbap import NEED_DATA, Discarded, MbapDecoder, MbapFramingError, encode_adu
from ._meter import Meter
from ._pdu import ExceptionCode, exception_response, handle_pdu

__all__ = ["Fault", "FaultKind", "ModbusTcpSimulator", "RequestHandler", "UnknownUnit"]

logger = logging.getLogger("citygate_sim.modbus")

UnknownUnit = Literal["silent", "gateway_error"]
"""How a request for a unit id nobody serves is answered: not at all, or exception 0x0B."""


class FaultKind(StrEnum):
    """What a unit's injected fault does."""

    SILENT = "silent"
    EXCEPTION = "exception"
    DELAY = "delay"


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault injected into one unit: ``Fault.SILENT``, ``Fault.exception(code)``,
    ``Fault.delay(seconds)``."""

    kind: FaultKind
    code: int = 0
    seconds: float = 0.0

    SILENT: ClassVar[Fault]

    @classmethod
    def exception(cls, code: int) -> Fault:
        """Answer every request with exception ``code`` (1..255)."""
        if not 1 <= code <= 0xFF:
            raise ValueError(f"exception code {code} outside 1..255")
        return cls(FaultKind.EXCEPTION, code=code)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Answer correctly, ``seconds`` late."""
        if not 0 <= seconds < math.inf:
            raise ValueError(f"delay {seconds} must be a finite number of seconds >= 0")
        return cls(FaultKind.DELAY, seconds=seconds)


Fault.SILENT = Fault(FaultKind.SILENT)


class RequestHandler:
    """Routes request PDUs to units, applying faults and the unknown-unit policy.

    Counts every request received (``request_count``, ``requests_by_unit``),
    answered or not, the exception responses sent (``exception_count``,
    ``exceptions_by_unit``) and the frames it had to drop (``dropped_count``).
    """

    def __init__(
        self, meters: Mapping[int, Meter], *, unknown_unit: UnknownUnit = "silent"
    ) -> None:
        """Serve ``meters`` by unit id (0..255)."""
        for unit in meters:
            if not 0 <= unit <= 0xFF:
                raise ValueError(f"unit id {unit} outside 0..255")
        if unknown_unit not in ("silent", "gateway_error"):
            raise ValueError(f"unknown_unit {unknown_unit!r}: 'silent' or 'gateway_error'")
        self.meters: dict[int, Meter] = dict(meters)
        self.unknown_unit: UnknownUnit = unknown_unit
        self.faults: dict[int, Fault] = {}
        self.request_count = 0
        self.requests_by_unit: collections.Counter[int] = collections.Counter()
        self.exception_count = 0
        self.exceptions_by_unit: collections.Counter[int] = collections.Counter()
        self.dropped_count = 0

    def set_fault(self, unit_id: int, fault: Fault | None) -> None:
        """Inject ``fault`` into ``unit_id`` (any id, served or not); None clears it."""
        if fault is None:
            self.faults.pop(unit_id, None)
        else:
            self.faults[unit_id] = fault

    def delay_for(self, unit_id: int) -> float:
        """Seconds an answer from ``unit_id`` is held back (its DELAY fault)."""
        fault = self.faults.get(unit_id)
        return fault.seconds if fault is not None and fault.kind is FaultKind.DELAY else 0.0

    def handle_request(self, unit_id: int, pdu: bytes) -> bytes | None:
        """The response PDU to ``pdu`` for ``unit_id``, or None for no answer."""
        self.request_count += 1
        self.requests_by_unit[unit_id] += 1
        if not pdu:
            self.dropped_count += 1
            return None
        response = self._respond(unit_id, pdu)
        if response is not None and response[0] & 0x80:
            self.exception_count += 1
            self.exceptions_by_unit[unit_id] += 1
        return response

    def _respond(self, unit_id: int, pdu: bytes) -> bytes | None:
        fault = self.faults.get(unit_id)
        if fault is not None and fault.kind is FaultKind.SILENT:
            return None
        if fault is not None and fault.kind is FaultKind.EXCEPTION:
            return exception_response(pdu[0], fault.code)
        meter = self.meters.get(unit_id)
        if meter is None:
            if self.unknown_unit == "gateway_error":
                return exception_response(pdu[0], ExceptionCode.GATEWAY_TARGET_FAILED_TO_RESPOND)
            return None
        return handle_pdu(meter, pdu)

    def note_dropped(self) -> None:
        """Count a frame the transport could not hand over (bad framing)."""
        self.dropped_count += 1


class _Connection(asyncio.Protocol):
    """One client connection: MBAP in, handler, MBAP out (in request order)."""

    def __init__(self, simulator: ModbusTcpSimulator) -> None:
        self._simulator = simulator
        self._loop = asyncio.get_running_loop()
        self._decoder = MbapDecoder()
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        # Answers wait here, in order, until due (a DELAY fault holds the queue back).
        self._outbox: collections.deque[tuple[float, bytes]] = collections.deque()
        self._send_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_activity = self._loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._peer = str(transport.get_extra_info("peername"))
        self._simulator._connections.add(self)
        self._arm_idle_timer()
        logger.debug("connection from %s", self._peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._simulator._connections.discard(self)
        for timer in (self._send_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._outbox.clear()
        self._transport = None
        logger.debug("connection from %s closed", self._peer)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        handler = self._simulator.handler
        self._decoder.feed(data)
        while True:
            try:
                event = self._decoder.next_event()
            except MbapFramingError as error:
                handler.note_dropped()
                logger.warning("closing connection from %s: %s", self._peer, error)
                self.abort()
                return
            if event is NEED_DATA:
                break
            if isinstance(event, Discarded):
                handler.note_dropped()
                logger.debug("discarded a frame from %s: %s", self._peer, event.reason)
                continue
            response = handler.handle_request(event.unit_id, event.pdu)
            logger.debug(
                "unit %d tid %d: %s -> %s",
                event.unit_id,
                event.transaction_id,
                event.pdu.hex(" "),
                "no answer" if response is None else response.hex(" "),
            )
            if response is not None:
                adu = encode_adu(event.transaction_id, event.unit_id, response)
                self._send(adu, handler.delay_for(event.unit_id))
        if len(self._outbox) > self._simulator.max_queued_answers:
            logger.warning("closing connection from %s: too many answers queued", self._peer)
            self.abort()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection at once (queued answers are lost)."""
        if self._transport is not None:
            self._transport.abort()

    def _send(self, adu: bytes, delay: float) -> None:
        if not self._outbox and delay <= 0:
            self._write(adu)
            return
        due = self._loop.time() + delay
        if self._outbox:
            due = max(due, self._outbox[-1][0])
        self._outbox.append((due, adu))
        self._schedule()

    def _schedule(self) -> None:
        if self._send_timer is None and self._outbox:
            self._send_timer = self._loop.call_at(self._outbox[0][0], self._send_due)

    def _send_due(self) -> None:
        self._send_timer = None
        now = self._loop.time()
        while self._outbox and self._outbox[0][0] <= now:
            self._write(self._outbox.popleft()[1])
        self._schedule()

    def _write(self, adu: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(adu)

    def _arm_idle_timer(self) -> None:
        timeout = self._simulator.idle_timeout
        deadline = self._last_activity + timeout
        self._idle_timer = self._loop.call_at(deadline, self._check_idle)

    def _check_idle(self) -> None:
        if self._loop.time() - self._last_activity >= self._simulator.idle_timeout:
            logger.info("closing idle connection from %s", self._peer)
            if self._transport is not None:
                self._transport.close()
            return
        self._arm_idle_timer()


class ModbusTcpSimulator(Service):
    """Modbus TCP server for simulated meters; ``async with`` it to listen.

    ``port=0`` binds a free port (read it from :attr:`port` once started).
    Connections idle for ``idle_timeout`` seconds are closed, like real gateways do.
    """

    def __init__(
        self,
        meters: Mapping[int, Meter],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unknown_unit: UnknownUnit = "silent",
        idle_timeout: float = 300.0,
        start_timeout: float = 5.0,
    ) -> None:
        """Serve ``meters`` by unit id; nothing listens until the context is entered."""
        self.handler = RequestHandler(meters, unknown_unit=unknown_unit)
        self.host = host
        self._requested_port = port
        self.idle_timeout = idle_timeout
        self.max_queued_answers = 1000
        self._start_timeout = start_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._bound: tuple[str, int] | None = None

    # -- state and controls ---------------------------------------------------------------

    @property
    def meters(self) -> dict[int, Meter]:
        """The served meters by unit id."""
        return self.handler.meters

    @property
    def port(self) -> int:
        """The bound port (only once started)."""
        if self._bound is None:
            raise RuntimeError("the simulator is not listening")
        return self._bound[1]

    @property
    def bound_host(self) -> str:
        """The bound address (only once started)."""
        if self._bound is None:
            raise RuntimeError("the simulator is not listening")
        return self._bound[0]

    @property
    def request_count(self) -> int:
        """Requests received for any unit, answered or not."""
        return self.handler.request_count

    @property
    def requests_by_unit(self) -> collections.Counter[int]:
        """Requests received, per unit id."""
        return self.handler.requests_by_unit

    @property
    def exception_count(self) -> int:
        """Exception responses sent, for any unit (injected faults included)."""
        return self.handler.exception_count

    @property
    def exceptions_by_unit(self) -> collections.Counter[int]:
        """Exception responses sent, per unit id."""
        return self.handler.exceptions_by_unit

    @property
    def dropped_count(self) -> int:
        """Frames dropped: empty PDU, protocol id not 0, broken framing."""
        return self.handler.dropped_count

    @property
    def connection_count(self) -> int:
        """Open client connections."""
        return len(self._connections)

    def set_fault(self, unit_id: int, fault: Fault | None) -> None:
        """Inject a fault into one unit (None clears it); applies to the next request."""
        self.handler.set_fault(unit_id, fault)

    def handle_request(self, unit_id: int, pdu: bytes) -> bytes | None:
        """Answer a PDU without the network, counting it like a received one."""
        return self.handler.handle_request(unit_id, pdu)

    def drop_connections(self) -> None:
        """Close every open client connection at once, as a network drop would."""
        for connection in list(self._connections):
            connection.abort()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen."""
        if self._server is not None:
            raise RuntimeError("already started")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._start_timeout):
            self._server = await loop.create_server(
                lambda: _Connection(self), self.host, self._requested_port
            )
        sockname = self._server.sockets[0].getsockname()
        self._bound = (str(sockname[0]), int(sockname[1]))
        logger.info("listening on %s:%d", *self._bound)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self.drop_connections()
        async with asyncio.timeout(self._start_timeout):
            await server.wait_closed()
        self._bound = None
