"""The reference broker ACL (issue 14 point 4): a real Mosquitto runs with exactly the shipped
``config/mosquitto-acl.example`` and a password file for two gateways and the operator.

A gateway (username = its gateway id) reads only its own command requests and writes only under
its own ``city/<id>/``; the operator commands every gateway and reads everything. Mosquitto 2
accepts every SUBSCRIBE and applies ``read`` per message, so "nothing arrives" is shown with a
marker: a message on an allowed topic sent after the forbidden ones, which the broker queues in
order; when the marker is in, a forbidden message that was going to arrive would be in too.
Then the agent itself, as ``gw-a`` under this ACL: everything it publishes is accepted, its
command channel answers the operator, and logged in with another gateway's account it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citygate.config import CommandSettings, Config
from tests.faults.helpers import assert_no_errors, make_agent, running, synthetic_config
from tests.integration.test_mqtt_auth import write_password_file
from tests.support.broker import Mosquitto
from tests.support.wait import DEFAULT_TIMEOUT, until, wait_until

pytestmark = pytest.mark.broker

ACL_FILE = Path(__file__).resolve().parents[2] / "config" / "mosquitto-acl.example"
PASSWORDS = {
    "gw-a": "gw-a-Secret-1",
    "gw-b": "gw-b-Secret-2",
    "operator": "operator-Secret-3",
    "homeassistant": "homeassistant-Secret-4",
}
NOT_AUTHORIZED = 0x87
PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
_CLIENT_NUMBERS = itertools.count()  # two clients with one id would throw each other out


@contextlib.contextmanager
def reference_acl_broker(tmp_path: Path, accounts: dict[str, str]) -> Iterator[Mosquitto]:
    """A Mosquitto enforcing the shipped config/mosquitto-acl.example, with these accounts
    (user name → password; a gateway's user name is its id)."""
    passwords = write_password_file(tmp_path / "mosquitto.passwd", accounts)
    b = Mosquitto(
        tmp_path / "mosquitto",
        anonymous=False,
        extra_conf=f"password_file {passwords}\nacl_file {ACL_FILE}\n",
    )
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with reference_acl_broker(tmp_path, PASSWORDS) as b:
        yield b


class Peer:
    """A paho client on its own thread, logged in as one of ``PASSWORDS``: it records what it
    receives, and :meth:`publish` returns the PUBACK's reason code."""

    def __init__(self, port: int, username: str, protocol: str = "5") -> None:
        self.name = f"{username} (MQTT {protocol})"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"acl-test-{username}-{next(_CLIENT_NUMBERS)}",
            protocol=PROTOCOLS[protocol],
        )
        self.client.username_pw_set(username, PASSWORDS[username])
        self._lock = threading.Lock()
        self._received: list[tuple[str, bytes]] = []
        self.correlation: dict[str, bytes] = {}  # topic -> the last MQTT 5 Correlation Data
        self._acks: dict[int, list[int]] = {}  # mid -> reason codes (PUBACK or SUBACK)
        self._connected: list[int] = []
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        wait_until(lambda: self._connected, what=f"{self.name}: CONNACK")
        assert self._connected == [0], f"{self.name}: connection refused {self._connected}"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, *_: Any) -> None:
        with self._lock:
            self._connected.append(rc.value)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self._lock:
            self._received.append((msg.topic, bytes(msg.payload)))
            if correlation is not None:
                self.correlation[msg.topic] = bytes(correlation)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, *_: Any) -> None:
        with self._lock:
            self._acks[mid] = [rc.value]

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, *_: Any
    ) -> None:
        with self._lock:
            self._acks[mid] = [rc.value for rc in rcs]

    def _ack(self, mid: int | None, what: str) -> list[int]:
        assert mid is not None, f"{self.name}: {what}: the client sent nothing"

        def done() -> list[int]:
            with self._lock:
                return self._acks.pop(mid, [])  # an ack has at least one reason code

        return wait_until(done, DEFAULT_TIMEOUT, f"{self.name}: {what}")

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe (QoS 1); the SUBACK's reason codes (1: granted QoS 1)."""
        _, mid = self.client.subscribe(topic, qos=1)
        return self._ack(mid, f"SUBACK of {topic}")

    def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> int:
        """Publish (QoS 1, not retained); the PUBACK's reason code (0: accepted)."""
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        (reason,) = self._ack(info.mid, f"PUBACK of {topic}")
        return reason

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._received)

    def until_received(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Wait for (topic, payload); everything received up to and including it."""

        def arrived() -> list[tuple[str, bytes]]:
            got = self.received()
            return got[: got.index((topic, payload)) + 1] if (topic, payload) in got else []

        return wait_until(
            arrived,
            DEFAULT_TIMEOUT,
            f"{self.name}: {topic} {payload!r}",
            explain=lambda: f"received (the last 20) {self.received()[-20:]}",
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(broker: Mosquitto) -> Iterator[list[Peer]]:
    """Every peer a test opens, closed at its end."""
    opened: list[Peer] = []
    yield opened
    for peer in opened:
        peer.close()


def test_the_shipped_file_is_what_the_readme_describes() -> None:
    rules = [
        line.split()
        for line in ACL_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules == [
        ["pattern", "read", "city/%u/cmd/+"],
        ["pattern", "write", "city/%u/#"],
        ["user", "operator"],
        ["topic", "write", "city/+/cmd/+"],
        ["topic", "read", "city/#"],
        ["pattern", "write", "homeassistant/device/+/config"],
        ["pattern", "read", "homeassistant/status"],
        ["user", "homeassistant"],
        ["topic", "write", "homeassistant/status"],
        ["topic", "read", "homeassistant/#"],
        ["topic", "read", "city/#"],
    ]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_gateway_receives_its_own_commands_and_nothing_else(
    broker: Mosquitto, peers: list[Peer], protocol: str
) -> None:
    gw_a = Peer(broker.port, "gw-a", protocol)
    gw_b = Peer(broker.port, "gw-b", protocol)
    operator = Peer(broker.port, "operator")
    peers += [gw_a, gw_b, operator]
    # Mosquitto grants every subscription; the ACL acts on each message delivered.
    assert gw_a.subscribe("city/gw-a/cmd/+") == [1]
    assert gw_a.subscribe("city/gw-b/#") == [1]
    assert gw_a.subscribe("city/#") == [1]
    assert gw_b.subscribe("city/gw-b/cmd/+") == [1]

    # Each publish is acknowledged before the next, so the broker queues them to gw-a in order.
    assert operator.publish("city/gw-b/cmd/read", b'{"id": "for-b"}') == 0
    assert gw_b.publish("city/gw-b/meter-1/data", b"b-data") == 0
    assert gw_b.publish("city/gw-b/cmd/read/reply", b'{"id": "for-b", "ok": true}') == 0
    assert gw_a.publish("city/gw-a/meter-1/data", b"a-data") == 0  # its own: written, not read
    assert gw_a.publish("city/gw-a/cmd/read/reply", b'{"id": "x", "ok": true}') == 0
    assert operator.publish("city/gw-a/cmd/read", b'{"id": "for-a"}') == 0

    # Its own command arrives (once per matching subscription); nothing before it.
    seen = gw_a.until_received("city/gw-a/cmd/read", b'{"id": "for-a"}')
    assert {topic for topic, _ in seen} == {"city/gw-a/cmd/read"}, seen
    assert gw_b.until_received("city/gw-b/cmd/read", b'{"id": "for-b"}') == [
        ("city/gw-b/cmd/read", b'{"id": "for-b"}')
    ]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_gateway_cannot_write_for_another(
    broker: Mosquitto, peers: list[Peer], protocol: str
) -> None:
    gw_a = Peer(broker.port, "gw-a", protocol)
    operator = Peer(broker.port, "operator")
    gw_b = Peer(broker.port, "gw-b")
    peers += [gw_a, operator, gw_b]
    assert operator.subscribe("city/#") == [1]
    assert gw_b.subscribe("city/gw-b/cmd/+") == [1]

    forbidden = [
        "city/gw-b/meter-1/data",
        "city/gw-b/status",
        "city/gw-b/cmd/read/reply",
        "city/gw-b/cmd/read",  # a gateway cannot command another one
        "city/other/x",
        "elsewhere/x",
    ]
    reasons = [gw_a.publish(topic, b"forged") for topic in forbidden]
    # MQTT 5 is told (0x87 Not authorized); MQTT 3.1.1 gets a plain PUBACK: silently dropped.
    assert reasons == [NOT_AUTHORIZED if protocol == "5" else 0] * len(forbidden)

    assert gw_a.publish("city/gw-a/meter-1/data", b"marker") == 0
    seen = operator.until_received("city/gw-a/meter-1/data", b"marker")
    assert seen == [("city/gw-a/meter-1/data", b"marker")]
    assert gw_b.received() == []  # its command topic: what it would have got came before marker


def test_a_gateway_writes_its_data_and_replies_and_the_operator_gets_them(
    broker: Mosquitto, peers: list[Peer]
) -> None:
    gw_a = Peer(broker.port, "gw-a")
    operator = Peer(broker.port, "operator")
    peers += [gw_a, operator]
    assert operator.subscribe("city/#") == [1]
    assert gw_a.subscribe("city/gw-a/cmd/+") == [1]

    request = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    request.ResponseTopic = "city/gw-a/cmd/read/reply/op-7"
    request.CorrelationData = b"op-7"
    assert operator.publish("city/gw-a/cmd/read", b'{"id": "r1"}', request) == 0
    gw_a.until_received("city/gw-a/cmd/read", b'{"id": "r1"}')

    published = [
        ("city/gw-a/status", b"online"),
        ("city/gw-a/info", b"{}"),
        ("city/gw-a/metrics", b"{}"),
        ("city/gw-a/meter-1/data", b"[]"),
        ("city/gw-a/meter-1/status", b"{}"),
        ("city/gw-a/cmd/read/reply", b'{"id": "r0", "ok": true}'),
        ("city/gw-a/cmd/read/reply/op-7", b'{"id": "r1", "ok": true}'),  # its Response Topic
    ]
    assert [gw_a.publish(topic, payload) for topic, payload in published] == [0] * len(published)
    # A Response Topic outside the gateway's own tree is refused.
    assert gw_a.publish("operator/inbox", b'{"id": "r1", "ok": true}') == NOT_AUTHORIZED
    seen = operator.until_received(*published[-1])
    assert seen == [("city/gw-a/cmd/read", b'{"id": "r1"}'), *published]


def test_the_operator_commands_every_gateway_and_forges_nothing(
    broker: Mosquitto, peers: list[Peer]
) -> None:
    gw_a = Peer(broker.port, "gw-a")
    gw_b = Peer(broker.port, "gw-b")
    operator = Peer(broker.port, "operator")
    watcher = Peer(broker.port, "operator")
    peers += [gw_a, gw_b, operator, watcher]
    assert gw_a.subscribe("city/gw-a/cmd/+") == [1]
    assert gw_b.subscribe("city/gw-b/cmd/+") == [1]
    assert watcher.subscribe("city/#") == [1]

    assert operator.publish("city/gw-a/cmd/status", b'{"id": "a1"}') == 0
    assert operator.publish("city/gw-b/cmd/status", b'{"id": "b1"}') == 0
    # Only requests: a gateway's data, status or replies cannot be forged by the operator.
    for topic in ("city/gw-a/meter-1/data", "city/gw-a/status", "city/gw-a/cmd/status/reply"):
        assert operator.publish(topic, b"forged") == NOT_AUTHORIZED
    assert operator.publish("city/gw-b/cmd/status", b'{"id": "b2"}') == 0

    assert gw_a.until_received("city/gw-a/cmd/status", b'{"id": "a1"}') == [
        ("city/gw-a/cmd/status", b'{"id": "a1"}')
    ]
    assert gw_b.until_received("city/gw-b/cmd/status", b'{"id": "b2"}') == [
        ("city/gw-b/cmd/status", b'{"id": "b1"}'),
        ("city/gw-b/cmd/status", b'{"id": "b2"}'),
    ]
    assert [t for t, _ in watcher.until_received("city/gw-b/cmd/status", b'{"id": "b2"}')] == [
        "city/gw-a/cmd/status",
        "city/gw-b/cmd/status",
        "city/gw-b/cmd/status",
    ]


def agent_config(tmp_path: Path, port: int, username: str) -> Config:
    """Two synthetic devices on gateway ``gw-a``, logged in as ``username``."""
    config = synthetic_config(
        tmp_path,
        port,
        devices=2,
        interval=0.1,
        client_id="citygate-gw-a",
        username=username,
        password=PASSWORDS[username],
    )
    return dataclasses.replace(config, gateway=dataclasses.replace(config.gateway, id="gw-a"))


def metrics_of(operator: Peer) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in operator.received() if t == "city/gw-a/metrics"]


async def test_the_agent_works_under_the_acl(
    tmp_path: Path, broker: Mosquitto, peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    operator = Peer(broker.port, "operator")
    peers.append(operator)
    assert operator.subscribe("city/#") == [1]
    agent = make_agent(agent_config(tmp_path, broker.port, "gw-a"))
    async with running(agent):

        def arrived() -> bool:
            topics = {topic for topic, _ in operator.received()}
            return {
                "city/gw-a/status",
                "city/gw-a/info",
                "city/gw-a/dev-0/data",
                "city/gw-a/dev-1/data",
                "city/gw-a/dev-0/status",
            } <= topics and any(m["samples_published"] >= 10 for m in metrics_of(operator))

        await until(arrived, what="the agent's messages at the operator")
        assert agent.publisher.refused_samples == 0
    assert ("city/gw-a/status", b"online") in operator.received()
    assert all(m["refused_samples"] == 0 for m in metrics_of(operator))
    assert not [r for r in caplog.records if "refuses" in r.getMessage()]
    assert_no_errors(caplog)


async def test_a_gateway_logged_in_as_another_is_refused(
    tmp_path: Path, broker: Mosquitto, peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    """The counter-check of the test above: gateway gw-a with gw-b's account writes nothing."""
    operator = Peer(broker.port, "operator")
    peers.append(operator)
    assert operator.subscribe("city/#") == [1]
    agent = make_agent(agent_config(tmp_path, broker.port, "gw-b"))
    refusals = [
        f"broker refuses data of {device} (city/gw-a/{device}/data): Not authorized (0x87)"
        for device in ("dev-0", "dev-1")
    ]
    async with running(agent):
        await until(lambda: all(r in caplog.text for r in refusals), what="both devices refused")
        assert agent.publisher.refused_samples >= 2
    assert "broker refuses city/gw-a/status: Not authorized (0x87)" in caplog.text
    assert not [t for t, _ in operator.received() if t.startswith("city/gw-a/")]


async def ask(operator: Peer, topic: str, request: bytes, reply_topic: str, **props: Any) -> Any:
    """Send a command until its reply comes (the same ``id`` each time: the gateway runs it
    once and repeats its reply), since no signal says when the agent has subscribed."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in props.items():
        setattr(properties, name, value)

    def reply() -> bytes:
        return next((p for t, p in operator.received() if t == reply_topic), b"")

    for _ in range(30):
        assert await asyncio.to_thread(operator.publish, topic, request, properties) == 0
        with contextlib.suppress(AssertionError):
            return json.loads(await until(reply, 2, f"a reply on {reply_topic}"))
    others = sorted({t for t, _ in operator.received() if not t.endswith(("/data", "/metrics"))})
    raise AssertionError(f"no reply on {reply_topic}; topics besides data and metrics: {others}")


async def test_remote_commands_work_under_the_acl(
    tmp_path: Path, broker: Mosquitto, peers: list[Peer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    operator = Peer(broker.port, "operator")
    peers.append(operator)
    assert operator.subscribe("city/#") == [1]
    config = agent_config(tmp_path, broker.port, "gw-a")
    agent = make_agent(dataclasses.replace(config, commands=CommandSettings(enabled=True)))
    async with running(agent):
        # MQTT 5 with a Response Topic under the gateway's tree (as `citygate cmd` does).
        read = await ask(
            operator,
            "city/gw-a/cmd/read",
            b'{"id": "acl-read-1", "device": "dev-0"}',
            "city/gw-a/cmd/read/reply/acl-token",
            ResponseTopic="city/gw-a/cmd/read/reply/acl-token",
            CorrelationData=b"acl-token",
        )
        # No Response Topic: the reply goes to P/G/cmd/<name>/reply.
        status = await ask(
            operator,
            "city/gw-a/cmd/status",
            b'{"id": "acl-status-1"}',
            "city/gw-a/cmd/status/reply",
        )
        await until(lambda: metrics_of(operator), what="a metrics message")
        assert agent.publisher.refused_samples == 0
    assert read["id"] == "acl-read-1" and read["ok"] is True, read
    assert read["result"]["readings"], read
    assert operator.correlation["city/gw-a/cmd/read/reply/acl-token"] == b"acl-token"
    assert status["id"] == "acl-status-1" and status["ok"] is True, status
    assert all(m["refused_samples"] == 0 for m in metrics_of(operator))
    assert all(m.get("unsolicited_messages", 0) == 0 for m in metrics_of(operator))
    assert not [r for r in caplog.records if "refuse" in r.getMessage()]
    assert not [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert_no_errors(caplog)


def test_home_assistant_discovery_under_the_acl(broker: Mosquitto, peers: list[Peer]) -> None:
    """A gateway publishes device discovery and hears Home Assistant's birth message; Home
    Assistant reads discovery and states; nothing else under the discovery prefix is writable."""
    gw_a = Peer(broker.port, "gw-a")
    hass = Peer(broker.port, "homeassistant")
    peers += [gw_a, hass]
    assert hass.subscribe("homeassistant/#") == [1]
    assert hass.subscribe("city/#") == [1]
    assert gw_a.subscribe("homeassistant/status") == [1]

    assert hass.publish("homeassistant/status", b"online") == 0
    gw_a.until_received("homeassistant/status", b"online")

    discovery = ("homeassistant/device/gw-a_meter-1/config", b'{"device": {}}')
    assert gw_a.publish(*discovery) == 0
    assert gw_a.publish("homeassistant/sensor/x/config", b"{}") == NOT_AUTHORIZED
    assert gw_a.publish("homeassistant/status", b"offline") == NOT_AUTHORIZED
    state = ("city/gw-a/meter-1/state", b'{"voltage_l1": 230.2}')
    assert gw_a.publish(*state) == 0
    seen = hass.until_received(*state)
    assert discovery in seen
    assert ("homeassistant/status", b"offline") not in seen
