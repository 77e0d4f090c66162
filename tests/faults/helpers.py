"""What the fault tests share: a broker that keeps sessions over a restart, a subscriber with a
persistent session, agent configs, and the one check that matters (nothing missing, in order).

Why a persistent broker: the product promise is "a sample leaves the buffer only after the broker
acknowledged it". To see from outside that nothing was lost, the subscriber must receive whatever
the broker acknowledged, even across a broker restart. Mosquitto with ``persistence true`` saves
its sessions (the subscriber's subscription and the QoS 1 messages queued for it) when stopped
with SIGTERM and restores them when started again; the subscriber connects with a fixed client id
and ``clean_session`` off, so it receives what arrived while it was away. Then a gap in the seqs
the subscriber saw, over ``1 .. next_seq - 1`` of the agent's buffer, is a sample the agent lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citygate.app import Agent
from citygate.buffer import BufferStats, open_readonly_stats
from citygate.config import BufferSettings, Config, DeviceConfig, GatewaySettings, MqttSettings
from tests.support.broker import Mosquitto
from tests.support.synthetic import factory as synthetic
from tests.support.wait import until, wait_until  # noqa: F401  # the fault tests' waits


def persistent_broker(
    workdir: Path, *, port: int | None = None, log_all: bool = False, extra_conf: str = ""
) -> Mosquitto:
    """A Mosquitto that saves its sessions and queued messages on stop and restores them."""
    store = workdir / "store"
    store.mkdir(parents=True, exist_ok=True)
    conf = f"persistence true\npersistence_location {store}/\n" + extra_conf
    if log_all:
        conf += "log_type all\n"
    return Mosquitto(workdir, port=port, extra_conf=conf)


@dataclass
class DataRecord:
    device: str
    seq: int
    readings: int  # readings of this sample in the message
    message_readings: int  # readings in the whole message


@dataclass
class SessionSubscriber:
    """A QoS 1 subscriber to every data topic, with a persistent session (fixed id)."""

    port: int
    client_id: str = "fault-test-subscriber"
    records: list[DataRecord] = field(default_factory=list)
    statuses: list[tuple[str, bytes]] = field(default_factory=list)  # gateway and devices
    metrics: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False
        )
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the SUBACK: messages published from now on reach us
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # floats work

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(
            [
                ("city/+/+/data", 1),
                ("city/+/status", 1),
                ("city/+/+/status", 1),
                ("city/+/metrics", 1),
            ]
        )
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if msg.topic.endswith("/data"):
            pack = json.loads(msg.payload)
            total = len(pack)
            heads = [i for i, record in enumerate(pack) if "seq" in record]
            found = [
                DataRecord(parts[2], pack[i]["seq"], end - i, total)
                for i, end in zip(heads, [*heads[1:], total], strict=True)
            ]
            with self.lock:
                self.records.extend(found)
        elif msg.topic.endswith("/metrics"):
            with self.lock:
                self.metrics.append(json.loads(msg.payload))
        else:
            with self.lock:
                self.statuses.append((msg.topic, bytes(msg.payload)))

    def start(self) -> SessionSubscriber:
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(30):
            raise RuntimeError("subscriber could not connect")
        if not self.subscribed.wait(30):
            raise RuntimeError("the broker did not confirm the subscription (no SUBACK)")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[DataRecord]:
        with self.lock:
            return list(self.records)

    def distinct(self) -> set[int]:
        return {r.seq for r in self.snapshot()}

    def last_status(self, topic: str) -> bytes | None:
        with self.lock:
            found = [payload for t, payload in self.statuses if t == topic]
        return found[-1] if found else None

    def last_metrics(self) -> dict[str, Any] | None:
        with self.lock:
            return self.metrics[-1] if self.metrics else None


def assert_no_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Expected faults are warnings, one line each: nothing at ERROR, no traceback."""
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def buffer_stats(data_dir: Path) -> BufferStats:
    stats, _ = open_readonly_stats(data_dir / "buffer.sqlite3")
    return stats


