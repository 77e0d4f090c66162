"""A broker that accepts TCP but stalls, between the agent and Mosquitto: tests/support/proxy.py.

The agent runs in-process with synthetic devices, so the test can see its counters; the stalls
are real (bytes held or swallowed on a loopback TCP connection).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from citygate.mqtt.session import ACK_TIMEOUT_MIN_S
from tests.faults.helpers import (
    SessionSubscriber,
    assert_no_errors,
    assert_nothing_missing,
    buffer_stats,
    caught_up,
    make_agent,
    persistent_broker,
    running,
    synthetic_config,
    until,
)
from tests.support.broker import Mosquitto
from tests.support.proxy import Proxy

pytestmark = pytest.mark.broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = persistent_broker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def proxy(broker: Mosquitto) -> Iterator[Proxy]:
    with Proxy(broker.port) as p:
        yield p


@pytest.fixture
def sub(broker: Mosquitto) -> Iterator[SessionSubscriber]:
    s = SessionSubscriber(broker.port).start()
    yield s
    s.stop()


def broker_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("citygate.mqtt")]


async def test_withheld_pubacks_lead_to_reconnect(
    tmp_path: Path, proxy: Proxy, sub: SessionSubscriber, caplog: pytest.LogCaptureFixture
) -> None:
    # Keepalive far longer than the test: PINGRESPs keep flowing anyway, so only the
    # publisher's own PUBACK watchdog can find this stall.
    config = synthetic_config(tmp_path, proxy.port, keepalive=60.0)
    caplog.set_level(logging.INFO, logger="agent")
    agent = make_agent(config)
    assert agent.publisher.ack_timeout == 60.0  # max(keepalive, 10 s)
    agent.publisher.ack_timeout = ACK_TIMEOUT_MIN_S  # the bound with the default keepalive
    async with running(agent):
        await until(lambda: len(sub.distinct()) >= 50, what="data flowing")
        proxy.drop_pubacks(True)
        await until(lambda: proxy.pubacks_dropped > 0, what="a PUBACK swallowed")
        # Bounded: no PUBACK for ack_timeout, then a reconnect (whose PUBACKs are dropped too).
        await until(
            lambda: any("no PUBACK" in line for line in broker_lines(caplog)),
            ACK_TIMEOUT_MIN_S + 5,
            "stall noticed",
        )
        proxy.drop_pubacks(False)
        await until(lambda: agent.counters.broker_reconnects >= 1, 30, "reconnected")
        newest = max(sub.distinct())
        await until(lambda: caught_up(sub, newest + 20), 30, "backlog delivered")
    assert_nothing_missing(sub.snapshot(), buffer_stats(config.gateway.data_dir))
    assert_no_errors(caplog)
    lines = broker_lines(caplog)
    assert not any("Traceback" in line for line in lines)
    assert sum("no PUBACK" in line for line in lines) >= 1


async def test_frozen_connection_is_dropped_by_keepalive(
    tmp_path: Path, proxy: Proxy, sub: SessionSubscriber, caplog: pytest.LogCaptureFixture
) -> None:
    config = synthetic_config(tmp_path, proxy.port, keepalive=1.0)
    caplog.set_level(logging.INFO, logger="agent")
    agent = make_agent(config)
    async with running(agent):
        await until(lambda: len(sub.distinct()) >= 50, what="data flowing")
        proxy.freeze("both")
        # Nothing comes back, not even PINGRESP: paho's keepalive closes the connection.
        await until(lambda: not agent.publisher.connected, 30, "loss noticed")
        read_during_stall = agent.counters.samples_read
        await until(lambda: agent.counters.samples_read > read_during_stall + 50, 30, "reading on")
        proxy.resume()
        await until(lambda: agent.counters.broker_reconnects >= 1, 30, "reconnected")
        newest = max(sub.distinct())
        await until(lambda: caught_up(sub, newest + 20), 30, "backlog delivered")
    assert_nothing_missing(sub.snapshot(), buffer_stats(config.gateway.data_dir))
    assert_no_errors(caplog)
    # said once, and what it was: paho's keepalive closed the connection
    lost = [line for line in broker_lines(caplog) if "retrying" in line]
    assert lost and "Keep alive timeout" in lost[0], lost


async def test_no_connack_is_a_failed_attempt(
    tmp_path: Path, proxy: Proxy, sub: SessionSubscriber, caplog: pytest.LogCaptureFixture
) -> None:
    config = synthetic_config(tmp_path, proxy.port, keepalive=1.0)
    caplog.set_level(logging.INFO, logger="agent")
    agent = make_agent(config)
    agent.publisher.ack_timeout = 1.0  # the CONNACK wait; the default is max(keepalive, 10 s)
    proxy.freeze("both")  # TCP is accepted, the CONNECT is held: no CONNACK
    async with running(agent):
        await until(
            lambda: any("no CONNACK" in line for line in broker_lines(caplog)), 30, "timeout"
        )
        await until(lambda: proxy.accepted >= 2, 30, "attempted again")
        assert not agent.publisher.connected
        proxy.resume()
        await until(lambda: agent.publisher.connected, 30, "connected")
        await until(lambda: caught_up(sub, 50), 30, "backlog delivered")
    assert_nothing_missing(sub.snapshot(), buffer_stats(config.gateway.data_dir))
    assert_no_errors(caplog)
    timeouts = [line for line in broker_lines(caplog) if "no CONNACK" in line]
    assert len(timeouts) == 1, timeouts  # said once, not at every attempt
