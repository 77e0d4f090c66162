"""One supervisor per device: open, poll on schedule, back off, report status.

A device's errors never leave its supervisor: a transport failure closes the
driver and reopens it later, a device or decode error is counted and the next
poll goes ahead on schedule. Only cancellation ends a supervisor.

Remote commands (agent/commands.py) ask a supervisor for a poll now or a write
(:meth:`DeviceSupervisor.request_read`, :meth:`DeviceSupervisor.request_write`): the
supervisor's own loop carries them out between its scheduled polls, so a device never
has two operations at once and, on a shared serial line, each takes its turn like any
poll. A read's sample also goes the normal way (buffer, ``data``); it does not move the
polling grid. A push device answers a read with its latest sample.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from citygate.clock import wall_time
from citygate.drivers.api import (
    DecodeError,
    DeviceError,
    DriverError,
    Measurement,
    PollDriver,
    PushDriver,
    ReportsStatus,
    SilentDevice,
    TransportError,
    WritableDriver,
    WriteRefused,
)
from citygate.model import Reading, Sample
from citygate.normalise import Normaliser
from citygate.status import Counters, StatusBoard

log = logging.getLogger(__name__)

SubmitSample = Callable[[Sample], Awaitable[None]]


class OnSkipped(Protocol):
    """Told of skipped polls (:meth:`citygate.looplag.SkipEpisodes.skipped`)."""

    def __call__(
        self, device_id: str, polls: int, late: float, *, overloaded: bool = False
    ) -> None: ...


OPEN_TIMEOUT_S = 10.0
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 300.0
BACKOFF_AFTER_FAILURES = 3
POLL_GUARD_MIN_S = 60.0
MAX_PENDING_REQUESTS = 8  # per device: commands waiting for the device's turn


class NoData(Exception):
    """A push device has sent no sample yet."""


class Busy(Exception):
    """Too many commands already wait for this device."""


@dataclass(frozen=True, slots=True)
class Readout:
    """A sample's readings, answered to a read command."""

    readings: tuple[Reading, ...]
    time: float


@dataclass(frozen=True, slots=True)
class _Request:
    """A read (``name`` None) or a write, and the future its result goes to."""

    future: asyncio.Future[Any]
    name: str | None = None
    value: float | int | bool = 0


