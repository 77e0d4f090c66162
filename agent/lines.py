"""Serial line owners: one per ``[[serial]]`` line, shared by its devices.

A :class:`LineOwner` implements :class:`citygate.drivers.api.SerialLine`:

* one transaction on the wire at a time; turns are given in FIFO order
  (``asyncio.Lock`` wakes waiters first come, first served);
* before every request the line stays silent for its inter-frame gap
  (:attr:`~citygate.drivers.api.SerialLineConfig.silent_interval`) after the last byte
  sent or received, and bytes found waiting (late replies, noise) are discarded
  and counted;
* an exchange that got no answer ends its turn, so a silent device holds the
  line for at most one timeout before every waiting device had its turn;
* the wait for silence is bounded (the wire time of the longest frame); a line
  that stays busy request after request (a babbling device) is flagged ``noisy`` in
  its figures, logged once, and its requests go out after a few silent
  intervals at most, so healthy devices keep their interval;
* a device whose turns end in a garbled reply (:class:`~citygate.drivers.api.DecodeError`)
  :data:`GARBLED_LIMIT` times in a row has its turns skipped (a
  :class:`~citygate.drivers.api.TransportError` without touching the wire) for a
  backoff that doubles up to :data:`SKIP_MAX_S`; the turn after it is a retry;
  one log line when it starts, one when the device answers cleanly again;
* the port is opened on the first turn; when it fails (the adapter vanished)
  every turn raises :class:`~citygate.drivers.api.TransportError` until the port path is
  back, then it is reopened (one log line when lost, one when back);
* wire time is accounted per device and per line: ``utilisation`` (busy
  fraction over the last minute) and ``demand`` (the wire time the devices'
  polls need per second at their intervals; above 1 the line cannot fit them,
  logged once).

The port is pyserial's (non-blocking) read through the event loop's reader;
every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import select
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import serial

from citygate.drivers.api import (
    CountsDiscarded,
    DecodeError,
    ReplyFramer,
    SerialExchange,
    SerialLineConfig,
    TransportError,
)

__all__ = [
    "GARBLED_LIMIT",
    "SKIP_MAX_S",
    "SKIP_START_S",
    "UTILISATION_WINDOW_S",
    "DeviceLineStats",
    "LineOwner",
    "LineSet",
    "Port",
    "SerialPort",
    "line_protocol_conflicts",
]

log = logging.getLogger(__name__)

UTILISATION_WINDOW_S: Final = 60.0
"""The window ``utilisation`` is measured over."""
REOPEN_AFTER_S: Final = 1.0
"""Least time between two attempts to open a port that failed."""
_DEMAND_SMOOTHING: Final = 0.3
_DEMAND_OVER: Final = 1.0
_DEMAND_FITS_AGAIN: Final = 0.9
_WRITE_TIMEOUT_MIN_S: Final = 1.0
_LONGEST_FRAME: Final = 261
"""Characters of the longest frame on a line (M-Bus long frame; Modbus RTU: 256)."""
_NOISY_AFTER: Final = 1
"""Requests in a row that found the line busy for longer than any frame lasts
before it is flagged noisy (one is proof enough)."""
_QUIET_AGAIN_AFTER: Final = 3
"""Requests in a row that found the line silent before the flag goes again."""
_NOISY_WAIT_INTERVALS: Final = 4
"""Silent intervals a turn waits for silence on a noisy line."""
_KEPT_RECEIVED: Final = 4 * _LONGEST_FRAME
"""Most bytes of one exchange kept in :attr:`SerialExchange.received` (the framer sees all)."""
GARBLED_LIMIT: Final = 3
"""Garbled replies in a row after which a device's turns are skipped."""
SKIP_START_S: Final = 1.0
"""The first skip of a garbling device; each retry that garbles again doubles it."""
SKIP_MAX_S: Final = 300.0
"""The longest skip of a garbling device between two retries."""

Clock = Callable[[], float]


class Port(Protocol):
    """What a line owner needs of an open port (a test may give its own)."""

    fd: int
    """A non-blocking file descriptor, read through the event loop."""

    def write(self, data: bytes | memoryview) -> int:
        """Write what the port takes now; return the bytes written."""
        ...

    def close(self) -> None:
        """Close the port (never raises)."""
        ...


