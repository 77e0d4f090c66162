"""What RabbitMQ's MQTT plugin (Debian bookworm: 3.10.8) does with the parts of the contract
(../shared/spec/mqtt.md) a fleet relies on, measured on a real 3-node cluster
(tests/support/rabbitmq.py). The README's "RabbitMQ's MQTT plugin against the contract" cites
these tests; each asserts what the plugin does today, so an upgrade that changes it shows here.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.rabbitmq import INSTALL_HINT, Cluster, Node, rabbitmq_installed
from tests.support.wait import wait_until

pytestmark = [
    pytest.mark.skipif(not rabbitmq_installed(), reason=INSTALL_HINT),
    pytest.mark.timeout(300),
]

_ids = itertools.count()
QUIET = 1.5
"""Seconds to wait for a message that must NOT come (after one that must came, or a SUBACK)."""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3) as c:
        yield c


@dataclass
class Peer:
    """A paho MQTT 3.1.1 client on one node, recording what it receives."""

    node: Node
    client_id: str = field(default_factory=lambda: f"t{next(_ids)}-{time.monotonic_ns()}")
    clean: bool = True
    will: tuple[str, bytes] | None = None
    received: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.acks = threading.Semaphore(0)
        self.suback: list[Any] = []
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=self.clean,
            protocol=paho.MQTTv311,
        )
        if self.will is not None:
            self.client.will_set(self.will[0], self.will[1], qos=1, retain=True)
        self.client.on_message = self._message
        self.client.on_publish = lambda *_: self.acks.release()
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.suback.extend(codes)
        self.client.connect("127.0.0.1", self.node.mqtt_port, keepalive=30)
        self.client.loop_start()
        wait_until(self.client.is_connected, 30, f"{self.client_id} connected to {self.node.name}")

    def _message(self, client: Any, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.received.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def subscribe(self, topic: str) -> Any:
        self.client.subscribe(topic, qos=1)
        wait_until(lambda: self.suback, 30, f"SUBACK for {topic}")
        return self.suback[-1]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the PUBACK."""
        self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.acks.acquire(timeout=30), "no PUBACK"

    def messages(self) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Lose the connection without DISCONNECT (the will fires)."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.close()


def test_qos1_routed_across_nodes(cluster: Cluster) -> None:
    """A QoS 1 message published on one node reaches a subscriber on another; PUBACK comes."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    sub = Peer(b)
    assert sub.subscribe("q1/+/+/data") == 1
    pub = Peer(a)
    for i in range(20):
        pub.publish("q1/gw/dev/data", f"m{i}".encode())
    wait_until(lambda: len(sub.messages()) == 20, 30, "20 messages on the other node")
    assert [m[1] for m in sub.messages()] == [f"m{i}".encode() for i in range(20)]
    pub.close()
    sub.close()


def test_retained_status_is_per_node_and_exact_topic_only(cluster: Cluster) -> None:
    """The retained store is per node and not replicated: a retained ``status`` published on
    node 1 is sent to a new subscriber of that exact topic on node 1, not to one on node 2; and
    a wildcard subscription (``P/+/status``, what a monitoring platform uses) gets no retained
    message at all, even on node 1."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    pub = Peer(a)
    pub.publish("r1/gw-1/status", b"online", retain=True)
    pub.close()
    here = Peer(a)
    here.subscribe("r1/gw-1/status")
    wait_until(here.messages, 30, "the retained status on the same node")
    assert here.messages() == [("r1/gw-1/status", b"online", True)]
    there = Peer(b)
    there.subscribe("r1/gw-1/status")
    wildcard = Peer(a)
    wildcard.subscribe("r1/+/status")
    time.sleep(QUIET)
    assert there.messages() == [] and wildcard.messages() == []
    for p in (here, there, wildcard):
        p.close()


