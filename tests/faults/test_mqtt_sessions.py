"""MQTT sessions (issue 3 point 11): the publisher keeps one session across reconnects, so
what was in flight at a cut is re-sent by the client (same packet id, DUP set) and not sent a
second time from the buffer. Both protocol versions, against Mosquitto with persistence; the
broker's own log shows the CONNECT flags and the DUP re-sends.

With MQTT 5 topic aliases (issue 13: a data message names its topic by a 2-byte alias after
the first on a connection) a cut message cannot be re-sent by the session (its alias means
nothing on the next connection): the client starts a new session and the rows go again from
the buffer, each sample still forwarded at most twice; the proxy records every PUBLISH to
show that no connection ever used an alias it had not set."""

from __future__ import annotations

import logging
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
from tests.support.mqtt_wire import resolve_topics
from tests.support.proxy import Proxy

pytestmark = pytest.mark.broker

CLIENT_ID = "citygate-gw-faults"


@pytest.fixture
def broker(tmp_path: Path, aliases: bool) -> Iterator[Mosquitto]:
    extra = "" if aliases else "max_topic_alias 0\n"  # Mosquitto allows 10 by default
    b = persistent_broker(tmp_path / "mosquitto", log_all=True, extra_conf=extra)
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


@pytest.mark.parametrize(
    ("protocol", "wire", "aliases"),
    [("5", "p5", True), ("5", "p5", False), ("3.1.1", "p2", False)],
    ids=["5-aliases", "5-no-aliases", "3.1.1"],
)
async def test_in_flight_messages_at_a_cut_are_resent_by_the_session(
    tmp_path: Path,
    broker: Mosquitto,
    protocol: str,
    wire: str,
    aliases: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "citygate.mqtt.client")
    sub = SessionSubscriber(broker.port).start()
    with Proxy(broker.port, record_publishes=True) as proxy:
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
    # Never started clean (clean start off in v5, clean session off in 3.1.1).
    assert connects(broker)[:2] == [(wire, "c0"), (wire, "c0")]
    if protocol == "5":
        named = resolve_topics(proxy.publishes)  # raises on an alias its connection lacks
        data = [p for topic, p in named if topic.endswith("/data")]
        alias_only = [p for p in data if not p.topic]
        assert bool(alias_only) == aliases
        assert all(p.content_type == "application/senml+json" for p in data)
    if aliases:
        # a new session (no DUP re-send by the old one); the rows went again from the buffer
        assert agent.publisher.session_renewals >= 1
        assert "publishes sent with a topic alias were cut" in caplog.text
        copies = Counter(r.seq for r in sub.snapshot())
        assert max(copies.values()) <= 2
        return
    # The client re-sent what was in flight, flagged DUP ...
    assert dup_publishes(broker) >= 1
    # ... and the publisher did not send those rows again from the buffer: the broker forwarded
    # each sample at most twice (before the cut, whose PUBACK was lost, and the DUP re-send).
    copies = Counter(r.seq for r in sub.snapshot())
    assert max(copies.values()) <= 2


async def test_aliased_publishes_cut_then_a_broker_without_aliases(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages in flight with topic aliases, then the broker is replaced by one that allows
    none (a cluster member configured differently, an upgrade): the old session would re-send
    them with aliases and be thrown out for ever; a new session sends them with topics."""
    caplog.set_level(logging.INFO, "citygate.mqtt.client")
    first = persistent_broker(tmp_path / "first", log_all=True, extra_conf="max_topic_alias 2\n")
    first.start()
    second: Mosquitto | None = None
    try:
        with Proxy(first.port, record_publishes=True) as proxy:
            # 3 devices, 2 aliases: one topic always goes in full
            config = synthetic_config(tmp_path, proxy.port, devices=3, keepalive=60.0)
            agent = make_agent(config)
            async with running(agent):
                await until(lambda: agent.counters.messages_published >= 30, what="data flowing")
                proxy.freeze("down")
                await until(lambda: agent.publisher.in_flight >= 5, 30, "messages in flight")
                in_flight = {s.seq for s in await agent.buffer.fetch(0, 10**9)}
                first.stop()
                second = persistent_broker(
                    tmp_path / "second", port=first.port, extra_conf="max_topic_alias 0\n"
                )
                second.start()
                sub = SessionSubscriber(second.port).start()
                try:
                    proxy.cut()
                    proxy.resume()
                    await until(lambda: agent.publisher.session_renewals >= 1, 30, "renewed")
                    await until(lambda: in_flight <= sub.distinct(), 30, "re-sent")

                    # what was unacknowledged at the cut and everything newer reached the
                    # new broker (older rows went to the first one)
                    def delivered() -> bool:
                        seen = sub.distinct()
                        newest = max(seen, default=0)
                        return newest > max(in_flight) + 50 and seen >= in_flight | set(
                            range(max(in_flight), newest + 1)
                        )

                    await until(delivered, 30, "delivered after")
                finally:
                    sub.stop()
        named = resolve_topics(proxy.publishes)  # every alias known on its connection
        connections = sorted({number for number, _ in proxy.publishes})
        assert len(connections) >= 2
        on_first = [
            p
            for (number, _), (t, p) in zip(proxy.publishes, named, strict=True)
            if number == connections[0] and t.endswith("/data")
        ]
        used = {p.alias for p in on_first if p.alias is not None}
        assert used == {1, 2}  # the broker's maximum, no more
        assert any(not p.topic for p in on_first)
        later = [
            p
            for (number, _), (_, p) in zip(proxy.publishes, named, strict=True)
            if number != connections[0]
        ]
        assert later and all(p.alias is None and p.topic for p in later)
        assert_no_errors(caplog)
    finally:
        if second is not None:
            second.stop()
        first.stop()
