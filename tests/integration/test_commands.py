"""Remote commands end to end (mqtt.md "Commands"): `citygate run` as a subprocess with
``[commands] enabled``, a real Mosquitto, the Modbus TCP simulator, and requests sent by
`citygate cmd` (the operator's path) or by a paho client (MQTT 5 and 3.1.1)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import AgentProcess, SimProcess, modbus_config, run_cli
from tests.support.wait import wait_until as until

GW = "gw-e2e"
BASE = f"city/{GW}/cmd"


@dataclass
class Rig:
    broker: Mosquitto
    sim: SimProcess
    config: Path
    data_dir: Path
    agent: AgentProcess
    data: Subscriber


@dataclass
class Requester:
    """A paho client that publishes requests and collects the replies."""

    port: int
    protocol: int = mqtt.MQTTv5
    replies: list[mqtt.MQTTMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"req-{uuid.uuid4().hex[:8]}",
            protocol=self.protocol,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self.client.subscribe(f"{BASE}/#", qos=1)
        assert self.ready.wait(10)

    def _on_message(self, c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.count("/") >= 4:  # replies, not requests
            with self.lock:
                self.replies.append(msg)

    def send(
        self,
        name: str,
        payload: bytes | dict[str, Any],
        *,
        retain: bool = False,
        props: Properties | None = None,
    ) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(f"{BASE}/{name}", body, qos=1, retain=retain, properties=props)

    def replies_to(self, request_id: str) -> list[dict[str, Any]]:
        with self.lock:
            documents = [json.loads(m.payload) for m in self.replies]
        return [d for d in documents if d.get("id") == request_id]

    def reply(self, request_id: str, count: int = 1) -> dict[str, Any]:
        until(lambda: len(self.replies_to(request_id)) >= count, 10, f"reply to {request_id}")
        return self.replies_to(request_id)[-1]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _config(tmp: Path, broker: Mosquitto, sim: SimProcess, extra: str = "", mqtt: str = "") -> Path:
    return modbus_config(
        tmp / "gateway.toml",
        broker_port=broker.port,
        data_dir=tmp / "var",
        devices=[
            {
                "id": "meter-townhall",
                "driver": "modbus",
                "host": "127.0.0.1",
                "port": sim.port,
                "unit": 1,
                "profile": "eastron-sdm630",
                "interval": "30s",  # a read command's sample is then the only recent one
            }
        ],
        extra=mqtt + "\n[commands]\nenabled = true\nmax_per_minute = 20\n" + extra,
    )


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("commands")
    broker = Mosquitto(tmp / "mosquitto")
    broker.start()
    sim = SimProcess({1: "sdm630"})
    config = _config(tmp, broker, sim)
    data = Subscriber(broker.port).start()
    agent = AgentProcess(config)
    try:
        agent.wait_for_log("broker mqtt://")
        data.wait_for(lambda: data.snapshot(f"{GW}/meter-townhall/status"), timeout=20)
        until(lambda: subscribed(broker.port), 10, "the agent's subscription")
        yield Rig(broker, sim, config, tmp / "var", agent, data)
    finally:
        agent.stop()
        data.stop()
        sim.stop()
        broker.stop()
    assert "Traceback" not in agent.log


def subscribed(port: int) -> bool:
    """A status request answered: the agent's subscription is in place."""
    requester = Requester(port)
    try:
        request_id = f"probe-{uuid.uuid4().hex}"
        requester.send("status", {"id": request_id})
        try:
            until(lambda: requester.replies_to(request_id), 2, "probe")
        except AssertionError:
            return False
        return True
    finally:
        requester.stop()


async def start_commanded_agent(
    config: Path, broker: Mosquitto, metrics_interval: float | None = None
) -> AgentProcess:
    """`citygate run` on ``config``, once its command subscription answers (probed from a
    thread: the tests' simulators are served from this event loop)."""
    agent = AgentProcess(config, metrics_interval=metrics_interval)
    await asyncio.to_thread(agent.wait_for_log, "broker mqtt://")
    for _ in range(20):
        if await asyncio.to_thread(subscribed, broker.port):
            return agent
    raise AssertionError(f"the agent did not subscribe; log:\n{agent.log}")


