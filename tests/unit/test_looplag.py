"""Event-loop lag and skipped-poll episodes (citygate.looplag), on injected clocks: no sleeps."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from citygate.looplag import GATHER_S, QUIET_S, LoopLagMonitor, SkipEpisodes
from citygate.model import Sample
from citygate.status import Counters, StatusBoard
from citygate.supervise import DeviceSupervisor
from tests.support.supervision import FakeClock, ScriptedDriver


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def episodes(clock: Clock) -> SkipEpisodes:
    return SkipEpisodes(clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "citygate.looplag"]


def stall(episodes: SkipEpisodes, clock: Clock, lag: float, devices: int, polls: int = 1) -> None:
    """The loop was held ``lag`` s: the monitor sees it, every device finds its deadline missed."""
    clock.now += lag
    episodes.lag(clock.now, lag)
    for i in range(devices):
        episodes.skipped(f"meter-{i:02d}", polls, lag - 0.01 * (i % 3))


def run_for(episodes: SkipEpisodes, clock: Clock, seconds: float, step: float = 0.0625) -> None:
    """Quiet ticks of the monitor (no lag) for ``seconds``."""
    end = clock.now + seconds
    while clock.now < end:
        clock.now += step
        episodes.lag(clock.now, 0.001)


def test_a_stall_is_one_line_with_the_device_count_and_one_when_it_ends(
    episodes: SkipEpisodes, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "citygate.looplag")
    run_for(episodes, clock, 1.0)
    stall(episodes, clock, 0.31, devices=20, polls=2)
    assert lines(caplog) == []  # gathering: the other devices report their skips
    run_for(episodes, clock, GATHER_S)
    assert lines(caplog) == [
        "polls skipped: 20 devices late by up to 310 ms (event loop stalled up to 310 ms);"
        " polls_skipped=40"
    ]
    stall(episodes, clock, 0.29, devices=20)  # a second stall within the same episode
    run_for(episodes, clock, QUIET_S - 0.1)
    assert len(lines(caplog)) == 1  # no line per device, per poll or per stall
    run_for(episodes, clock, 0.2)
    assert lines(caplog)[1:] == [
        "polls on time again: 20 devices skipped 60 polls in 0.8 s"
        " (event loop stalled up to 310 ms)"
    ]
    assert not episodes.active
    assert episodes.episodes == 1


def test_a_stall_seen_shortly_before_the_first_skip_is_named_the_cause(
    episodes: SkipEpisodes, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    episodes.lag(clock.now, 0.25)
    clock.now += 0.02
    episodes.skipped("meter-01", 1, 0.24)
    run_for(episodes, clock, GATHER_S)
    assert "event loop stalled up to 250 ms" in lines(caplog)[0]


def test_slow_polls_without_a_stall_are_not_blamed_on_the_loop(
    episodes: SkipEpisodes, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(10):
        clock.now += 0.125
        episodes.lag(clock.now, 0.002)
        episodes.skipped("slow", 1, 0.2)
    assert lines(caplog) == [
        "polls skipped: 1 devices late by up to 200 ms (polls took longer than their interval);"
        " polls_skipped=4"
    ]


def test_overload_skips_say_so(
    episodes: SkipEpisodes, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(6):
        clock.now += 0.125
        for device in ("a", "b", "c"):
            episodes.skipped(device, 1, 0.0, overloaded=True)
    assert lines(caplog) == [
        "polls skipped: 3 devices (on purpose: the pipeline cannot take more); polls_skipped=13"
    ]


def test_an_old_stall_is_not_blamed_and_episodes_start_afresh(
    episodes: SkipEpisodes, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "citygate.looplag")
    episodes.lag(clock.now, 0.4)
    run_for(episodes, clock, 5.0)
    episodes.skipped("slow", 1, 0.2)
    run_for(episodes, clock, QUIET_S + 0.1)
    assert "polls took longer than their interval" in lines(caplog)[0]
    assert len(lines(caplog)) == 2
    stall(episodes, clock, 0.3, devices=2)
    run_for(episodes, clock, QUIET_S + 0.1)
    assert episodes.episodes == 2
    assert lines(caplog)[2].startswith("polls skipped: 2 devices late by up to 300 ms (event loop")
    assert len(lines(caplog)) == 4


def test_a_short_lag_logs_nothing(
    episodes: SkipEpisodes, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "citygate.looplag")
    episodes.lag(clock.now, 0.2)  # a lag no poll missed its deadline for
    run_for(episodes, clock, 10.0)
    assert lines(caplog) == []
    assert not episodes.active


# ------------------------------------------------------------------------ the monitor


class SteppedLoop:
    """The monitor's clock and sleep: each sleep lasts its period plus the next scripted lag."""

    def __init__(self, lags: list[float]) -> None:
        self.now = 50.0
        self.lags = list(lags)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if not self.lags:
            raise asyncio.CancelledError
        self.now += seconds + self.lags.pop(0)