def describe(exc: BaseException) -> str:
    """A one-line, operator-readable description of an error."""
    text = str(exc).strip()
    if isinstance(exc, DriverError) and text:
        return text
    if isinstance(exc, TimeoutError):
        return "timed out" + (f": {text}" if text else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, start: float = BACKOFF_START_S, cap: float = BACKOFF_MAX_S) -> None:
        self.start = start
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.start * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class DeviceSupervisor:
    """Runs one device until cancelled.

    Polls fall on a fixed grid, ``interval`` apart from the first one: a late
    poll never shifts the later ones, and a deadline already missed is skipped
    and counted (``polls_skipped``), never queued. After
    :data:`BACKOFF_AFTER_FAILURES` consecutive failures that cost transport time
    (no answer, a garbled answer) the device is tried less often: capped
    exponential backoff up to :data:`BACKOFF_MAX_S`, each try a single poll,
    until it answers. ``clock`` and ``sleep`` are injectable for tests; ``wall`` stamps
    samples (the agent's :class:`~citygate.clock.Timebase`); ``on_skipped`` hears of every
    skip (the agent logs them once per episode, :class:`~citygate.looplag.SkipEpisodes`).
    """

    def __init__(
        self,
        device_id: str,
        interval: float,
        make_driver: Callable[[], PollDriver | PushDriver],
        submit: SubmitSample,
        board: StatusBoard,
        counters: Counters,
        clock_synced: Callable[[], bool],
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        overloaded: Callable[[], bool] = lambda: False,
        wall: Callable[[], float] = wall_time,
        on_skipped: OnSkipped | None = None,
    ) -> None:
        self.device_id = device_id
        self.interval = interval
        self._make_driver = make_driver
        self._submit = submit
        self._board = board
        self._counters = counters
        self._clock_synced = clock_synced
        self._clock = clock
        self._sleep = sleep
        self._overloaded = overloaded
        self._wall = wall
        self._on_skipped = on_skipped
        self._normalise = Normaliser(device_id)
        self._failures = 0  # consecutive
        self._backoff = Backoff(start=max(BACKOFF_START_S, min(interval, 30.0)))
        self._deadline: float | None = None  # the next poll's time on the grid
        self.poll_guard = max(POLL_GUARD_MIN_S, 3 * interval)
        """Longest a poll may take (drivers time their own I/O; this is the last resort)."""
        self._requests: list[_Request] = []
        self._wake = asyncio.Event()
        self._push = False  # the open driver is a push driver
        self._polling = False  # a poll driver is open: commands can have its turn
        self._latest: Readout | None = None

    # ------------------------------------------------------------ commands

    def request_read(self) -> asyncio.Future[Readout]:
        """A poll now, in the device's turn: the future gets its readings (or the poll's
        error); a push device's gets its latest sample at once, or :class:`NoData`."""
        future: asyncio.Future[Readout] = asyncio.get_running_loop().create_future()
        if self._push:
            if self._latest is None:
                future.set_exception(NoData(f"{self.device_id}: no sample yet"))
            else:
                future.set_result(self._latest)
            return future
        self._enqueue(_Request(future))
        return future

    def request_write(self, name: str, value: float | int | bool) -> asyncio.Future[Any]:
        """A write of ``value`` to ``name`` in the device's turn: the future gets the value
        read back, or the driver's error (``WriteRefused``, a driver error)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Request(future, name, value))
        return future

    def _enqueue(self, request: _Request) -> None:
        if not self._polling:
            status = self._board.devices.get(self.device_id)
            error = None if status is None else status.error
            request.future.set_exception(
                DeviceError(f"{self.device_id}: not connected" + (f" ({error})" if error else ""))
            )
            return
        self._requests = [r for r in self._requests if not r.future.done()]
        if len(self._requests) >= MAX_PENDING_REQUESTS:
            request.future.set_exception(Busy(f"{self.device_id}: too many commands waiting"))
            return
        self._requests.append(request)
        self._wake.set()

    def _fail_requests(self, exc: BaseException) -> None:
        requests, self._requests = self._requests, []
        for request in requests:
            if not request.future.done():
                request.future.set_exception(exc)

    async def _pause(self, wait: float) -> None:
        """Sleep ``wait`` seconds, or less when a command asks for the device."""
        if self._requests:
            return
        self._wake.clear()
        if self._sleep is asyncio.sleep:  # the agent's case: no two tasks per poll (~60 µs)
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass
            return
        sleeping = asyncio.ensure_future(self._sleep(wait))
        waking = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([sleeping, waking], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeping, waking):
                task.cancel()
            await asyncio.wait([sleeping, waking])

    async def _serve_requests(self, driver: PollDriver) -> None:
        """Carry out the commands waiting for this device, one after the other."""
        requests, self._requests = self._requests, []
        for request in requests:
            if request.future.done():
                continue  # its command gave up waiting
            if request.name is None:
                sample_time = self._wall()
                try:
                    async with asyncio.timeout(self.poll_guard):
                        measurements = await driver.poll()
                except TransportError as exc:
                    self._fail_requests(exc)
                    request.future.set_exception(exc)
                    raise
                except (DriverError, TimeoutError, OSError) as exc:
                    request.future.set_exception(exc)
                    self._fail(exc)
                else:
                    readings = await self._accept(measurements, sample_time)
                    if not request.future.done():
                        request.future.set_result(Readout(readings, sample_time))
                continue
            if not isinstance(driver, WritableDriver):
                request.future.set_exception(
                    WriteRefused("forbidden", f"{self.device_id}: its driver cannot write")
                )
                continue
            try:
                async with asyncio.timeout(self.poll_guard):
                    value = await driver.write(request.name, request.value)
            except TransportError as exc:
                self._fail_requests(exc)
                request.future.set_exception(exc)
                raise
            except Exception as exc:  # WriteRefused, DriverError, a timeout: the reply says
                if not request.future.done():
                    request.future.set_exception(exc)
            else:
                if not request.future.done():
                    request.future.set_result(value)

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    async def run(self) -> None:
        self._deadline = self._now()
        while True:
            try:
                driver = self._make_driver()
            except DriverError as exc:
                self._fail(exc)
                await self._wait_retry()
                continue
            try:
                async with asyncio.timeout(OPEN_TIMEOUT_S):
                    await driver.__aenter__()
            except (DriverError, TimeoutError, OSError) as exc:
                self._fail(exc)
                await self._wait_retry()
                continue
            try:
                if isinstance(driver, PollDriver):
                    self._polling = True
                    await self._poll_loop(driver)
                else:
                    self._push = True
                    await self._push_loop(driver)
            except (DriverError, TimeoutError, OSError) as exc:
                self._fail(exc)
            except Exception as exc:  # a driver bug: keep the traceback, keep running
                log.exception("%s: driver failed unexpectedly", self.device_id)
                self._fail(exc)
            finally:
                self._push = self._polling = False
                self._fail_requests(DeviceError(f"{self.device_id}: connection closed"))
                try:
                    async with asyncio.timeout(OPEN_TIMEOUT_S):
                        await driver.__aexit__(None, None, None)
                except Exception as exc:
                    log.debug("%s: error while closing: %s", self.device_id, describe(exc))
            await self._wait_retry()

    def _retry_delay(self) -> float:
        """Least time before the next try: none (the next deadline) until the
        failures call for backoff."""
        if self._failures < BACKOFF_AFTER_FAILURES:
            return 0.0
        return self._backoff.next_delay()

    async def _wait_retry(self) -> None:
        """Sleep until the first deadline of the grid at least the retry delay away."""
        now = self._now()
        earliest = now + self._retry_delay()
        if self._deadline is None:
            self._deadline = now
        if self._deadline <= now or self._deadline < earliest:
            steps = max(1, math.ceil((earliest - self._deadline) / self.interval))
            self._deadline += steps * self.interval
            if self._deadline <= now:
                self._deadline += self.interval
        await self._sleep(self._deadline - now)

    def _fail(self, exc: BaseException) -> None:
        self._fail_requests(exc)  # commands waiting for the device are told at once
        if isinstance(exc, SilentDevice):
            # Silence of a push device is a state, not a fault to back off from:
            # offline now, online again with its next advert.
            self._board.set_state(self.device_id, "offline", describe(exc))
            return
        self._failures += 1
        self._counters.poll_errors += 1
        self._board.failure(self.device_id, describe(exc), self._failures)

    async def _accept(
        self, measurements: Sequence[Measurement], sample_time: float
    ) -> tuple[Reading, ...]:
        readings = self._normalise(measurements)
        invalid = self._normalise.invalid_readings
        if invalid:
            self._counters.invalid_readings += invalid
            self._normalise.invalid_readings = 0
        self._failures = 0
        self._backoff.reset()
        self._board.success(self.device_id, sample_time)
        if not readings:
            return readings
        self._latest = Readout(readings, sample_time)
        self._counters.samples_read += 1
        self._counters.readings_read += len(readings)
        await self._submit(Sample(self.device_id, sample_time, readings, self._clock_synced()))
        return readings

    async def _poll_loop(self, driver: PollDriver) -> None:
        if self._deadline is None:
            self._deadline = self._now()
        while True:
            raise_if_cancelled()
            wait = self._deadline - self._now()
            if wait > 0:
                await self._pause(wait)
            if self._requests:
                await self._serve_requests(driver)
                if self._deadline > self._now():
                    continue  # woken early: the scheduled poll stays on its grid
            if self._overloaded():
                # The pipeline cannot take more: skip (and count) this poll rather
                # than let polls starve the publisher of the event loop.
                self._counters.polls_skipped += 1
                self._deadline += self.interval
                if self._on_skipped is not None:
                    self._on_skipped(self.device_id, 1, 0.0, overloaded=True)
                continue
            sample_time = self._wall()
            try:
                async with asyncio.timeout(self.poll_guard):
                    measurements = await driver.poll()
            except TransportError:
                raise
            except DecodeError as exc:
                # Garbled answers cost the transport time, like silence: back off.
                if self._failures + 1 >= BACKOFF_AFTER_FAILURES:
                    raise
                self._fail(exc)
            except DriverError as exc:
                self._fail(exc)
            else:
                await self._accept(measurements, sample_time)
            finally:
                if isinstance(driver, ReportsStatus):
                    self._board.set_extra(self.device_id, **driver.status_facts())
            self._deadline += self.interval
            now = self._now()
            if self._deadline < now:
                # Late: skip the missed deadlines rather than poll in a burst.
                missed = int((now - self._deadline) // self.interval) + 1
                self._counters.polls_skipped += missed
                if self._on_skipped is not None:
                    self._on_skipped(self.device_id, missed, now - self._deadline)
                self._deadline += missed * self.interval

    async def _push_loop(self, driver: PushDriver) -> None:
        queue: asyncio.Queue[tuple[Sequence[Measurement], float]] = asyncio.Queue(maxsize=1000)

        def emit(measurements: Sequence[Measurement]) -> None:
            try:
                queue.put_nowait((measurements, self._wall()))
            except asyncio.QueueFull:
                self._counters.overflow_samples += 1

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(driver.run(emit), name=f"{self.device_id}:driver")
                while True:
                    measurements, sample_time = await queue.get()
                    await self._accept(measurements, sample_time)
                    if isinstance(driver, ReportsStatus):
                        self._board.set_extra(self.device_id, **driver.status_facts())
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:  # also when the device went silent: its facts may say why
            if isinstance(driver, ReportsStatus):
                self._board.set_extra(self.device_id, **driver.status_facts())


def raise_if_cancelled() -> None:
    """Honour a cancellation a library swallowed.

    Python 3.11's ``asyncio.wait_for`` (used inside aiomqtt and other libraries) drops a cancel that
    arrives together with the response (gh-86296, fixed in 3.12); the task then
    stays "cancelling" while its loop goes on, and shutdown would wait forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error in ``group`` that is not a cancellation (the driver's own)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group
