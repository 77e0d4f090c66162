"""One supervisor per device: open, poll on schedule, back off, report status.

A device's errors never leave its supervisor: a transport failure closes the
driver and reopens it later, a device or decode error is counted and the next
poll goes ahead on schedule. Only cancellation ends a supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from agent.model import Sample
from agent.normalise import Normaliser
from agent.status import Counters, StatusBoard
from drivers.api import DriverError, Measurement, PollDriver, PushDriver, TransportError

log = logging.getLogger(__name__)

SubmitSample = Callable[[Sample], Awaitable[None]]

OPEN_TIMEOUT_S = 10.0
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 300.0
BACKOFF_AFTER_FAILURES = 3


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
    """Runs one device until cancelled."""

    def __init__(
        self,
        device_id: str,
        interval: float,
        make_driver: Callable[[], PollDriver | PushDriver],
        submit: SubmitSample,
        board: StatusBoard,
        counters: Counters,
        clock_synced: Callable[[], bool],
    ) -> None:
        self.device_id = device_id
        self.interval = interval
        self._make_driver = make_driver
        self._submit = submit
        self._board = board
        self._counters = counters
        self._clock_synced = clock_synced
        self._normalise = Normaliser(device_id)
        self._failures = 0  # consecutive
        self._backoff = Backoff(start=max(BACKOFF_START_S, min(interval, 30.0)))

    async def run(self) -> None:
        while True:
            try:
                driver = self._make_driver()
            except DriverError as exc:
                self._fail(exc)
                await asyncio.sleep(self._retry_delay())
                continue
            try:
                async with asyncio.timeout(OPEN_TIMEOUT_S):
                    await driver.__aenter__()
            except (DriverError, TimeoutError, OSError) as exc:
                self._fail(exc)
                await asyncio.sleep(self._retry_delay())
                continue
            try:
                if isinstance(driver, PollDriver):
                    await self._poll_loop(driver)
                else:
                    await self._push_loop(driver)
            except (DriverError, TimeoutError, OSError) as exc:
                self._fail(exc)
            except Exception as exc:  # a driver bug: keep the traceback, keep running
                log.exception("%s: driver failed unexpectedly", self.device_id)
                self._fail(exc)
            finally:
                try:
                    async with asyncio.timeout(OPEN_TIMEOUT_S):
                        await driver.__aexit__(None, None, None)
                except Exception as exc:
                    log.debug("%s: error while closing: %s", self.device_id, describe(exc))
            await asyncio.sleep(self._retry_delay())

    def _retry_delay(self) -> float:
        if self._failures < BACKOFF_AFTER_FAILURES:
            return self.interval
        return max(self.interval, self._backoff.next_delay())

    def _fail(self, exc: BaseException) -> None:
        self._failures += 1
        self._counters.poll_errors += 1
        self._board.failure(self.device_id, describe(exc), self._failures)

    async def _accept(self, measurements: Sequence[Measurement], sample_time: float) -> None:
        readings = self._normalise(measurements)
        invalid = self._normalise.invalid_readings
        if invalid:
            self._counters.invalid_readings += invalid
            self._normalise.invalid_readings = 0
        self._failures = 0
        self._backoff.reset()
        self._board.success(self.device_id, sample_time)
        if not readings:
            return
        self._counters.samples_read += 1
        self._counters.readings_read += len(readings)
        await self._submit(Sample(self.device_id, sample_time, readings, self._clock_synced()))

    async def _poll_loop(self, driver: PollDriver) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            sample_time = time.time()
            try:
                measurements = await driver.poll()
            except TransportError:
                raise
            except DriverError as exc:
                self._fail(exc)
            else:
                await self._accept(measurements, sample_time)
            deadline += self.interval
            now = loop.time()
            if deadline < now:
                # Late: skip the missed deadlines rather than poll in a burst.
                missed = int((now - deadline) // self.interval) + 1
                self._counters.polls_skipped += missed
                deadline += missed * self.interval
            await asyncio.sleep(deadline - now)

    async def _push_loop(self, driver: PushDriver) -> None:
        queue: asyncio.Queue[tuple[Sequence[Measurement], float]] = asyncio.Queue(maxsize=1000)

        def emit(measurements: Sequence[Measurement]) -> None:
            try:
                queue.put_nowait((measurements, time.time()))
            except asyncio.QueueFull:
                self._counters.overflow_samples += 1

        async with asyncio.TaskGroup() as tg:
            tg.create_task(driver.run(emit), name=f"{self.device_id}:driver")
            while True:
                measurements, sample_time = await queue.get()
                await self._accept(measurements, sample_time)
