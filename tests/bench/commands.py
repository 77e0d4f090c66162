"""Issue 14: round-trip time of the ``read`` command, a TCP meter and an RTU meter on a busy line.

`citygate run` with ``[commands] enabled`` polls one Modbus TCP meter (the SDM630 profile on
the TCP simulator, interval 5 s) and four RTU meters on one 9600 baud line (the RTU simulator
on a pty: SDM630, SDM120, EM24, B23, every 0.2 s: more than the line can carry, so it is always
in use and each poll waits for its turn). An MQTT 5 client sends ``read`` requests, one after
the other, with a Response Topic and Correlation Data; the round trip is from the request's
publish to the reply's arrival (broker, agent, the device's turn and its poll included).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.bench import rig
from tests.bench.counter import percentile
from tests.bench.procs import scratch
from tests.bench.report import PartResult
from tests.support.broker import Mosquitto
from tests.support.processes import BIN, SimProcess

GW = "gw-bench-cmd"
BAUD = 9600
RTU_METERS = {1: ("sdm630", "eastron-sdm630"), 2: ("sdm120", "eastron-sdm120")} | {
    3: ("em24", "carlo-gavazzi-em24"),
    4: ("abb-b23", "abb-b23"),
}
RTU_INTERVAL = "200ms"


class RtuSim:
    """`citygate-sim modbus-rtu` on a pty, in its own process."""

    def __init__(self, units: dict[int, str]) -> None:
        args = [str(BIN / "citygate-sim"), "modbus-rtu", "--baudrate", str(BAUD)]
        for unit, model in units.items():
            args += ["--unit", f"{unit}={model}"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("serial port "):
            raise RuntimeError(f"RTU simulator did not start: {line!r}")
        self.port = line.removeprefix("serial port ").strip()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def gateway_config(workdir: Path, broker_port: int, tcp_port: int, serial_port: str) -> Path:
    devices = [
        f"""
[[device]]
id = "rtu-{unit}"
driver = "modbus"
serial = "rs485"
unit = {unit}
profile = "{profile}"
interval = "{RTU_INTERVAL}"
"""
        for unit, (_, profile) in RTU_METERS.items()
    ]
    config = workdir / "gateway.toml"
    config.write_text(
        f"""
[gateway]
id = "{GW}"
data_dir = "{workdir / "var"}"

[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"

[commands]
enabled = true
max_per_minute = 10000

[[serial]]
id = "rs485"
port = "{serial_port}"
baudrate = {BAUD}
timeout = "300ms"

[[device]]
id = "tcp-meter"
driver = "modbus"
host = "127.0.0.1"
port = {tcp_port}
unit = 1
profile = "eastron-sdm630"
interval = "5s"
{"".join(devices)}"""
    )
    return config


class Requester:
    """An MQTT 5 client that sends one request at a time and times its reply."""

    def __init__(self, port: int) -> None:
        self.reply_topic = f"city/{GW}/cmd/read/reply/bench-{uuid.uuid4().hex[:8]}"
        self.replied = threading.Event()
        self.reply: dict[str, Any] = {}
        self.correlation = b""
        self.received_at = 0.0
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(self.reply_topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(20):
            raise RuntimeError("no SUBACK")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.perf_counter()
        if getattr(msg.properties, "CorrelationData", None) == self.correlation:
            self.received_at = at
            self.reply = json.loads(msg.payload)
            self.replied.set()

    def read(self, device: str, timeout: float = 30.0) -> tuple[float, dict[str, Any]]:
        """Seconds from publish to reply, and the reply."""
        token = uuid.uuid4().hex
        self.correlation = token.encode()
        self.replied.clear()
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = self.correlation
        payload = json.dumps({"id": token, "device": device}).encode()
        sent_at = time.perf_counter()
        self.client.publish(f"city/{GW}/cmd/read", payload, qos=1, properties=props)
        if not self.replied.wait(timeout):
            raise TimeoutError(f"no reply to a read of {device} within {timeout:g} s")
        return self.received_at - sent_at, self.reply

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(quick: bool) -> PartResult:
    result = PartResult("commands")
    requests = 10 if quick else 30
    with scratch("commands") as workdir:
        broker = Mosquitto(workdir / "mosquitto")
        broker.start()
        tcp = SimProcess({1: "sdm630"})
        rtu = RtuSim({unit: model for unit, (model, _) in RTU_METERS.items()})
        spawned = None
        requester = None
        try:
            config = gateway_config(workdir, broker.port, tcp.port, rtu.port)
            spawned = rig.spawn_agent(config)
            rig.wait_for_line(spawned, "broker mqtt://", 30)
            requester = Requester(broker.port)
            deadline = time.monotonic() + 30
            while True:  # the agent's subscription is in place once a read is answered
                try:
                    requester.read("tcp-meter", timeout=1.0)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
            time.sleep(1.0)  # the RTU meters online, the line busy
            for label, device in (("TCP meter", "tcp-meter"), ("RTU meter, busy line", "rtu-2")):
                times: list[float] = []
                failed = 0
                for _ in range(requests):
                    seconds, reply = requester.read(device)
                    if reply.get("ok") is True:
                        times.append(seconds * 1000)
                    else:
                        failed += 1
                p50, p95 = percentile(times, 0.5), percentile(times, 0.95)
                note = f"{len(times)} reads one after the other; {failed} failed"
                result.add(f"read round trip p50, {label}", _ms(p50), "ms", note=note)
                result.add(f"read round trip p95, {label}", _ms(p95), "ms", note=note)
                result.details[device] = {"round_trips_ms": times, "failed": failed}
            result.details["demand_warnings"] = [
                line for line in spawned.agent.lines if "demand" in line or "cannot fit" in line
            ]
        finally:
            if requester is not None:
                requester.stop()
            if spawned is not None:
                rig.stop_agent(spawned)
            rtu.stop()
            tcp.stop()
            broker.stop()
    return result


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
