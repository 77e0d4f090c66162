"""The wait between two polls on the event loop's own clock (issue 13's CPU per reading): no
task of its own, and a command still cuts it short."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

import pytest

from citygate.model import Sample
from citygate.status import Counters, StatusBoard
from citygate.supervise import DeviceSupervisor
from tests.support.supervision import FakeClock, ScriptedDriver

POLLS = 20


def supervisor_of(driver: ScriptedDriver, interval: float) -> DeviceSupervisor:
    async def submit(sample: Sample) -> None:
        return None

    return DeviceSupervisor(
        "meter", interval, lambda: driver, submit, StatusBoard(["meter"]), Counters(), lambda: True
    )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_waiting_for_the_next_poll_creates_no_task() -> None:
    """It made two tasks a poll (~60 µs, half a µs per reading of a 100-value meter); an
    operation count, not a timing."""
    driver = ScriptedDriver(FakeClock(), lambda n: (0.0, None), POLLS)
    task = asyncio.create_task(supervisor_of(driver, 0.002).run())
    loop = asyncio.get_running_loop()
    created = 0

    def counting(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        async with asyncio.timeout(30):
            await driver.done.wait()
    finally:
        loop.set_task_factory(None)
        await stop(task)
    assert len(driver.polls) >= POLLS
    assert created == 0


async def test_a_command_still_cuts_the_wait_short() -> None:
    driver = ScriptedDriver(FakeClock(), lambda n: (0.0, None), 10**6)
    supervisor = supervisor_of(driver, 3600.0)  # the next poll an hour away
    task = asyncio.create_task(supervisor.run())
    try:
        async with asyncio.timeout(30):
            while not driver.polls:
                await asyncio.sleep(0.01)
            readout = await supervisor.request_read()
    finally:
        await stop(task)
    assert [(r.name, r.unit, r.value) for r in readout.readings] == [("power", "W", 1.0)]
    assert len(driver.polls) == 2