async def everything_arrived(sub: SessionSubscriber, data_dir: Path, timeout: float = 15) -> None:
    """After the agent stopped: wait until the subscriber holds every seq the buffer gave out.

    The agent's last PUBACKs can come before the broker has forwarded those messages to the
    subscriber; stopping the subscriber at once would miss them. A timeout is left to
    :func:`assert_nothing_missing` to report."""
    expected = set(range(1, buffer_stats(data_dir).next_seq))
    with contextlib.suppress(AssertionError):
        await until(lambda: sub.distinct() >= expected, timeout, "the last samples forwarded")


def assert_nothing_missing(records: list[DataRecord], stats: BufferStats) -> None:
    """Every seq the buffer ever gave out arrived; per device, first arrivals in seq order."""
    assert stats.dropped_samples == 0
    assert stats.backlog_samples == 0, "the buffer still holds samples"
    expected = set(range(1, stats.next_seq))
    seen = {r.seq for r in records}
    missing = sorted(expected - seen)
    assert not missing, f"{len(missing)} samples missing, first {missing[:10]}"
    assert seen == expected
    first_seen: dict[str, list[int]] = {}
    distinct: set[int] = set()
    for record in records:
        if record.seq not in distinct:
            distinct.add(record.seq)
            first_seen.setdefault(record.device, []).append(record.seq)
    for device, seqs in first_seen.items():
        assert seqs == sorted(seqs), f"{device}: samples out of seq order"


def modbus_devices(sim_port: int, count: int, interval: str) -> list[dict[str, object]]:
    """``count`` meters on the simulator (units 1 and 2 alternate: SDM630, SDM120)."""
    return [
        {
            "id": f"meter-{i}",
            "driver": "modbus",
            "host": "127.0.0.1",
            "port": sim_port,
            "unit": 1 + i % 2,
            "profile": "eastron-sdm630" if i % 2 == 0 else "eastron-sdm120",
            "interval": interval,
        }
        for i in range(count)
    ]


def synthetic_config(
    tmp_path: Path,
    broker_port: int,
    devices: int = 3,
    *,
    values: int = 5,
    interval: float = 0.02,
    buffer: BufferSettings | None = None,
    **mqtt_settings: Any,
) -> Config:
    """An agent config with synthetic (no I/O) devices and the broker on ``broker_port``."""
    options = {"values": values, "fail": "no"}
    device_configs = tuple(
        DeviceConfig(
            id=f"dev-{i}",
            driver="synthetic",
            interval=interval,
            enabled=True,
            labels={},
            options=options,
            driver_config=options,
            source=tmp_path / "gateway.toml",
        )
        for i in range(devices)
    )
    settings: dict[str, Any] = {
        "url": f"mqtt://127.0.0.1:{broker_port}",
        "host": "127.0.0.1",
        "port": broker_port,
        "client_id": "citygate-gw-faults",
        "linger": 0.05,
    }
    settings.update(mqtt_settings)
    return Config(
        path=tmp_path / "gateway.toml",
        gateway=GatewaySettings(id="gw-faults", data_dir=tmp_path / "var", labels={}),
        mqtt=MqttSettings(**settings),
        buffer=buffer or BufferSettings(),
        serial={},
        ble=None,
        devices=device_configs,
    )


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    """Run ``agent`` in this event loop; stop it (SIGTERM's path) on exit."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(agent.run())
        try:
            yield agent
        finally:
            agent.request_stop()
            async with asyncio.timeout(30):
                await task


def caught_up(sub: SessionSubscriber, beyond: int) -> bool:
    """The subscriber has every seq up to the newest it saw, and that is beyond ``beyond``:
    whatever was buffered before the newest arrived has arrived too."""
    seen = sub.distinct()
    newest = max(seen, default=0)
    return newest > beyond and seen >= set(range(1, newest + 1))


def make_agent(config: Config) -> Agent:
    """An in-process agent over the synthetic driver; its data_dir made first, as `citygate run`
    does before its Agent (the agent writes its retained-topic record at once)."""
    config.gateway.data_dir.mkdir(parents=True, exist_ok=True)
    return Agent(config, {"synthetic": synthetic}, metrics_interval=0.5)