def cmd(rig: Rig, *args: str) -> tuple[int, dict[str, Any] | None, str]:
    result = run_cli(
        "cmd", GW, *args, "--broker", f"mqtt://127.0.0.1:{rig.broker.port}", "--timeout", "8"
    )
    document = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, document, result.stderr


def test_status_via_citygate_cmd(rig: Rig) -> None:
    code, reply, err = cmd(rig, "status")
    assert code == 0, err
    assert reply is not None and reply["ok"] is True
    result = reply["result"]
    assert set(result) == {
        "backlog_samples",
        "backlog_bytes",
        "oldest_unsent_age_s",
        "dropped_samples",
        "refused_samples",
        "devices",
    }
    assert result["devices"]["meter-townhall"]["state"] == "online"


def test_read_via_citygate_cmd_matches_the_published_sample(rig: Rig) -> None:
    code, reply, err = cmd(rig, "read", "--device", "meter-townhall")
    assert code == 0, err
    assert reply is not None and reply["ok"] is True
    readings = {r["n"]: r for r in reply["result"]["readings"]}
    t = reply["result"]["t"]
    assert readings["voltage_l1"]["u"] == "V"
    assert 200.0 < readings["voltage_l1"]["v"] < 260.0
    assert 49.5 < readings["frequency"]["v"] < 50.5

    # The same sample went the normal way: buffer → data, with the very same values.
    def published() -> list[dict[str, Any]]:
        return [r for r in rig.data.data_records() if abs(float(r["bt"]) - t) < 0.002]

    rig.data.wait_for(lambda: len(published()) >= len(readings), timeout=10)
    for record in published():
        assert record["v"] == readings[record["n"]]["v"], record
    log_line = [line for line in rig.agent.lines if 'command "read"' in line]
    assert log_line and '"meter-townhall"' in log_line[-1] and ": ok" in log_line[-1]


def test_reply_to_response_topic_with_correlation_data(rig: Rig) -> None:
    requester = Requester(rig.broker.port)
    try:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"{BASE}/status/reply/mine"
        props.CorrelationData = b"\x00corr\xff"
        requester.send("status", {"id": "rt-1"}, props=props)
        requester.reply("rt-1")
        with requester.lock:
            (message,) = [m for m in requester.replies if json.loads(m.payload)["id"] == "rt-1"]
        assert message.topic == f"{BASE}/status/reply/mine"
        assert message.properties.CorrelationData == b"\x00corr\xff"  # type: ignore[union-attr]
        assert not message.retain
    finally:
        requester.stop()


def test_protocol_311_request_gets_reply_on_default_topic(rig: Rig) -> None:
    requester = Requester(rig.broker.port, protocol=mqtt.MQTTv311)
    try:
        requester.send("status", {"id": "v311-1"})
        reply = requester.reply("v311-1")
        assert reply["ok"] is True
        with requester.lock:
            topics = {m.topic for m in requester.replies if json.loads(m.payload)["id"] == "v311-1"}
        assert topics == {f"{BASE}/status/reply"}
    finally:
        requester.stop()


def test_refusals(rig: Rig) -> None:
    requester = Requester(rig.broker.port)
    try:
        requester.send("reboot", {"id": "r-unknown"})
        requester.send("read", {"id": "r-nodev", "device": "no-such-meter"})
        requester.send(
            "write",
            {"id": "r-write", "device": "meter-townhall", "args": {"name": "x", "value": 1}},
        )
        requester.send("status", {"id": "r-expired", "expires": time.time() - 60})
        requester.send("status", {"id": "r-badkey", "color": "red"})
        requester.send("status", b"{not json")
        requester.send("scan", {"id": "r-scan"})
        assert requester.reply("r-unknown")["error"]["code"] == "unknown_command"
        assert requester.reply("r-nodev")["error"]["code"] == "unknown_device"
        forbidden = requester.reply("r-write")
        assert forbidden["ok"] is False and forbidden["error"]["code"] == "forbidden"
        assert requester.reply("r-expired")["error"]["code"] == "expired"
        assert requester.reply("r-badkey")["error"]["code"] == "bad_request"
        assert requester.reply("r-scan")["error"]["code"] in ("forbidden", "unsupported")
        rig.agent.wait_for_log("malformed: not JSON", timeout=10)
        code, reply, _ = cmd(rig, "read", "--device", "nope")
        assert code == 1 and reply is not None and reply["error"]["code"] == "unknown_device"
    finally:
        requester.stop()


