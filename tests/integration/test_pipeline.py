"""The agent in-process against a real Mosquitto, with synthetic devices.

Drivers here are synthetic (no I/O); the buffer, the publisher and the broker are real.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from citygate.app import Agent, buffer_path
from citygate.buffer import open_readonly_stats
from citygate.config import BufferSettings, Config, DeviceConfig, GatewaySettings, MqttSettings
from tests.support.broker import Mosquitto, Subscriber
from tests.support.synthetic import factory as synthetic
from tests.support.wait import until

FACTORIES = {"synthetic": synthetic}


def make_config(
    tmp_path: Path, broker: Mosquitto, devices: list[dict[str, Any]], **mqtt: Any
) -> Config:
    device_configs = tuple(
        DeviceConfig(
            id=d["id"],
            driver="synthetic",
            interval=d.get("interval", 0.05),
            enabled=True,
            labels={},
            options={"values": d.get("values", 3), "fail": d.get("fail", "no")},
            driver_config={"values": d.get("values", 3), "fail": d.get("fail", "no")},
            source=tmp_path / "gateway.toml",
        )
        for d in devices
    )
    settings: dict[str, Any] = {
        "url": broker.url,
        "host": "127.0.0.1",
        "port": broker.port,
        "client_id": "citygate-gw-test",
        "linger": 0.05,
    }
    settings.update(mqtt)
    return Config(
        path=tmp_path / "gateway.toml",
        gateway=GatewaySettings(id="gw-test", data_dir=tmp_path / "var", labels={"site": "lab"}),
        mqtt=MqttSettings(**settings),
        buffer=BufferSettings(),
        serial={},
        ble=None,
        devices=device_configs,
    )


@asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[Agent]:
    agent = Agent(config, FACTORIES, **kwargs)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(agent.run())
        try:
            yield agent
        finally:
            agent.request_stop()
            async with asyncio.timeout(20):
                await task


def device_seqs(sub: Subscriber, device: str) -> list[int]:
    return [
        r["seq"] for r in sub.data_records() if r["topic"].endswith(f"/{device}/data") and "bt" in r
    ]


async def test_senml_topics_and_status(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port).start()
    config = make_config(
        tmp_path, broker, [{"id": "meter-a", "values": 3}, {"id": "meter-b", "values": 2}]
    )
    async with running(config, metrics_interval=0.2):
        await until(
            lambda: len(device_seqs(sub, "meter-a")) >= 5 and len(device_seqs(sub, "meter-b")) >= 5
        )
        await until(lambda: len(sub.snapshot("/metrics")) >= 2)
    sub.wait_for(lambda: any(m.payload == b"offline" for m in sub.snapshot("gw-test/status")))
    sub.stop()

    statuses = [m.payload for m in sub.snapshot("city/gw-test/status")]
    assert statuses[0] == b"online"
    assert statuses[-1] == b"offline"
    info = json.loads(sub.snapshot("city/gw-test/info")[0].payload)
    assert info["labels"] == {"site": "lab"}
    assert info["devices"] == [
        {"id": "meter-a", "driver": "synthetic"},
        {"id": "meter-b", "driver": "synthetic"},
    ]
    assert isinstance(info["started_at"], float)

    for message in sub.snapshot("/meter-a/data"):
        pack = json.loads(message.payload)
        assert pack[0]["bn"] == "gw-test/meter-a/"
        assert all("bn" not in r for r in pack[1:])
        samples = [i for i, r in enumerate(pack) if "bt" in r]
        assert samples[0] == 0
        for i in samples:
            assert isinstance(pack[i]["seq"], int)
            assert "clock" not in pack[i]
        for record in pack:
            # every value in W: stated once per sample as the base unit
            assert set(record) - {"bn", "bt", "seq", "bu"} == {"n", "v"}
            assert record.get("bu", "W") == "W"
        assert all(pack[i]["bu"] == "W" for i in samples)
        # three readings per sample, named by the driver
        assert [r["n"] for r in pack[:3]] == ["value_0", "value_1", "value_2"]
    # per device, seq only grows; across devices, never repeats
    a, b = device_seqs(sub, "meter-a"), device_seqs(sub, "meter-b")
    assert a == sorted(a) and b == sorted(b)
    assert not set(a) & set(b)

    device_status = json.loads(sub.snapshot("/meter-a/status")[-1].payload)
    assert device_status["state"] == "online"
    assert device_status["error"] is None
    metrics = json.loads(sub.snapshot("/metrics")[-1].payload)
    for key in (
        "ts",
        "uptime_s",
        "samples_read",
        "readings_read",
        "samples_published",
        "backlog_samples",
        "backlog_bytes",
        "dropped_samples",
        "poll_errors",
        "broker_reconnects",
        "devices_online",
        "devices_offline",
        "rss_bytes",
    ):
        assert key in metrics
    assert metrics["devices_online"] == 2
    assert metrics["samples_read"] > 0 and metrics["rss_bytes"] > 0
    assert metrics["overflow_samples"] == 0

    stats, states = open_readonly_stats(buffer_path(config))
    # whatever was not acknowledged before stop stays buffered; it was all acknowledged here
    assert stats.backlog_samples == 0
    assert json.loads(states["meter-a"])["state"] == "online"


async def test_backlog_delivered_in_order_after_broker_comes_up(
    tmp_path: Path, broker: Mosquitto
) -> None:
    broker.stop()
    config = make_config(tmp_path, broker, [{"id": "meter-a"}, {"id": "meter-b"}])
    async with running(config) as agent:
        await until(lambda: agent.counters.samples_read >= 40)
        stats = await agent.buffer.stats()
        assert stats.backlog_samples >= 40
        broker.start()
        sub = Subscriber(broker.port).start()
        read_at_start = agent.counters.samples_read
        await until(lambda: len(sub.seqs()) >= read_at_start + 10, timeout=30)
    sub.stop()
    for device in ("meter-a", "meter-b"):
        seqs = device_seqs(sub, device)
        assert seqs == sorted(seqs)
    all_seqs = sorted(set(sub.seqs()))
    # nothing missing between the first and the last sample received
    assert all_seqs == list(range(all_seqs[0], all_seqs[-1] + 1))
    assert all_seqs[0] == 1


async def test_failing_device_goes_offline_without_disturbing_others(
    tmp_path: Path, broker: Mosquitto
) -> None:
    sub = Subscriber(broker.port).start()
    config = make_config(tmp_path, broker, [{"id": "good"}, {"id": "broken", "fail": "device"}])
    async with running(config, metrics_interval=0.2) as agent:
        await until(
            lambda: any(
                json.loads(m.payload)["state"] == "offline" for m in sub.snapshot("/broken/status")
            )
        )
        await until(lambda: len(device_seqs(sub, "good")) >= 10)
        assert agent.board.devices["good"].state == "online"
    sub.stop()
    offline = next(
        json.loads(m.payload)
        for m in sub.snapshot("/broken/status")
        if json.loads(m.payload)["state"] == "offline"
    )
    assert offline["error"] == "synthetic: exception 2 (illegal data address)"
    assert offline["errors_total"] >= 3
    assert device_seqs(sub, "broken") == []


async def test_non_finite_reading_dropped_and_counted(tmp_path: Path, broker: Mosquitto) -> None:
    sub = Subscriber(broker.port).start()
    config = make_config(tmp_path, broker, [{"id": "odd", "fail": "nan"}])
    async with running(config, metrics_interval=0.2) as agent:
        await until(
            lambda: agent.counters.invalid_readings >= 3 and len(device_seqs(sub, "odd")) >= 6
        )
        await until(
            lambda: any(
                json.loads(m.payload)["invalid_readings"] >= 3 for m in sub.snapshot("/metrics")
            )
        )
    sub.stop()
    names = {r["n"] for r in sub.data_records()}
    assert names == {"good", "value_0", "value_1", "value_2"}
    assert all(r["n"] != "bad" for r in sub.data_records())


async def test_unsynced_clock_is_marked(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CITYGATE_CLOCK", "unsynced")
    sub = Subscriber(broker.port).start()
    config = make_config(tmp_path, broker, [{"id": "meter-a"}])
    async with running(config):
        await until(lambda: len(device_seqs(sub, "meter-a")) >= 2)
    sub.stop()
    heads = [r for r in sub.data_records() if "bt" in r and r["n"] == "value_0"]
    assert heads and all(r["clock"] == "unsynced" for r in heads)


async def test_refused_credentials_keep_agent_buffering(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    secured = Mosquitto(
        tmp_path / "secure", extra_conf=f"password_file {passwords}\n", anonymous=False
    )
    secured.start()
    try:
        base = make_config(tmp_path, secured, [{"id": "meter-a"}])
        config = replace(base, mqtt=replace(base.mqtt, username="nobody", password="wrong"))
        async with running(config) as agent:
            await until(lambda: agent.counters.samples_read >= 10)
            await until(
                lambda: any(
                    "broker" in r.message and "retrying" in r.message for r in caplog.records
                )
            )
            stats = await agent.buffer.stats()
            assert stats.backlog_samples >= 10
            assert not agent.publisher.connected
        refusals = [r for r in caplog.records if "retrying" in r.message]
        assert len(refusals) == 1  # said once, not at every attempt
    finally:
        secured.stop()
