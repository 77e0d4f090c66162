"""MQTT sessions (issue 3 point 11): the publisher keeps one session across reconnects, so
what was in flight at a cut is re-sent by the client (same packet id, DUP set) and not sent a
second time from the buffer. Both protocol versions, against Mosquitto with persistence; the
broker's own log shows the CONNECT flags and the DUP re-sends."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.helpers import (
    SessionSubscriber,
    assert_no_errors,
    assert_nothing_missing,
    buffer_stats,
    caught_up,
    everything_arrived,
    make_agent,
    persistent_broker,
    running,
    synthetic_config,
    until,
)
from tests.support.broker import Mosquitto
from tests.support.proxy import Proxy

pytestmark = pytest.mark.broker

CLIENT_ID = "citygate-gw-faults"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = persistent_broker(tmp_path / "mosquitto", log_all=True)
    b.start()
    yield b
    b.stop()


def connects(broker: Mosquitto) -> list[tuple[str, str]]:
    """(protocol, clean flag) of each connection of the agent, from the broker's log
    (Mosquitto writes MQTT 3.1.1 as p2, 5 as p5)."""
    text = (broker.workdir / "mosquitto.log").read_text()
    return re.findall(rf"as {CLIENT_ID} \((p\d), (c\d)", text)


def dup_publishes(broker: Mosquitto) -> int:
    text = (broker.workdir / "mosquitto.log").read_text()
    return len(re.findall(rf"Received PUBLISH from {CLIENT_ID} \(d1, q1", text))


@pytest.mark.parametrize(("protocol", "wire"), [("5", "p5"), ("3.1.1", "p2")])
async def test_in_flight_messages_at_a_cut_are_resent_by_the_session(
    tmp_path: Path,
    broker: Mosquitto,
    protocol: str,
    wire: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sub = SessionSubscriber(broker.port).start()
    with Proxy(broker.port) as proxy:
        config = synthetic_config(tmp_path, proxy.port, protocol=protocol, keepalive=60.0)
        agent = make_agent(config)
        try:
            async with running(agent):
                await until(lambda: len(sub.distinct()) >= 50, what="data flowing")
                # The broker takes the messages; its PUBACKs are held in the proxy.
                proxy.freeze("down")
                await until(lambda: agent.publisher.in_flight >= 5, 30, "messages in flight")
                in_flight = {s.seq for s in await agent.buffer.fetch(0, 10**9)}
                proxy.cut()
                proxy.resume()
                await until(lambda: agent.counters.broker_reconnects >= 1, 30, "reconnected")
                await until(lambda: caught_up(sub, max(in_flight) + 20), 30, "delivered")
            await everything_arrived(sub, config.gateway.data_dir)
        finally:
            sub.stop()
    assert in_flight <= sub.distinct()
    assert_nothing_missing(sub.snapshot(), buffer_stats(config.gateway.data_dir))
    assert_no_errors(caplog)
    # One session, never started clean (clean start off in v5, clean session off in 3.1.1).
    assert connects(broker)[:2] == [(wire, "c0"), (wire, "c0")]
    # The client re-sent what was in flight, flagged DUP ...
    assert dup_publishes(broker) >= 1
    # ... and the publisher did not send those rows again from the buffer: the broker forwarded
    # each sample at most twice (before the cut, whose PUBACK was lost, and the DUP re-send).
    copies = Counter(r.seq for r in sub.snapshot())
    assert max(copies.values()) <= 2
