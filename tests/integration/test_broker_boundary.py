"""What the broker may do to the agent (issue 11), against a real Mosquitto:

* refuse a device's data (ACL: PUBACK 0x87): the rows stay buffered, are counted, the other
  devices flow, and all arrives once the ACL is fixed;
* hand the agent traffic it never asked for (a subscription to ``#`` planted in its session by
  another client with its client id, then a flood): dropped on arrival, counted, memory flat,
  and a message above the announced maximum packet size never reaches it;
* shut down cleanly (DISCONNECT 0x8B): said as such;
* come back after an outage: the agent is back within seconds;
* refuse the credentials (CONNACK 0x87): the agent retries gently, and says why;
* be one node of a cluster (``url`` list) and die mid-load: the other takes over, nothing lost.

The agent runs in-process with synthetic devices (tests/faults/helpers.py), so the test can see
its counters. Bounds on time are generous; the figures are measured by ``make bench``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citygate.buffer import open_readonly_stats
from citygate.status import rss_bytes
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

pytestmark = pytest.mark.broker

CLIENT_ID = "citygate-gw-faults"
SUBSCRIBER_ACL = "topic read #\n"


def acl_broker(workdir: Path, acl: str) -> Mosquitto:
    """A persistent Mosquitto whose anonymous clients get what ``acl`` allows."""
    workdir.mkdir(parents=True, exist_ok=True)
    acl_file = workdir / "acl"
    acl_file.write_text(acl)
    broker = persistent_broker(workdir)
    broker.extra_conf += f"acl_file {acl_file}\n"
    return broker


def allow(*topics: str) -> str:
    return SUBSCRIBER_ACL + "".join(f"topic write {t}\n" for t in topics)


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = persistent_broker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


async def test_a_refused_device_keeps_its_data_and_holds_back_no_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    base = "city/gw-faults"
    everything_but_dev1 = allow(
        f"{base}/status", f"{base}/info", f"{base}/metrics", f"{base}/dev-0/#", f"{base}/dev-2/#"
    )
    broker = acl_broker(tmp_path / "mosquitto", everything_but_dev1)
    broker.start()
    sub = SessionSubscriber(broker.port).start()
    config = synthetic_config(tmp_path, broker.port)
    agent = make_agent(config)
    try:
        async with running(agent):
            await until(lambda: agent.publisher.refused_samples >= 20, 30, "refusals counted")
            dev1 = {r.seq for r in sub.snapshot() if r.device == "dev-1"}
            assert dev1 == set()
            # The others flow meanwhile.
            others = len(sub.distinct())
            await until(lambda: len(sub.distinct()) > others + 100, 30, "other devices flowing")
            assert (await agent.buffer.stats()).backlog_samples >= 20
            assert (await agent.publisher.metrics())["refused_samples"] >= 20
            # Fix the ACL (SIGHUP: Mosquitto reloads it): everything held back arrives.
            (broker.workdir / "acl").write_text(SUBSCRIBER_ACL + "topic write city/#\n")
            assert broker.process is not None
            broker.process.send_signal(signal.SIGHUP)
            await until(
                lambda: any(r.device == "dev-1" for r in sub.snapshot()), 90, "dev-1 delivered"
            )
            newest = max(sub.distinct())
            await until(lambda: caught_up(sub, newest + 20), 30, "all caught up")
        await everything_arrived(sub, config.gateway.data_dir)
    finally:
        sub.stop()
        broker.stop()
    assert_nothing_missing(sub.snapshot(), buffer_stats(config.gateway.data_dir))
    assert_no_errors(caplog)
    # What `citygate status --json` reports as refused_samples (agent/cli.py).
    _, statuses = open_readonly_stats(config.gateway.data_dir / "buffer.sqlite3")
    assert json.loads(statuses["#publisher"])["refused_samples"] >= 20
    refused = messages(caplog, "broker refuses data of dev-1")
    assert len(refused) == 1, refused  # once per episode, with the reason
    assert "Not authorized (0x87)" in refused[0]
    assert messages(caplog, "broker accepts data of dev-1 again")


def plant_subscription(port: int) -> None:
    """Another client connects with the agent's client id and subscribes to ``#`` in the
    session the agent will resume."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe("#", qos=1)
    time.sleep(0.5)  # the SUBACK (a helper thread of the test, not the agent)
    client.disconnect()
    client.loop_stop()


