"""Scheduling and isolation (citygate.supervise): deadlines on a fixed grid, late
polls skipped and counted, backoff for a failing device, and a silent RTU device
that never costs its healthy neighbours a poll."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from citygate.drivers.api import (
    DecodeError,
    DeviceContext,
    DeviceError,
    SerialLineConfig,
    TransportError,
)
from citygate.drivers.modbus.driver import factory
from citygate.lines import LineOwner
from citygate.model import Sample
from citygate.status import Counters, StatusBoard
from citygate.supervise import BACKOFF_MAX_S, DeviceSupervisor
from tests.support.supervision import FakeClock, ScriptedDriver
from tests.support.wait import until

citygate_sim = pytest.importorskip("citygate_sim.modbus")


async def supervise(
    script: Any, polls: int, interval: float = 10.0
) -> tuple[list[float], Counters, FakeClock]:
    clock = FakeClock()
    driver = ScriptedDriver(clock, script, polls)
    counters = Counters()
    samples: list[Sample] = []

    async def submit(sample: Sample) -> None:
        samples.append(sample)

    supervisor = DeviceSupervisor(
        "meter",
        interval,
        lambda: driver,
        submit,
        StatusBoard(["meter"]),
        counters,
        lambda: True,
        clock=clock,
        sleep=clock.sleep,
    )
    task = asyncio.create_task(supervisor.run())
    async with asyncio.timeout(10):
        await driver.done.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    start = driver.polls[0]
    return [t - start for t in driver.polls], counters, clock


async def test_polls_fall_on_the_grid_without_drift() -> None:
    times, counters, _ = await supervise(lambda n: (0.37, None), polls=6)
    assert times == pytest.approx([0, 10, 20, 30, 40, 50])
    assert counters.polls_skipped == 0


async def test_a_late_poll_skips_the_missed_deadlines_and_counts_them() -> None:
    times, counters, _ = await supervise(lambda n: (25.0 if n == 2 else 0.1, None), polls=5)
    # poll 2 starts at 10 and ends at 35: deadlines 20 and 30 are skipped, not queued
    assert times == pytest.approx([0, 10, 40, 50, 60])
    assert counters.polls_skipped == 2


async def test_device_errors_keep_the_schedule() -> None:
    times, counters, _ = await supervise(lambda n: (0.1, DeviceError("exception 2")), polls=6)
    assert times == pytest.approx([0, 10, 20, 30, 40, 50])
    assert counters.poll_errors >= 5


@pytest.mark.parametrize(
    "error", [TransportError("no answer"), DecodeError("CRC error in the reply")]
)
async def test_a_failing_device_backs_off_up_to_five_minutes_then_probes(
    error: Exception,
) -> None:
    times, counters, _ = await supervise(lambda n: (1.0, error), polls=14)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # the first three failures keep the interval, then the gaps grow
    assert gaps[:2] == pytest.approx([10, 10])
    assert all(later >= 10 for later in gaps)
    assert max(gaps) <= BACKOFF_MAX_S + 10
    assert max(gaps[-4:]) >= BACKOFF_MAX_S / 2
    # every try is on the device's grid
    assert all(abs(t / 10 - round(t / 10)) < 1e-6 for t in times)
    assert counters.polls_skipped == 0


async def test_recovery_returns_to_the_interval() -> None:
    def script(n: int) -> tuple[float, Exception | None]:
        return (1.0, TransportError("no answer") if n <= 6 else None)

    times, _, _ = await supervise(script, polls=10)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[-2:] == pytest.approx([10, 10])


# ------------------------------------------------------------------------ isolation

BAUD = 38400
TIMEOUT = 0.1
INTERVAL = 0.4


async def test_a_silent_device_costs_its_healthy_neighbours_no_poll(tmp_path: Path) -> None:
    meters = {
        1: citygate_sim.make_meter("sdm120", seed=1),
        2: citygate_sim.make_meter("sdm120", seed=2),
    }
    async with citygate_sim.ModbusRtuSimulator(meters, baudrate=BAUD) as sim:
        line_config = SerialLineConfig("rs485", sim.port, BAUD, "N", 1, 8, TIMEOUT)
        owner = LineOwner(line_config)
        counters = {name: Counters() for name in ("healthy-1", "healthy-2", "silent")}
        samples: dict[str, list[Sample]] = {name: [] for name in counters}
        board = StatusBoard(list(counters))

        def supervisor(name: str, unit: int) -> DeviceSupervisor:
            context = DeviceContext(
                name,
                INTERVAL,
                tmp_path,
                serial_lines={"rs485": line_config},
                lines={"rs485": owner},
            )
            config = factory.configure(
                {"serial": "rs485", "unit": unit, "profile": "eastron-sdm120"}, context
            )

            async def submit(sample: Sample) -> None:
                samples[name].append(sample)

            return DeviceSupervisor(
                name,
                INTERVAL,
                lambda: factory.create(config, context),
                submit,
                board,
                counters[name],
                lambda: True,
            )

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(supervisor("healthy-1", 1).run()),
                    group.create_task(supervisor("healthy-2", 2).run()),
                    group.create_task(supervisor("silent", 9).run()),
                ]
                await until(
                    lambda: min(len(samples["healthy-1"]), len(samples["healthy-2"])) >= 6,
                    what="6 samples from each healthy meter",
                )
                for task in tasks:
                    task.cancel()
        finally:
            owner.close()
    for name in ("healthy-1", "healthy-2"):
        assert counters[name].polls_skipped == 0, name
        assert counters[name].poll_errors == 0, name
    silent = owner.devices["silent"]
    assert silent.transactions == silent.timeouts  # one request per poll, retried once
    assert board.devices["silent"].state == "offline"
    assert board.devices["healthy-1"].state == "online"