def test_flood_beyond_max_per_minute_answers_busy(rig: Rig) -> None:
    requester = Requester(rig.broker.port)
    try:
        ids = [f"flood-{i}" for i in range(40)]
        for request_id in ids:
            requester.send("status", {"id": request_id})
        until(lambda: all(requester.replies_to(i) for i in ids), 10, "40 replies")
        codes = [requester.replies_to(i)[0].get("error", {}).get("code", "ok") for i in ids]
        assert codes.count("busy") >= 20
        assert set(codes) <= {"ok", "busy"}
    finally:
        requester.stop()


def test_retained_and_duplicate_requests_also_after_restart(tmp_path: Path) -> None:
    """A retained request (delivered flagged retained when the agent subscribes) is not
    executed; a repeated id gets the first reply and runs once, also after a restart."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    sim = SimProcess({1: "sdm630"})
    config = _config(tmp_path, broker, sim)
    requester = Requester(broker.port)
    requester.send("status", {"id": "retained-1"}, retain=True)
    agent = AgentProcess(config)
    try:
        until(lambda: subscribed(broker.port), 15, "the agent's subscription")
        agent.wait_for_log("retained request ignored")
        assert not requester.replies_to("retained-1")
        requester.send("status", b"", retain=True)  # cleared: a restart must not see it
        request = {"id": "dup-1", "device": "meter-townhall"}
        requester.send("read", request)
        first = requester.reply("dup-1")
        assert first["ok"] is True
        requester.send("read", request)
        assert requester.reply("dup-1", count=2) == first
        assert sum('id "dup-1"' in line and ": ok" in line for line in agent.lines) == 1
        assert agent.stop() == 0

        store = tmp_path / "var" / "commands.sqlite"
        assert stat.S_IMODE(os.stat(store).st_mode) == 0o600

        agent = AgentProcess(config)
        until(lambda: subscribed(broker.port), 15, "the agent's subscription again")
        requester.send("read", request)
        assert requester.reply("dup-1", count=3) == first
        agent.wait_for_log('id "dup-1", device "meter-townhall": duplicate')
        assert not any('id "dup-1"' in line and ": ok" in line for line in agent.lines)
    finally:
        requester.stop()
        agent.stop()
        sim.stop()
        broker.stop()
    assert "Traceback" not in agent.log


def test_reload_moves_commands_to_a_new_topic_prefix(tmp_path: Path) -> None:
    """A reload that changes `mqtt.topic_prefix` moves the command channel with it: requests on
    the new prefix are answered, and the old subscription (kept by the broker in the agent's
    persistent session) is undone, so nothing on the old prefix reaches the agent."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    sim = SimProcess({1: "sdm630"})
    config = _config(tmp_path, broker, sim)
    metrics = Subscriber(broker.port, f"town/{GW}/metrics").start()
    agent = AgentProcess(config, metrics_interval=0.3)
    url = f"mqtt://127.0.0.1:{broker.port}"

    def town_answers() -> bool:
        done = run_cli("cmd", GW, "status", "--broker", url, "--prefix", "town", "--timeout", "2")
        return done.returncode == 0

    try:
        agent.wait_for_log("broker mqtt://")
        until(lambda: subscribed(broker.port), 10, "the agent's subscription")
        _config(tmp_path, broker, sim, mqtt='topic_prefix = "town"\n')
        agent.signal(signal.SIGHUP)
        until(town_answers, 30, "an answer on the new prefix")
        assert not subscribed(broker.port)  # the old prefix: no answer
        seen = len(metrics.snapshot())
        metrics.wait_for(lambda: len(metrics.snapshot()) > seen + 1, what="metrics")
        assert json.loads(metrics.snapshot()[-1].payload)["unsolicited_messages"] == 0
        assert "commands: unsubscribed from city/gw-e2e/cmd/+" in agent.log
    finally:
        agent.stop()
        metrics.stop()
        sim.stop()
        broker.stop()
    assert "Traceback" not in agent.log
