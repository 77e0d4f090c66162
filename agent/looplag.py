"""Event-loop lag, and skipped polls told once per episode (issue 11: "no silent stalls").

* :class:`LoopLagMonitor` sleeps :data:`LAG_PERIOD_S` at a time and measures how late it wakes:
  whatever held the event loop meanwhile (a long callback, a garbage collection, a thread
  holding the GIL) shows as lag. The metrics message carries the worst lag of its period
  (``loop_lag_max_ms``, reset at each message). Cost: one wake-up per period.
* :class:`SkipEpisodes` gathers the polls the supervisors skip into episodes: one warning
  :data:`GATHER_S` after the first skip (how many devices, how late, and why: the event loop
  stalled, the pipeline was overloaded, or polls took longer than their interval), and one
  line when no poll has been skipped for :data:`QUIET_S`. Never a line per device or per poll.

Garbage collection. Under 20,000 readings/s the samples in transit (queues, batches, messages
in flight) survive the young collections, so a full (generation 2) collection came every 4-5 s
and walked every object the agent has, the imported modules' included: 11-50 ms with the event
loop (or the buffer thread, holding the GIL) stopped, the worst lags measured. The monitor,
:data:`GC_FREEZE_AFTER_S` after it starts (imports, drivers and connections are done by then),
calls :func:`gc.freeze`: what exists then is moved out of the collector's reach (it is still
freed when unreferenced), so a full collection walks only what was made since. It calls
:func:`gc.unfreeze` when cancelled (the agent stops; tests run many agents in one process).

Both take their clock (and the monitor its sleep) as seams; the unit tests drive them without
sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

LAG_PERIOD_S = 0.05
GC_FREEZE_AFTER_S = 3.0
GATHER_S = 0.5  # the first skip opens an episode; its line goes out this much later
QUIET_S = 5.0  # no skip for this long closes the episode
LAG_LOOKBACK_S = 2.0  # a stall up to this long before the first skip is the episode's cause
STALL_MIN_S = 0.02  # a lag below this never explains a skip

Clock = Callable[[], float]


class LoopLagMonitor:
    """Measures event-loop lag; see the module docstring.

    ``on_lag(now, lag_s)`` is called after every wake-up (the agent feeds
    :meth:`SkipEpisodes.lag` with it: a tick that also closes episodes).
    """

    def __init__(
        self,
        period: float = LAG_PERIOD_S,
        *,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_lag: Callable[[float, float], None] | None = None,
        freeze_gc_after: float | None = None,
    ) -> None:
        self.period = period
        self._freeze_gc_after = freeze_gc_after
        self.gc_frozen = False
        self._clock = clock
        self._sleep = sleep
        self._on_lag = on_lag
        self._period_max = 0.0
        self.worst = 0.0  # since start, seconds
        self.samples = 0

    def observe(self, lag: float, now: float | None = None) -> None:
        """One measured lag (seconds)."""
        lag = max(0.0, lag)
        self.samples += 1
        self._period_max = max(self._period_max, lag)
        self.worst = max(self.worst, lag)
        if self._on_lag is not None:
            self._on_lag(self._clock() if now is None else now, lag)

    def take_max_ms(self) -> float:
        """The worst lag since the last call, in ms; starts the next period."""
        worst, self._period_max = self._period_max, 0.0
        return round(worst * 1000, 1)

    async def run(self) -> None:
        """Measure until cancelled (and freeze the objects of the start-up, if asked)."""
        began = self._clock()
        try:
            while True:
                start = self._clock()
                await self._sleep(self.period)
                now = self._clock()
                self.observe(now - start - self.period, now)
                if (
                    self._freeze_gc_after is not None
                    and not self.gc_frozen
                    and now - began >= self._freeze_gc_after
                ):
                    gc.freeze()
                    self.gc_frozen = True
                    log.debug("gc: %d start-up objects frozen", gc.get_freeze_count())
        finally:
            if self.gc_frozen:
                gc.unfreeze()
                self.gc_frozen = False


class SkipEpisodes:
    """Skipped polls of every device, told once per episode (see the module docstring)."""

    def __init__(self, clock: Clock = time.monotonic, logger: logging.Logger = log) -> None:
        self._clock = clock
        self._log = logger
        self._lags: collections.deque[tuple[float, float]] = collections.deque()
        self._reset()
        self.episodes = 0

    def _reset(self) -> None:
        self._started: float | None = None
        self._told = False
        self._last_skip = 0.0
        self._devices: set[str] = set()
        self._polls = 0
        self._late = 0.0  # the worst lateness of a missed deadline, seconds
        self._overloaded = 0  # polls skipped because the pipeline was overloaded
        self._stall = 0.0  # the worst loop lag seen during the episode

    @property
    def active(self) -> bool:
        return self._started is not None

    def skipped(self, device_id: str, polls: int, late: float, *, overloaded: bool = False) -> None:
        """``device_id`` skipped ``polls`` polls, its deadline missed by ``late`` seconds
        (``overloaded``: skipped on purpose, the pipeline could not take more)."""
        now = self._clock()
        if self._started is None:
            self._started = now
            self.episodes += 1
            recent = [lag for t, lag in self._lags if t >= now - LAG_LOOKBACK_S]
            self._stall = max(recent, default=0.0)
        self._last_skip = now
        self._devices.add(device_id)
        self._polls += polls
        self._late = max(self._late, late)
        if overloaded:
            self._overloaded += polls
        self.tick(now)

    def lag(self, now: float, lag: float) -> None:
        """A loop lag measured at ``now`` (the monitor's report); also ticks."""
        if lag >= STALL_MIN_S:
            self._lags.append((now, lag))
            if self._started is not None:
                self._stall = max(self._stall, lag)
        while self._lags and self._lags[0][0] < now - LAG_LOOKBACK_S:
            self._lags.popleft()
        self.tick(now)

    def tick(self, now: float | None = None) -> None:
        """Tell the episode once it has gathered, close it once quiet."""
        if self._started is None:
            return
        now = self._clock() if now is None else now
        if not self._told and now - self._started >= GATHER_S:
            self._told = True
            late = f" late by up to {round(self._late * 1000)} ms" if self._late > 0 else ""
            self._log.warning(
                "polls skipped: %d devices%s (%s); polls_skipped=%d",
                len(self._devices),
                late,
                self._cause(),
                self._polls,
            )
        if now - self._last_skip >= QUIET_S:
            if self._told:
                self._log.info(
                    "polls on time again: %d devices skipped %d polls in %.1f s (%s)",
                    len(self._devices),
                    self._polls,
                    self._last_skip - self._started,
                    self._cause(),
                )
            self._reset()

    def _cause(self) -> str:
        if self._stall >= STALL_MIN_S and self._stall * 2 >= self._late:
            return f"event loop stalled up to {round(self._stall * 1000)} ms"
        if self._overloaded * 2 >= self._polls:
            return "on purpose: the pipeline cannot take more"
        return "polls took longer than their interval"
