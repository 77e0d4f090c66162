"""Stopping (issue 3 point 9): SIGTERM stops polling, lets the publisher flush for a bounded
time, publishes `offline`, exits 0; what was not sent stays buffered and the next start sends it.
The broker is made unreachable-but-connected with the proxy, the hard case for a bounded stop."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from citygate.app import FLUSH_TIMEOUT_S
from citygate.mqtt.announce import OFFLINE_TIMEOUT_S
from citygate.mqtt.session import DROP_TIMEOUT_S
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
from tests.support.processes import AgentProcess, SimProcess, modbus_config, run_cli
from tests.support.proxy import Proxy

pytestmark = pytest.mark.broker

GATEWAY_STATUS = "city/gw-e2e/status"

# The stop's own budget (flush, then `offline`, then dropping the connection) plus the time a
# Python process needs to start its shutdown and exit on a loaded CI machine.
STOP_BOUND_S = FLUSH_TIMEOUT_S + OFFLINE_TIMEOUT_S + DROP_TIMEOUT_S + 3.0


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


def config_for(tmp_path: Path, port: int, sim: SimProcess) -> Path:
    return modbus_config(
        tmp_path / "gateway.toml",
        broker_port=port,
        data_dir=tmp_path / "var",
        devices=modbus_devices(sim.port, 2, "100ms"),
    )


def backlog(config: Path) -> int:
    shown = run_cli("status", "-c", str(config), "--json")
    assert shown.returncode == 0, shown.stderr
    return int(json.loads(shown.stdout)["backlog_samples"])


def timed_stop(agent: AgentProcess) -> tuple[int, float]:
    started = time.monotonic()
    code = agent.stop(timeout=STOP_BOUND_S + 10)
    return code, time.monotonic() - started


def test_sigterm_with_a_frozen_broker_exits_in_bounded_time_and_keeps_the_backlog(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    sub = SessionSubscriber(broker.port).start()
    try:
        with Proxy(broker.port) as proxy:
            config = config_for(tmp_path, proxy.port, sim)
            agent = AgentProcess(config)
            try:
                wait_until(lambda: len(sub.distinct()) >= 10, 30, "data flowing")
                proxy.freeze("both")  # connected, but nothing is answered any more
                wait_until(lambda: backlog(config) >= 10, 30, "a backlog")
                code, took = timed_stop(agent)
            finally:
                agent.kill()
        assert code == 0, agent.log
        assert took < STOP_BOUND_S, agent.log
        kept = buffer_stats(tmp_path / "var").backlog_samples
        assert kept >= 10
        assert any("stay buffered" in line for line in agent.lines), agent.log
        # aiomqtt's publish timeout fired for `offline`; the connection was dropped, not closed
        assert any("could not publish offline" in line for line in agent.lines), agent.log
        assert "Traceback" not in agent.log
        # The broker noticed the connection end and published the will.
        wait_until(lambda: sub.last_status(GATEWAY_STATUS) == b"offline", 30, "the will")

        # The next start, with the broker reachable, sends what was kept, then the new samples.
        config = config_for(tmp_path, broker.port, sim)
        agent = AgentProcess(config)
        try:
            wait_until(lambda: caught_up(sub, kept + 20), 30, "backlog delivered")
            assert agent.stop() == 0, agent.log
        finally:
            agent.kill()
        assert not any("could not publish offline" in line for line in agent.lines), agent.log
        wait_until(lambda: sub.last_status(GATEWAY_STATUS) == b"offline", 30, "clean offline")
        stats = buffer_stats(tmp_path / "var")
        wait_until(lambda: sub.distinct() >= set(range(1, stats.next_seq)), 30, "all delivered")
    finally:
        sub.stop()
    assert_nothing_missing(sub.snapshot(), stats)


def test_sigterm_while_waiting_for_connack_is_prompt(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    with Proxy(broker.port) as proxy:
        proxy.freeze("both")  # the agent's CONNECT is held: no CONNACK (it would wait 30 s)
        config = config_for(tmp_path, proxy.port, sim)
        agent = AgentProcess(config)
        try:
            wait_until(lambda: proxy.accepted >= 1, 30, "a connection attempt")
            wait_until(lambda: backlog(config) >= 5, 30, "a backlog")
            code, took = timed_stop(agent)
        finally:
            agent.kill()
    assert code == 0, agent.log
    assert took < STOP_BOUND_S, agent.log
    assert buffer_stats(tmp_path / "var").backlog_samples >= 5
    assert "Traceback" not in agent.log