FLOODER = """
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, count, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder", protocol=mqtt.MQTTv5)
c.max_queued_messages_set(0)
c.connect("127.0.0.1", port)
c.loop_start()
payload = b"x" * size
for i in range(count):
    c.publish("flood/x", payload, qos=0).wait_for_publish(5)
c.publish("flood/huge", b"y" * (1024 * 1024), qos=0).wait_for_publish(5)
time.sleep(0.5)
c.disconnect()
c.loop_stop()
"""


async def test_a_planted_subscription_and_a_flood_are_dropped(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    plant_subscription(broker.port)
    sub = SessionSubscriber(broker.port).start()
    config = synthetic_config(tmp_path, broker.port)
    agent = make_agent(config)
    try:
        async with running(agent):
            await until(lambda: len(sub.distinct()) >= 50, 30, "data flowing")
            client = agent.publisher._session.client
            assert client is not None
            before_rss = rss_bytes()
            flood = subprocess.Popen(
                [sys.executable, "-c", FLOODER, str(broker.port), "30000", "1024"],
                env={**os.environ},
            )
            try:
                await until(lambda: flood.poll() is not None, 60, "the flood sent")
            finally:
                flood.kill()
            await until(lambda: client.unsolicited >= 30000, 30, "the flood received")
            grown = rss_bytes() - before_rss
            newest = max(sub.distinct())
            await until(lambda: caught_up(sub, newest + 20), 30, "data flowing after the flood")
            metrics = await agent.publisher.metrics()
        await everything_arrived(sub, config.gateway.data_dir)
    finally:
        sub.stop()
    assert_nothing_missing(sub.snapshot(), buffer_stats(config.gateway.data_dir))
    assert_no_errors(caplog)
    # Counted and dropped; the 1 MiB message is above the announced maximum packet size.
    assert metrics["unsolicited_messages"] >= 30000
    assert client.unsolicited_bytes < 30000 * 1024 + 256 * 1024
    assert grown < 20 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB under the flood"


async def test_a_connection_closed_by_the_broker_is_said_plainly(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    # Another client takes the session over: Mosquitto 2.0 closes the agent's connection
    # without a DISCONNECT packet (so does its shutdown: see the scripted broker below for a
    # DISCONNECT with a reason code).
    caplog.set_level(logging.INFO)
    sub = SessionSubscriber(broker.port).start()
    config = synthetic_config(tmp_path, broker.port)
    agent = make_agent(config)
    try:
        async with running(agent):
            await until(lambda: len(sub.distinct()) >= 20, 30, "data flowing")
            plant_subscription(broker.port)  # connects with the agent's client id
            await until(lambda: messages(caplog, "retrying"), 30, "the loss logged")
            await until(lambda: agent.publisher.connected, 30, "connected again")
    finally:
        sub.stop()
    lost = messages(caplog, "retrying")[0]
    assert "connection lost (closed by the peer)" in lost, lost
    assert "Unspecified error" not in lost
    assert "MqttCodeError" not in lost


async def test_a_broker_shutting_down_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A scripted MQTT 5 broker: CONNACK, then DISCONNECT 0x8B (server shutting down)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        writer.write(bytes([0x20, 0x03, 0x00, 0x00, 0x00]))  # CONNACK: success
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(bytes([0xE0, 0x02, 0x8B, 0x00]))  # DISCONNECT: server shutting down
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = synthetic_config(tmp_path, port)
    agent = make_agent(config)
    async with server, running(agent):
        await until(lambda: messages(caplog, "retrying"), 30, "the loss logged")
    lost = messages(caplog, "retrying")[0]
    assert "the broker closed the connection: Server shutting down (0x8B)" in lost, lost
    assert "Unspecified error" not in lost


async def test_back_within_seconds_after_an_outage(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    sub = SessionSubscriber(broker.port).start()
    config = synthetic_config(tmp_path, broker.port)
    agent = make_agent(config)
    try:
        async with running(agent):
            await until(lambda: len(sub.distinct()) >= 20, 30, "data flowing")
            broker.stop()
            await asyncio.sleep(8)  # the outage: long enough for an uncapped backoff to grow
            seen = len(sub.distinct())
            broker.start()
            back = time.monotonic()
            await until(lambda: len(sub.distinct()) > seen, 30, "the first sample after")
            took = time.monotonic() - back
            newest = max(sub.distinct())
            await until(lambda: caught_up(sub, newest + 20), 30, "backlog delivered")
        await everything_arrived(sub, config.gateway.data_dir)
    finally:
        sub.stop()
    assert_nothing_missing(sub.snapshot(), buffer_stats(config.gateway.data_dir))
    assert took < 10, f"first sample {took:.1f} s after the broker was back"  # spec: 5 s


async def test_refused_credentials_back_off_gently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", anonymous=False, extra_conf="log_type all\n")
    broker.start()
    config = synthetic_config(tmp_path, broker.port, username="nobody", password="wrong")
    agent = make_agent(config)
    try:
        async with running(agent):
            await until(lambda: messages(caplog, "retrying"), 30, "the refusal logged")
            started = time.monotonic()
            await until(lambda: time.monotonic() - started > 12, 20, "a while")
            attempts = broker.log_text().count(f"as {CLIENT_ID}")
    finally:
        broker.stop()
    refusal = messages(caplog, "retrying")
    assert len(refusal) == 1, refusal
    assert "Not authorized (0x87)" in refusal[0] or "Bad user name" in refusal[0], refusal
    assert "credentials were refused" in refusal[0]
    # Full-speed retries (≤ 4 s apart) would make ~8 or more in 12 s; gentle ones ≤ 5.
    assert attempts <= 6, attempts


@pytest.fixture
def two_brokers(tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    a = persistent_broker(tmp_path / "a")
    b = persistent_broker(tmp_path / "b")
    a.start()
    b.start()
    yield a, b
    a.stop()
    b.stop()


async def test_a_cluster_node_dies_mid_load_and_the_other_takes_over(
    tmp_path: Path, two_brokers: tuple[Mosquitto, Mosquitto], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    a, b = two_brokers
    sub_a = SessionSubscriber(a.port, client_id="sub-a").start()
    sub_b = SessionSubscriber(b.port, client_id="sub-b").start()
    config = synthetic_config(tmp_path, a.port, urls=(a.url, b.url))
    agent = make_agent(config)
    try:
        async with running(agent):
            await until(lambda: len(sub_a.distinct()) >= 100, 30, "data flowing to a")
            a.kill()  # mid-load, no goodbye
            await until(lambda: len(sub_b.distinct()) >= 100, 30, "data flowing to b")
            newest = max(sub_b.distinct())
            await until(
                lambda: (sub_a.distinct() | sub_b.distinct()) >= set(range(1, newest + 20)),
                30,
                "every seq at one or the other",
            )
    finally:
        sub_a.stop()
        sub_b.stop()
    stats = buffer_stats(config.gateway.data_dir)
    records = sub_a.snapshot() + sub_b.snapshot()
    assert {r.seq for r in records} >= set(range(1, newest + 20))
    for sub in (sub_a, sub_b):  # per device, in seq order at each node
        first: dict[str, list[int]] = {}
        seen: set[int] = set()
        for r in sub.snapshot():
            if r.seq not in seen:
                seen.add(r.seq)
                first.setdefault(r.device, []).append(r.seq)
        for device, seqs in first.items():
            assert seqs == sorted(seqs), device
    assert stats.dropped_samples == 0
    assert_no_errors(caplog)
    assert messages(caplog, f"broker {b.url}: connected again")


async def test_a_busy_broker_is_retried_gently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A scripted MQTT 5 broker answering every CONNECT with CONNACK 0x89 (server busy)."""
    attempts: list[float] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the CONNECT
        attempts.append(time.monotonic())
        writer.write(bytes([0x20, 0x03, 0x00, 0x89, 0x00]))  # CONNACK: server busy
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    agent = make_agent(synthetic_config(tmp_path, port))
    async with server, running(agent):
        await until(lambda: attempts, 30, "a first attempt")
        await asyncio.sleep(12)
    refusal = messages(caplog, "retrying")
    assert len(refusal) == 1, refusal
    assert "Server busy (0x89)" in refusal[0], refusal
    assert "the broker asks to wait" in refusal[0]
    # Full-speed retries (≤ 4 s apart) would make ~8 or more in 12 s; gentle ones ≤ 5.
    assert len(attempts) <= 6, attempts
