"""Draining a backlog (issue 3 point 8): oldest first, pipelined up to max_inflight, batched up
to max_batch, while new samples keep being buffered; memory stays flat (the backlog is paged
from disk, never loaded whole)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citygate.app import buffer_path
from citygate.buffer import Buffer, NewSample
from citygate.config import BufferSettings
from citygate.model import Reading
from citygate.senml import encode_body
from tests.faults.helpers import (
    SessionSubscriber,
    assert_no_errors,
    assert_nothing_missing,
    buffer_stats,
    caught_up,
    make_agent,
    modbus_devices,
    running,
    synthetic_config,
    until,
    wait_until,
)
from tests.support.broker import Mosquitto
from tests.support.processes import AgentProcess, SimProcess, modbus_config

pytestmark = pytest.mark.broker

log = logging.getLogger(__name__)

BACKLOG = 50_000
VALUES = 7  # readings per sample, backlog and new samples alike
DEVICES = 5


def fill_backlog(path: Path, samples: int, values: int = VALUES, devices: int = DEVICES) -> None:
    """Buffer ``samples`` samples, round-robin over the devices, as an outage would leave them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = Buffer(path, BufferSettings())
    buffer.open()
    try:
        now = time.time() - samples
        batch: list[NewSample] = []
        for i in range(samples):
            readings = [Reading(f"value_{k}", "W", float(i) + k) for k in range(values)]
            batch.append(
                NewSample(f"dev-{i % devices}", now + i, True, values, encode_body(readings))
            )
            if len(batch) == 1000:
                buffer.append(batch)
                batch = []
        if batch:
            buffer.append(batch)
    finally:
        buffer.close()


async def test_backlog_drains_pipelined_and_batched_while_polling_goes_on(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    max_batch, max_inflight = 100, 20
    config = synthetic_config(
        tmp_path,
        broker.port,
        DEVICES,
        values=VALUES,
        interval=0.05,
        max_batch=max_batch,
        max_inflight=max_inflight,
    )
    fill_backlog(buffer_path(config), BACKLOG)
    sub = SessionSubscriber(broker.port).start()
    agent = make_agent(config)
    most_in_flight = 0
    try:
        async with running(agent):
            started = time.monotonic()

            def drained() -> bool:
                nonlocal most_in_flight
                most_in_flight = max(most_in_flight, agent.publisher.in_flight)
                return caught_up(sub, BACKLOG + 50)

            await until(drained, 120, "backlog delivered")
            took = time.monotonic() - started
            new_samples = agent.counters.samples_read
    finally:
        sub.stop()
    log.info("drained %d readings in %.1f s", BACKLOG * VALUES, took)
    records = sub.snapshot()
    assert_nothing_missing(records, buffer_stats(config.gateway.data_dir))
    assert_no_errors(caplog)
    assert new_samples >= 50  # polling went on meanwhile, and its samples arrived too
    # pipelined: the window was full, never over-full
    assert most_in_flight == max_inflight
    # batched: no message over max_batch readings; the backlog's messages full, or nearly
    assert max(r.message_readings for r in records) <= max_batch
    backlog_messages = [r.message_readings for r in records if r.seq <= BACKLOG]
    nearly_full = [n for n in backlog_messages if n > max_batch - VALUES]
    assert len(nearly_full) >= 0.9 * len(backlog_messages)
    # oldest first: the backlog's first arrivals come before any new sample's
    first_new = next(i for i, r in enumerate(records) if r.seq > BACKLOG)
    assert {r.seq for r in records[:first_new]} >= set(range(1, BACKLOG // 2))


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    process = SimProcess({1: "sdm630", 2: "sdm120"})
    yield process
    process.stop()


def peak_rss_while_draining(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess, backlog: int
) -> int:
    """`citygate run` with ``backlog`` samples already buffered: its peak RSS until drained."""
    data_dir = tmp_path / f"var-{backlog}"
    if backlog:
        fill_backlog(data_dir / "buffer.sqlite3", backlog, values=60)
    config = modbus_config(
        tmp_path / f"gateway-{backlog}.toml",
        broker_port=broker.port,
        data_dir=data_dir,
        devices=modbus_devices(sim.port, 1, "100ms"),
    )
    sub = SessionSubscriber(broker.port, client_id=f"rss-{backlog}").start()
    agent = AgentProcess(config)
    peak = 0

    def drained() -> bool:
        nonlocal peak
        peak = max(peak, rss_of(agent.process.pid))
        return caught_up(sub, backlog + 20)

    try:
        wait_until(drained, 120, "backlog delivered")
        assert agent.stop() == 0, agent.log
    finally:
        agent.kill()
        sub.stop()
    return peak


def test_memory_stays_flat_whatever_the_backlog(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    # 20,000 samples of 60 readings: ~35 MB of SenML if the agent held the backlog in memory.
    without = peak_rss_while_draining(tmp_path, broker, sim, 0)
    with_backlog = peak_rss_while_draining(tmp_path, broker, sim, 20_000)
    log.info(
        "peak RSS %d kB without backlog, %d kB draining", without // 1024, with_backlog // 1024
    )
    assert with_backlog - without < 10 * 1024 * 1024