async def test_the_monitor_reports_the_worst_lag_of_each_period() -> None:
    loop = SteppedLoop([0.001, 0.3, 0.002, -0.0005])
    seen: list[tuple[float, float]] = []
    monitor = LoopLagMonitor(
        0.05, clock=loop.clock, sleep=loop.sleep, on_lag=lambda t, lag: seen.append((t, lag))
    )
    with pytest.raises(asyncio.CancelledError):
        await monitor.run()
    assert [round(lag, 4) for _, lag in seen] == [0.001, 0.3, 0.002, 0.0]  # never negative
    assert seen[1][0] == pytest.approx(50.0 + 2 * 0.05 + 0.301)
    assert monitor.take_max_ms() == 300.0
    assert monitor.take_max_ms() == 0.0  # a new period
    monitor.observe(0.0123)
    assert monitor.take_max_ms() == 12.3
    assert monitor.worst == pytest.approx(0.3)


async def test_the_monitor_on_the_real_loop_measures_a_blocking_call() -> None:
    monitor = LoopLagMonitor(0.01)
    task = asyncio.create_task(monitor.run(), name="loop-lag")
    while monitor.samples < 1:
        await asyncio.sleep(0.005)
    block_until = asyncio.get_running_loop().time() + 0.1
    while asyncio.get_running_loop().time() < block_until:
        pass  # the loop is held
    while monitor.samples < 3:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert monitor.take_max_ms() >= 50  # a blocked loop shows (no upper bound: no timing)


# ------------------------------------------------------------------------ the supervisor


def slow_second_poll(n: int) -> tuple[float, None]:
    """The second poll takes 25 clock seconds (interval 10): two deadlines are missed."""
    return (25.0 if n == 2 else 0.1), None


async def test_the_supervisor_reports_its_skips_with_how_late() -> None:
    clock = FakeClock()
    driver = ScriptedDriver(clock, slow_second_poll, stop_after=4)
    reported: list[tuple[str, int, float, bool]] = []

    def on_skipped(device_id: str, polls: int, late: float, *, overloaded: bool = False) -> None:
        reported.append((device_id, polls, late, overloaded))

    async def submit(sample: Sample) -> None:
        return None

    counters = Counters()
    supervisor = DeviceSupervisor(
        "meter",
        10.0,
        lambda: driver,
        submit,
        StatusBoard(["meter"]),
        counters,
        lambda: True,
        clock=clock,
        sleep=clock.sleep,
        on_skipped=on_skipped,
    )
    task = asyncio.create_task(supervisor.run())
    async with asyncio.timeout(10):
        await driver.done.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # poll 2 runs from 10 to 35: deadlines 20 and 30 are missed, 20 by 15 s
    assert reported == [("meter", 2, pytest.approx(15.0), False)]
    assert counters.polls_skipped == 2


async def test_the_supervisor_reports_overload_skips() -> None:
    clock = FakeClock()
    reported: list[tuple[int, bool]] = []
    overloaded = True

    def on_skipped(device_id: str, polls: int, late: float, *, overloaded: bool = False) -> None:
        reported.append((polls, overloaded))

    driver = ScriptedDriver(clock, slow_second_poll, stop_after=1)

    def is_overloaded() -> bool:
        nonlocal overloaded
        if len(reported) >= 3:
            overloaded = False
        return overloaded

    async def submit(sample: Sample) -> None:
        return None

    supervisor = DeviceSupervisor(
        "meter",
        10.0,
        lambda: driver,
        submit,
        StatusBoard(["meter"]),
        Counters(),
        lambda: True,
        clock=clock,
        sleep=clock.sleep,
        overloaded=is_overloaded,
        on_skipped=on_skipped,
    )
    task = asyncio.create_task(supervisor.run())
    async with asyncio.timeout(10):
        await driver.done.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reported == [(1, True)] * 3


async def test_the_monitor_freezes_the_start_up_objects_and_unfreezes_when_cancelled() -> None:
    assert gc.get_freeze_count() == 0
    loop = SteppedLoop([0.0] * 100)
    frozen: list[int] = []

    def on_lag(now: float, lag: float) -> None:
        frozen.append(gc.get_freeze_count())

    monitor = LoopLagMonitor(
        0.05, clock=loop.clock, sleep=loop.sleep, on_lag=on_lag, freeze_gc_after=1.0
    )
    with pytest.raises(asyncio.CancelledError):
        await monitor.run()
    assert frozen[:19] == [0] * 19  # 19 periods of 50 ms: not yet
    assert all(n > 0 for n in frozen[22:])  # from about 1 s on
    assert gc.get_freeze_count() == 0
    assert not monitor.gc_frozen
