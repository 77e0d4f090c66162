"""A babbling device on a shared line (issue 12), on a real pseudo-terminal: the
line is flagged noisy and waits for silence only briefly, the babbler's turns are
skipped with backoff and retried, and a healthy device on the same line keeps its
interval."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate.drivers.api import DecodeError, DeviceContext, SerialLineConfig, TransportError
from citygate.drivers.modbus.driver import RtuSession, factory
from citygate.lines import GARBLED_LIMIT, SKIP_START_S, LineOwner
from citygate.model import Sample
from citygate.status import Counters, StatusBoard
from citygate.supervise import DeviceSupervisor
from tests.support.wait import until

citygate_sim = pytest.importorskip("citygate_sim.modbus")

BAUD = 38400
LINE_TIMEOUT = 0.5  # longer than the interval: waiting it out for silence costs polls
REPLY_TIMEOUT = 0.1
INTERVAL = 0.4
HEALTHY, BABBLER = 1, 2


def line_config(port: str) -> SerialLineConfig:
    return SerialLineConfig("rs485", port, BAUD, "N", 1, 8, LINE_TIMEOUT)


def make_sim() -> Any:
    meters = {
        HEALTHY: citygate_sim.make_meter("sdm120", seed=1),
        BABBLER: citygate_sim.make_meter("sdm120", seed=2),
    }
    return citygate_sim.ModbusRtuSimulator(meters, baudrate=BAUD)


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    async with make_sim() as simulator:
        simulator.set_fault(BABBLER, citygate_sim.LineFault.BABBLE)
        yield simulator


@pytest.fixture
def sim_apart() -> Iterator[Any]:
    """The simulator on its own thread and event loop, like a device apart from the
    agent: it babbles on however busy the agent's loop is."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        state["stop"] = stop = asyncio.Event()
        async with make_sim() as simulator:
            simulator.set_fault(BABBLER, citygate_sim.LineFault.BABBLE)
            state["sim"], state["loop"] = simulator, asyncio.get_running_loop()
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="rtu-sim")
    thread.start()
    try:
        assert ready.wait(30), "the simulator did not start"
        yield state["sim"]
    finally:
        if "loop" in state:
            state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(30)


async def test_a_babbler_is_skipped_and_its_healthy_neighbour_keeps_its_interval(
    sim_apart: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = sim_apart
    config = line_config(sim.port)
    owner = LineOwner(config)
    names = {"healthy": HEALTHY, "babbler": BABBLER}
    counters = {name: Counters() for name in names}
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    board = StatusBoard(list(names))

    def supervisor(name: str) -> DeviceSupervisor:
        context = DeviceContext(
            name, INTERVAL, tmp_path, serial_lines={"rs485": config}, lines={"rs485": owner}
        )
        options = {"serial": "rs485", "unit": names[name], "profile": "eastron-sdm120"}
        device = factory.configure({**options, "timeout": REPLY_TIMEOUT}, context)

        async def submit(sample: Sample) -> None:
            samples[name].append(sample)

        return DeviceSupervisor(
            name,
            INTERVAL,
            lambda: factory.create(device, context),
            submit,
            board,
            counters[name],
            lambda: True,
        )

    babbler = owner._stats("babbler")
    try:
        with caplog.at_level(logging.INFO, logger="citygate.lines"):
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(supervisor(name).run()) for name in names]
                await until(
                    lambda: len(samples["healthy"]) >= 10 and babbler.skipped_turns >= 1,
                    what="10 samples from the healthy meter and a skipped turn of the babbler",
                )
                for task in tasks:
                    task.cancel()
    finally:
        owner.close()
    # Every healthy poll on its grid, none skipped (before: each request waited the
    # line timeout for a silence that never came, and polls fell behind).
    assert counters["healthy"].polls_skipped == 0
    assert samples["babbler"] == []
    assert board.devices["babbler"].state == "offline"
    figures = owner.metrics()
    assert figures["noisy"] is True
    assert figures["noisy_turns"] >= 3
    assert figures["devices"]["babbler"]["skipping"] is True
    assert figures["devices"]["babbler"]["skipped_turns"] >= 1
    assert figures["devices"]["babbler"]["discarded_bytes"] > 0
    assert figures["devices"]["healthy"]["skipped_turns"] == 0
    assert sim.babbled_bytes > 0
    messages = [r.getMessage() for r in caplog.records if r.name == "citygate.lines"]
    assert any("never falls silent" in m for m in messages), messages
    skipped = [m for m in messages if "garbled replies in a row" in m]
    assert len(skipped) == 1, messages  # once per episode
    assert "babbler" in skipped[0]


async def test_skipped_turns_are_retried_after_a_backoff_and_resume_when_clean(
    sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    shift = [0.0]
    owner = LineOwner(line_config(sim.port), clock=lambda: loop.time() + shift[0])
    session = RtuSession(owner, BABBLER, REPLY_TIMEOUT, retries=0)

    async def poll() -> None:
        async with owner.turn("babbler") as wire:
            await session.read(wire, "input", 0, 2)

    try:
        with caplog.at_level(logging.INFO, logger="citygate.lines"):
            for _ in range(GARBLED_LIMIT):
                with pytest.raises(DecodeError):
                    await poll()
            requests = sim.requests_by_unit[BABBLER]
            with pytest.raises(TransportError, match="babbler garbled 3 replies in a row"):
                await poll()
            assert sim.requests_by_unit[BABBLER] == requests  # the wire was not touched
            stats = owner.devices["babbler"]
            assert stats.skipped_turns == 1

            shift[0] += SKIP_START_S  # the skip is over: a retry goes out, garbles again
            with pytest.raises(DecodeError):
                await poll()
            assert sim.requests_by_unit[BABBLER] == requests + 1
            assert stats.skip_s == 2 * SKIP_START_S  # backoff
            with pytest.raises(TransportError):
                await poll()

            sim.set_fault(BABBLER, None)
            shift[0] += stats.skip_s
            await poll()  # the retry is clean: turns resume
            await poll()
        assert stats.skip_until is None
        assert stats.skipped_turns == 2
    finally:
        owner.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "citygate.lines"]
    assert len([m for m in messages if "garbled replies in a row" in m]) == 1, messages
    assert len([m for m in messages if "answers cleanly again" in m]) == 1, messages


async def test_a_noisy_line_is_flagged_once_and_cleared_when_it_falls_silent(
    sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    owner = LineOwner(line_config(sim.port))
    session = RtuSession(owner, HEALTHY, REPLY_TIMEOUT, retries=0)

    async def poll() -> list[int] | list[bool]:
        async with owner.turn("healthy") as wire:
            return await session.read(wire, "input", 0, 2)

    try:
        with caplog.at_level(logging.INFO, logger="citygate.lines"):
            for _ in range(5):
                assert len(await poll()) == 2  # its replies get through between the babble
            assert owner.noisy
            assert owner.noisy_turns >= 3
            sim.set_fault(BABBLER, None)
            for _ in range(4):
                await poll()
            assert not owner.noisy
    finally:
        owner.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "citygate.lines"]
    assert len([m for m in messages if "never falls silent" in m]) == 1, messages
    assert len([m for m in messages if "falls silent between frames again" in m]) == 1
    assert owner.devices["healthy"].skipped_turns == 0