def test_will_fires_when_the_gateway_drops(cluster: Cluster) -> None:
    """A client that loses its connection (no DISCONNECT) gets its will published, also to
    subscribers on other nodes."""
    a, b = cluster.nodes[0], cluster.nodes[2]
    watcher = Peer(b)
    watcher.subscribe("w1/+/status")
    gw = Peer(a, will=("w1/gw-2/status", b"offline"))
    gw.publish("w1/gw-2/status", b"online", retain=True)
    gw.drop()
    wait_until(lambda: ("w1/gw-2/status", b"offline", False) in watcher.messages(), 30, "the will")
    watcher.close()


def test_shared_subscription_is_not_supported(cluster: Cluster) -> None:
    """3.10 has no ``$share``: the filter is granted but matches nothing, so sinks subscribed
    with ``--share`` would receive no data at all (they must not be used with this broker)."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    s1, s2 = Peer(a), Peer(b)
    assert s1.subscribe("$share/sinks/s1/+/+/data") == 1
    assert s2.subscribe("$share/sinks/s1/+/+/data") == 1
    plain = Peer(b)
    plain.subscribe("s1/+/+/data")
    pub = Peer(a)
    for i in range(10):
        pub.publish("s1/gw/dev/data", b"%d" % i)
    wait_until(lambda: len(plain.messages()) == 10, 30, "10 messages on a plain subscription")
    time.sleep(QUIET)
    assert s1.messages() == [] and s2.messages() == []
    for p in (s1, s2, plain, pub):
        p.close()


def _connect_packet(protocol_level: int, client_id: bytes) -> bytes:
    body = b"\x00\x04MQTT" + bytes([protocol_level, 0x02]) + struct.pack("!H", 30)
    if protocol_level == 5:
        body += b"\x00"  # no properties
    body += struct.pack("!H", len(client_id)) + client_id
    return bytes([0x10, len(body)]) + body


def test_mqtt5_is_refused(cluster: Cluster) -> None:
    """An MQTT 5 CONNECT gets no CONNACK at all: the plugin closes the connection (the agent
    sees a lost connection, not a refusal), so agents must use ``protocol = "3.1.1"``."""
    node = cluster.nodes[0]
    with socket.create_connection(("127.0.0.1", node.mqtt_port), timeout=10) as s:
        s.sendall(_connect_packet(5, b"v5-client"))
        answer = b""
        while chunk := s.recv(64):
            answer += chunk
    assert answer == b""
    with socket.create_connection(("127.0.0.1", node.mqtt_port), timeout=10) as s:
        s.sendall(_connect_packet(4, b"v311-client"))
        assert s.recv(4) == b"\x20\x02\x00\x00"


def test_persistent_session_survives_its_node(cluster: Cluster) -> None:
    """A clean-session-off subscriber (a sink) made on node 1 keeps its queue (a quorum queue)
    when node 1 is killed: messages published meanwhile come on its next connection, to node 2.
    Killing node 1 fires no will for the clients connected to it (the node that held the will
    is gone), and their retained status stays ``online`` on node 1."""
    a, b, c = cluster.nodes
    sink_id = f"sink-{time.monotonic_ns()}"
    first = Peer(a, client_id=sink_id, clean=False)
    assert first.subscribe("p1/+/+/data") == 1
    gw = Peer(a, will=("p1/gw-3/status", b"offline"))
    gw.publish("p1/gw-3/status", b"online", retain=True)
    watcher = Peer(c)
    watcher.subscribe("p1/+/status")
    first.close()
    pub = Peer(c)
    for i in range(5):
        pub.publish("p1/gw/dev/data", b"before-%d" % i)
    a.kill()
    try:
        for i in range(5):
            pub.publish("p1/gw/dev/data", b"during-%d" % i)
        again = Peer(b, client_id=sink_id, clean=False)
        want = {b"before-%d" % i for i in range(5)} | {b"during-%d" % i for i in range(5)}
        wait_until(lambda: {m[1] for m in again.messages()} >= want, 60, "the session's messages")
        assert not any(m[0] == "p1/gw-3/status" for m in watcher.messages())
        again.close()
    finally:
        a.start()
        cluster.wait_clustered(cluster.nodes)
    for p in (watcher, pub):
        p.close()
    gw.client.loop_stop()
