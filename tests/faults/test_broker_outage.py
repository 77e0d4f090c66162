"""Broker outage and flapping under load: `citygate run` polls the simulator while Mosquitto is
stopped and started; afterwards every sample the buffer gave a seq reached the subscriber,
each device's in seq order. See helpers.py for why the broker keeps sessions."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.helpers import (
    SessionSubscriber,
    assert_nothing_missing,
    buffer_stats,
    caught_up,
    modbus_devices,
    persistent_broker,
    wait_until,
)
from tests.support.broker import Mosquitto
from tests.support.processes import AgentProcess, SimProcess, modbus_config

pytestmark = pytest.mark.broker


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    process = SimProcess({1: "sdm630", 2: "sdm120"})
    yield process
    process.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = persistent_broker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


def start_agent(tmp_path: Path, broker: Mosquitto, sim: SimProcess) -> tuple[AgentProcess, Path]:
    data_dir = tmp_path / "var"
    config = modbus_config(
        tmp_path / "gateway.toml",
        broker_port=broker.port,
        data_dir=data_dir,
        devices=modbus_devices(sim.port, 4, "50ms"),
        extra='keepalive = "2s"\n',
    )
    env = {"PYTHONFAULTHANDLER": "1"}
    return AgentProcess(config, env=env, metrics_interval=0.5), data_dir


def stop_or_explain(agent: AgentProcess) -> int:
    """SIGTERM; if the agent does not exit, have it dump its threads' stacks into its log."""
    try:
        return agent.stop(timeout=20)
    except subprocess.TimeoutExpired:
        agent.signal(signal.SIGABRT)  # PYTHONFAULTHANDLER=1: stacks to stderr
        agent.kill()
        raise AssertionError(f"no exit 20 s after SIGTERM:\n{agent.log}") from None


def reconnects_in_metrics(sub: SessionSubscriber) -> int:
    metrics = sub.last_metrics()
    return int(metrics["broker_reconnects"]) if metrics else 0


def finish(agent: AgentProcess, sub: SessionSubscriber, data_dir: Path) -> None:
    """After the fault: wait until the backlog has reached the subscriber while polling goes on,
    stop the agent cleanly, then check that every seq it ever gave out arrived."""
    newest = max(sub.distinct(), default=0)
    try:
        wait_until(lambda: caught_up(sub, newest + 50), 90, "backlog delivered")
    except AssertionError:
        seen = sub.distinct()
        missing = sorted(set(range(1, max(seen) + 1)) - seen)
        detail = f"{len(missing)} missing, first {missing[:20]}:\n{agent.log}"
        raise AssertionError(detail) from None
    # Metrics and retained device statuses came back with the connection.
    wait_until(lambda: reconnects_in_metrics(sub) >= 1, 30, "metrics after the fault")
    for device in ("meter-0", "meter-1", "meter-2", "meter-3"):
        status = sub.last_status(f"city/gw-e2e/{device}/status")
        assert status is not None and json.loads(status)["state"] == "online"
    assert stop_or_explain(agent) == 0, agent.log
    stats = buffer_stats(data_dir)
    wait_until(lambda: sub.distinct() >= set(range(1, stats.next_seq)), 30, "all delivered")
    assert_nothing_missing(sub.snapshot(), stats)
    assert "Traceback" not in agent.log


def outage(tmp_path: Path, broker: Mosquitto, sim: SimProcess, seconds: float) -> None:
    sub = SessionSubscriber(broker.port).start()
    agent, data_dir = start_agent(tmp_path, broker, sim)
    try:
        wait_until(lambda: len(sub.distinct()) >= 20, 30, "data flowing")
        broker.stop()
        time.sleep(seconds)  # the outage itself, not a wait for the agent
        broker.start()
        finish(agent, sub, data_dir)
    finally:
        agent.kill()
        sub.stop()
    lines = [line for line in agent.lines if "broker" in line]
    # one line when the connection is lost, one when it is back: not one per attempt
    assert len([line for line in lines if "retrying" in line]) <= 3, agent.log
    assert sum("connected again" in line for line in lines) == 1, agent.log


def test_broker_outage_under_load_loses_nothing(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    outage(tmp_path, broker, sim, seconds=5)


@pytest.mark.soak
@pytest.mark.timeout(400)
def test_broker_outage_of_30_s_loses_nothing(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    outage(tmp_path, broker, sim, seconds=30)


def flapping(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess, restarts: int, up: float, down: float
) -> None:
    sub = SessionSubscriber(broker.port).start()
    agent, data_dir = start_agent(tmp_path, broker, sim)
    try:
        wait_until(lambda: len(sub.distinct()) >= 20, 30, "data flowing")
        for _ in range(restarts):
            broker.stop()
            time.sleep(down)  # the fault's own rhythm, not a wait for the agent
            broker.start()
            time.sleep(up)  # up for a while before the next outage (same rhythm)
        finish(agent, sub, data_dir)
    finally:
        agent.kill()
        sub.stop()


def test_flapping_broker_loses_nothing(tmp_path: Path, broker: Mosquitto, sim: SimProcess) -> None:
    flapping(tmp_path, broker, sim, restarts=10, up=1.0, down=0.5)


@pytest.mark.soak
@pytest.mark.timeout(400)
def test_flapping_broker_10_restarts_in_60_s(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    flapping(tmp_path, broker, sim, restarts=10, up=4.0, down=2.0)