class SerialPort:
    """A pyserial port in non-blocking mode (a :class:`Port`)."""

    def __init__(self, config: SerialLineConfig) -> None:
        try:
            self._serial = serial.Serial(
                port=config.port,
                baudrate=config.baudrate,
                bytesize=config.bytesize,
                parity=config.parity,
                stopbits=config.stopbits,
                timeout=0,
                write_timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(_open_error(config, exc)) from None
        self.fd = self._serial.fileno()

    def write(self, data: bytes | memoryview) -> int:
        return os.write(self.fd, data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._serial.close()


def _poll(fd: int) -> int:
    """The poll() events of ``fd`` now (POLLIN when bytes wait), without waiting."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    events = poller.poll(0)
    return events[0][1] if events else 0


def _open_error(config: SerialLineConfig, exc: BaseException) -> str:
    errno_value = getattr(exc, "errno", None)
    if errno_value == errno.ENOENT or not os.path.exists(config.port):
        reason = "no such port (adapter unplugged?)"
    elif errno_value == errno.EACCES:
        reason = "permission denied (is the agent in the dialout group?)"
    elif errno_value == errno.EINVAL:
        reason = "the port refuses these settings (baudrate, parity, stop bits)"
    else:
        reason = str(exc).strip() or type(exc).__name__
    return f"serial {config.id}: cannot open {config.port}: {reason}"


@dataclass(slots=True)
class DeviceLineStats:
    """One device's figures on its line (counted since start)."""

    transactions: int = 0
    timeouts: int = 0
    truncated: int = 0
    stale_bytes: int = 0
    busy_s: float = 0.0
    problems: collections.Counter[str] = field(default_factory=collections.Counter)
    interval: float | None = None
    turn_busy_s: float | None = None  # smoothed wire time of one turn (one poll)
    last_turn_at: float | None = None
    last_turn_failed: bool = False
    discarded_bytes: int = 0  # dropped by the framers as framing nothing
    garbled_in_row: int = 0  # turns ended by a garbled reply, in a row
    skip_until: float | None = None  # turns before this time are skipped
    skip_s: float = 0.0  # the current skip (backoff)
    skipped_turns: int = 0

    def to_json(self) -> dict[str, Any]:
        """The figures as a JSON object."""
        data: dict[str, Any] = {
            "transactions": self.transactions,
            "timeouts": self.timeouts,
            "truncated": self.truncated,
            "stale_bytes": self.stale_bytes,
            "discarded_bytes": self.discarded_bytes,
            "skipped_turns": self.skipped_turns,
            "skipping": self.skip_until is not None,
            "busy_s": round(self.busy_s, 3),
        }
        data.update(sorted(self.problems.items()))
        return data


class LineOwner:
    """The owner of one serial line (see the module docstring).

    ``open_port`` opens the port (default :class:`SerialPort`); ``clock`` is the
    monotonic clock of the accounting (the event loop's time by default);
    ``reopen_after`` the least time between two attempts to open a failed port.
    """

    def __init__(
        self,
        config: SerialLineConfig,
        *,
        protocol: str | None = None,
        open_port: Callable[[SerialLineConfig], Port] = SerialPort,
        clock: Clock | None = None,
        reopen_after: float = REOPEN_AFTER_S,
    ) -> None:
        self._config = config
        self._reopen_after = reopen_after
        self.protocol = protocol
        self._open_port = open_port
        self._clock = clock
        self._lock = asyncio.Lock()
        self._port: Port | None = None
        self._received = bytearray()
        self._data_event = asyncio.Event()
        self._lost: str | None = None
        self._down_since: str | None = None  # the error logged when the port went away
        self._next_open = 0.0
        self._quiet_from = 0.0  # when the line falls silent after the last byte
        self._busy: collections.deque[tuple[float, float]] = collections.deque()
        self._busy_in_window = 0.0
        self._started = self._now()
        self.devices: dict[str, DeviceLineStats] = {}
        self.reopens = 0
        self.busy_s = 0.0
        self._overloaded = False
        self.noisy = False
        """The line did not fall silent before the last request (a device babbles)."""
        self.noisy_turns = 0
        """Requests sent without the line having fallen silent first."""
        self._busy_in_row = 0
        self._quiet_in_row = 0

    # ------------------------------------------------------------------ SerialLine

    @property
    def config(self) -> SerialLineConfig:
        """The line's settings."""
        return self._config

    def attach(self, device_id: str, interval: float) -> None:
        """Declare a device and its poll interval (for ``demand``)."""
        self._stats(device_id).interval = interval

    def detach(self, device_id: str) -> None:
        """Forget a device that left the line, and its figures (no-op if unknown)."""
        self.devices.pop(device_id, None)

    @contextlib.asynccontextmanager
    async def turn(self, device_id: str) -> AsyncIterator[_Wire]:
        """Exclusive use of the wire, FIFO among the line's devices.

        Raises :class:`TransportError` at once, without waiting for the line, while
        the device's turns are skipped (it garbled its replies, see the module doc).
        """
        stats = self._stats(device_id)
        self._check_skip(device_id, stats)
        wire = _Wire(self, device_id, stats)
        await self._lock.acquire()
        wire.holding = True
        clean = garbled = False
        try:
            self._ensure_open()
            yield wire
            clean = True
        except DecodeError:
            garbled = True
            raise
        finally:
            if wire.holding:
                self._lock.release()
                wire.holding = False
            self._end_turn(stats, wire)
            if wire.exchanges:
                self._judge(device_id, stats, clean=clean, garbled=garbled)

    # ------------------------------------------------------------------ figures

    def utilisation(self) -> float:
        """Busy fraction of the line over the last minute (0..1)."""
        now = self._now()
        self._prune(now)
        span = min(UTILISATION_WINDOW_S, now - self._started)
        if span <= 0:
            return 0.0
        return min(1.0, self._busy_in_window / span)

    def demand(self) -> float:
        """Wire seconds per second the devices' polls need at their intervals."""
        total = 0.0
        now = self._now()
        for stats in self.devices.values():
            if stats.turn_busy_s is None or not stats.interval:
                continue
            period = stats.interval
            if stats.last_turn_failed and stats.last_turn_at is not None:
                # A device in backoff is polled less often than its interval.
                period = max(period, now - stats.last_turn_at)
            total += stats.turn_busy_s / period
        return total

    def metrics(self) -> dict[str, Any]:
        """This line's figures for the metrics document."""
        return {
            "utilisation": round(self.utilisation(), 3),
            "demand": round(self.demand(), 3),
            "reopens": self.reopens,
            "noisy": self.noisy,
            "noisy_turns": self.noisy_turns,
            "devices": {d: s.to_json() for d, s in sorted(self.devices.items())},
        }

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the port (the next turn opens it again)."""
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(port.fd)
            port.close()

    # ------------------------------------------------------------------ internals

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def _stats(self, device_id: str) -> DeviceLineStats:
        stats = self.devices.get(device_id)
        if stats is None:
            stats = self.devices[device_id] = DeviceLineStats()
        return stats

    def _ensure_open(self) -> None:
        if self._port is not None and self._lost is None:
            return
        if self._port is not None:
            self.close()
        now = self._now()
        if self._down_since is not None and now < self._next_open:
            raise TransportError(self._down_since)
        self._next_open = now + self._reopen_after
        try:
            port = self._open_port(self._config)
        except TransportError as exc:
            self._went_down(str(exc))
            raise
        loop = asyncio.get_running_loop()
        self._port = port
        self._lost = None
        self._received.clear()
        loop.add_reader(port.fd, self._readable)
        self._quiet_from = now + self._config.silent_interval
        if self._down_since is not None:
            self.reopens += 1
            log.info("serial %s: %s is back; reopened", self._config.id, self._config.port)
            self._down_since = None

    def _went_down(self, error: str) -> None:
        if self._down_since is None:
            log.warning("%s", error)
        self._down_since = error

    def _readable(self) -> None:
        port = self._port
        if port is None:
            return
        try:
            data = os.read(port.fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._port_lost(exc.strerror or str(exc))
            return
        if not data:
            # A tty in non-blocking raw mode reads b"" when nothing is waiting (the
            # bytes were drained already): only a hangup flagged by poll() is one.
            if _poll(port.fd) & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self._port_lost("the port hung up")
            return
        self._received += data
        self._quiet_from = self._now() + self._config.silent_interval
        self._data_event.set()

    def _drain(self) -> None:
        """Read what the port holds now, if anything (the loop may not have yet)."""
        port = self._port
        if port is not None and self._lost is None and _poll(port.fd):
            self._readable()

    def _port_lost(self, reason: str) -> None:
        self._lost = reason
        port = self._port
        if port is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(port.fd)
        self._next_open = self._now() + self._reopen_after
        self._went_down(f"serial {self._config.id}: {self._config.port} lost: {reason}")
        self._data_event.set()

    def _check_port(self) -> Port:
        if self._lost is not None or self._port is None:
            raise TransportError(
                f"serial {self._config.id}: {self._config.port} lost: {self._lost or 'closed'}"
            )
        return self._port

    async def _write(self, data: bytes) -> None:
        port = self._check_port()
        view = memoryview(data)
        written = 0
        deadline = max(_WRITE_TIMEOUT_MIN_S, 4 * len(data) * self._config.character_time)
        async with asyncio.timeout(deadline):
            while written < len(view):
                try:
                    written += port.write(view[written:])
                except BlockingIOError:
                    await asyncio.sleep(self._config.character_time)
                except OSError as exc:
                    self._port_lost(exc.strerror or str(exc))
                    raise TransportError(
                        f"serial {self._config.id}: {self._config.port} lost: {exc}"
                    ) from None

    def _quiet_limit(self) -> float:
        """Longest wait for silence before a request: the wire time of the longest
        frame (a late reply ends within it), a few silent intervals on a noisy line."""
        config = self._config
        if self.noisy:
            return _NOISY_WAIT_INTERVALS * config.silent_interval
        return min(config.timeout, _LONGEST_FRAME * config.character_time + config.silent_interval)

    async def _quiet(self) -> int:
        """Wait for the silent interval; discard and return the bytes waiting.

        A line that does not fall silent within :meth:`_quiet_limit` gets the
        request anyway; after a few such turns in a row it is flagged noisy.
        """
        give_up = self._now() + self._quiet_limit()
        stale = 0
        while True:
            # Bytes already in the port count even if the loop has not read them yet
            # (a stalled loop would otherwise take a busy line for a silent one).
            self._drain()
            stale += len(self._received)
            self._received.clear()  # bounded, however long the line babbles
            now = self._now()
            wait = min(self._quiet_from, give_up) - now
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        self._data_event.clear()
        self._note_silence(silent=self._quiet_from <= self._now())
        return stale

    def _note_silence(self, *, silent: bool) -> None:
        config = self._config
        if silent:
            self._busy_in_row = 0
            self._quiet_in_row += 1
            if self.noisy and self._quiet_in_row >= _QUIET_AGAIN_AFTER:
                self.noisy = False
                log.info("serial %s: the line falls silent between frames again", config.id)
            return
        self.noisy_turns += 1
        self._quiet_in_row = 0
        self._busy_in_row += 1
        if not self.noisy and self._busy_in_row >= _NOISY_AFTER:
            self.noisy = True
            log.warning(
                "serial %s: the line never falls silent (a device babbling?); requests go"
                " out after %.0f ms of waiting for silence at most",
                config.id,
                self._quiet_limit() * 1000,
            )

    async def _exchange(
        self,
        stats: DeviceLineStats,
        request: bytes,
        framer: ReplyFramer,
        timeout: float,  # noqa: ASYNC109 - the reply timeout of this request
    ) -> SerialExchange:
        self._check_port()
        stale = await self._quiet()
        started = self._now()
        await self._write(request)
        sent_until = started + len(request) * self._config.character_time
        self._quiet_from = max(self._quiet_from, sent_until + self._config.silent_interval)
        # The timeout runs from the start of the request, so a silent device holds
        # the line for at most one timeout per attempt.
        deadline = started + max(timeout, sent_until - started)
        received = bytearray()
        complete = False
        while True:
            if self._received:
                chunk = bytes(self._received)
                self._received.clear()
                if len(received) < _KEPT_RECEIVED:
                    received += chunk[: _KEPT_RECEIVED - len(received)]
                if framer.feed(chunk):
                    complete = True
                    break
            self._check_port()
            remaining = deadline - self._now()
            if remaining <= 0:
                break
            self._data_event.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._data_event.wait()
            except TimeoutError:
                continue
        ended = self._now()
        # After a reply the line must stay silent before the next frame; after
        # silence it already has been.
        after = self._config.silent_interval if received else 0.0
        self._account(stats, ended - started + after, ended)
        stats.transactions += 1
        stats.stale_bytes += stale
        if isinstance(framer, CountsDiscarded):
            stats.discarded_bytes += framer.discarded_bytes
        if not complete:
            if received:
                stats.truncated += 1
            else:
                stats.timeouts += 1
        return SerialExchange(bytes(received), complete, ended - started, stale)

    async def _send(self, stats: DeviceLineStats, request: bytes) -> None:
        self._check_port()
        stats.stale_bytes += await self._quiet()
        started = self._now()
        await self._write(request)
        busy = len(request) * self._config.character_time
        self._quiet_from = started + busy + self._config.silent_interval
        self._account(stats, busy + self._config.silent_interval, started + busy)

    def _account(self, stats: DeviceLineStats, busy: float, ended: float) -> None:
        stats.busy_s += busy
        self.busy_s += busy
        self._busy.append((ended, busy))
        self._busy_in_window += busy
        self._prune(ended)

    def _prune(self, now: float) -> None:
        while self._busy and self._busy[0][0] < now - UTILISATION_WINDOW_S:
            _, busy = self._busy.popleft()
            self._busy_in_window -= busy
        if not self._busy:
            self._busy_in_window = 0.0

    async def _requeue(self, wire: _Wire) -> None:
        """Give the line to the devices waiting, then take it back (FIFO)."""
        if wire.holding:
            self._lock.release()
            wire.holding = False
        await self._lock.acquire()
        wire.holding = True
        self._ensure_open()

    def _check_skip(self, device_id: str, stats: DeviceLineStats) -> None:
        if stats.skip_until is None or self._now() >= stats.skip_until:
            return  # not skipped, or the retry
        stats.skipped_turns += 1
        raise TransportError(
            f"serial {self._config.id}: {device_id} garbled {stats.garbled_in_row} replies"
            f" in a row; its turns are skipped (retried within {stats.skip_s:g} s)"
        )

    def _judge(self, device_id: str, stats: DeviceLineStats, *, clean: bool, garbled: bool) -> None:
        """Count a turn that ended in a garbled reply; skip the device's turns after
        :data:`GARBLED_LIMIT` in a row, with backoff, until a turn ends cleanly."""
        if garbled:
            stats.garbled_in_row += 1
            if stats.garbled_in_row < GARBLED_LIMIT:
                return
            first = stats.skip_until is None
            stats.skip_s = SKIP_START_S if first else min(SKIP_MAX_S, 2 * stats.skip_s)
            stats.skip_until = self._now() + stats.skip_s
            if first:
                log.warning(
                    "serial %s: %s: %d garbled replies in a row; its turns are skipped and"
                    " retried with backoff (up to %g s) so the line's other devices keep theirs",
                    self._config.id,
                    device_id,
                    stats.garbled_in_row,
                    SKIP_MAX_S,
                )
            else:
                log.debug(
                    "serial %s: %s still garbles; next retry in %g s",
                    self._config.id,
                    device_id,
                    stats.skip_s,
                )
            return
        if not clean:
            return  # no answer, a refused request: no verdict on the wire's state
        stats.garbled_in_row = 0
        if stats.skip_until is not None:
            stats.skip_until = None
            stats.skip_s = 0.0
            log.info(
                "serial %s: %s answers cleanly again; its turns resume", self._config.id, device_id
            )

    def _end_turn(self, stats: DeviceLineStats, wire: _Wire) -> None:
        if wire.busy_s <= 0:
            return
        previous = stats.turn_busy_s
        stats.turn_busy_s = (
            wire.busy_s
            if previous is None
            else previous + _DEMAND_SMOOTHING * (wire.busy_s - previous)
        )
        stats.last_turn_at = self._now()
        stats.last_turn_failed = wire.silent
        demand = self.demand()
        if not self._overloaded and demand > _DEMAND_OVER:
            self._overloaded = True
            log.warning(
                "serial %s: its devices' polls need %.0f%% of the line's time at their"
                " intervals (%s); polls will be skipped: lengthen intervals, raise the"
                " baudrate or split the line",
                self._config.id,
                demand * 100,
                ", ".join(
                    f"{d} {s.turn_busy_s * 1000:.0f} ms every {s.interval:g} s"
                    for d, s in sorted(self.devices.items())
                    if s.turn_busy_s is not None and s.interval
                ),
            )
        elif self._overloaded and demand < _DEMAND_FITS_AGAIN:
            self._overloaded = False
            log.info("serial %s: its devices' polls fit the line again", self._config.id)


class _Wire:
    """One turn on a :class:`LineOwner`'s wire (a :class:`citygate.drivers.api.SerialWire`)."""

    def __init__(self, owner: LineOwner, device_id: str, stats: DeviceLineStats) -> None:
        self._owner = owner
        self.device_id = device_id
        self._stats = stats
        self.holding = False
        self.silent = False  # the last exchange timed out with nothing received
        self.busy_s = 0.0
        self.exchanges = 0

    async def exchange(
        self,
        request: bytes,
        framer: ReplyFramer,
        timeout: float,  # noqa: ASYNC109 - the reply timeout of this request
    ) -> SerialExchange:
        """See :meth:`citygate.drivers.api.SerialWire.exchange`."""
        if self.silent or not self.holding:
            await self._owner._requeue(self)  # noqa: SLF001 - the owner's own turn
        before = self._stats.busy_s
        self.exchanges += 1
        result = await self._owner._exchange(self._stats, request, framer, timeout)  # noqa: SLF001 - the owner's own turn
        self.busy_s += self._stats.busy_s - before
        self.silent = not result.complete and not result.received
        return result

    async def send(self, request: bytes) -> None:
        """See :meth:`citygate.drivers.api.SerialWire.send`."""
        if self.silent or not self.holding:
            await self._owner._requeue(self)  # noqa: SLF001 - the owner's own turn
        before = self._stats.busy_s
        await self._owner._send(self._stats, request)  # noqa: SLF001 - the owner's own turn
        self.busy_s += self._stats.busy_s - before

    def note(self, problem: str) -> None:
        """Count a bad reply of this device by kind."""
        self._stats.problems[problem] += 1


class LineSet:
    """The owners of every line of a config, for the agent."""

    def __init__(
        self,
        lines: Mapping[str, SerialLineConfig],
        users: Iterable[tuple[str, str, str, float]] = (),
        *,
        open_port: Callable[[SerialLineConfig], Port] = SerialPort,
    ) -> None:
        """``users``: ``(device id, driver, line id, interval)`` of each device on a line.

        A line carries the protocol of its first device; a device of another driver
        on it is logged as an error and gets no owner (the config loader should have
        refused it: see :func:`line_protocol_conflicts`).
        """
        used = list(users)
        conflicts = set(line_protocol_conflicts((d, drv, line) for d, drv, line, _ in used))
        for device_id, driver, line_id in sorted(conflicts):
            log.error(
                "%s: serial %s already carries another protocol; %s devices cannot share it",
                device_id,
                line_id,
                driver,
            )
        used = [u for u in used if (u[0], u[1], u[2]) not in conflicts]
        protocols: dict[str, str] = {}
        for _, driver, line, _ in used:
            protocols.setdefault(line, driver)
        self.owners: dict[str, LineOwner] = {
            line_id: LineOwner(config, protocol=protocols.get(line_id), open_port=open_port)
            for line_id, config in lines.items()
            if line_id in protocols
        }
        for device_id, _, line_id, interval in used:
            owner = self.owners.get(line_id)
            if owner is not None:
                owner.attach(device_id, interval)

    def metrics(self) -> dict[str, Any]:
        """``{"line_utilisation": {line: fraction}, "lines": {line: figures}}``."""
        return {
            "line_utilisation": {
                line: round(owner.utilisation(), 3) for line, owner in sorted(self.owners.items())
            },
            "lines": {line: owner.metrics() for line, owner in sorted(self.owners.items())},
        }

    def close(self) -> None:
        """Close every port."""
        for owner in self.owners.values():
            owner.close()


def line_protocol_conflicts(users: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Devices that put a second protocol on a line: ``(device, driver, line)`` in
    ``users`` whose line was first used by another driver (a line carries one)."""
    first: dict[str, str] = {}
    conflicts: list[tuple[str, str, str]] = []
    for device_id, driver, line_id in users:
        expected = first.setdefault(line_id, driver)
        if driver != expected:
            conflicts.append((device_id, driver, line_id))
    return conflicts
