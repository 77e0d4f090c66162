"""The agent in-process with RTU meters sharing one line (simulator on a pty) and a
real Mosquitto: one owner for the line, data from every meter, a silent unit
isolated."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from citygate import registry
from citygate.app import Agent
from citygate.config import load
from tests.support.broker import Mosquitto, Subscriber
from tests.support.wait import until

citygate_sim = pytest.importorskip("citygate_sim.modbus")

BAUD = 38400

pytestmark = pytest.mark.broker


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = {
        1: citygate_sim.make_meter("sdm120", seed=1),
        2: citygate_sim.make_meter("abb-b23", seed=2),
    }
    async with citygate_sim.ModbusRtuSimulator(meters, baudrate=BAUD) as simulator:
        yield simulator


def write_config(tmp_path: Path, port: str, broker: Mosquitto) -> Path:
    config = tmp_path / "gateway.toml"
    devices = [("meter-a", 1, "eastron-sdm120"), ("meter-b", 2, "abb-b23"), ("gone", 7, "abb-b23")]
    blocks = "\n".join(
        f"""
[[device]]
id = "{name}"
driver = "modbus"
serial = "rs485"
unit = {unit}
profile = "{profile}"
interval = "300ms"
"""
        for name, unit, profile in devices
    )
    config.write_text(
        f"""
[gateway]
id = "gw-rtu"
data_dir = "{tmp_path / "var"}"

[mqtt]
url = "{broker.url}"
linger = "50ms"

[[serial]]
id = "rs485"
port = "{port}"
baudrate = {BAUD}
timeout = "100ms"
{blocks}
"""
    )
    return config


async def test_meters_on_one_line_reach_the_broker(
    sim: Any, tmp_path: Path, broker: Mosquitto
) -> None:
    config = load(write_config(tmp_path, sim.port, broker), registry.factories())
    subscriber = Subscriber(broker.port, "city/gw-rtu/#").start()
    agent = Agent(config, registry.factories(), metrics_interval=0.2)
    try:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(agent.run())

            def arrived() -> set[str]:
                return {r["bn"] for r in subscriber.data_records()}

            def published_utilisation() -> list[float]:
                documents = [json.loads(m.payload) for m in subscriber.snapshot("/metrics")]
                return [d["line_utilisation"]["rs485"] for d in documents]

            await until(
                lambda: (
                    len(arrived()) >= 2
                    and agent.board.devices["gone"].state == "offline"
                    and any(published_utilisation())
                ),
                what="both meters' data, 'gone' offline and a line utilisation published",
            )
            metrics = agent.lines.metrics()
            agent.request_stop()
            async with asyncio.timeout(20):
                await task
    finally:
        subscriber.stop()
    assert arrived() == {"gw-rtu/meter-a/", "gw-rtu/meter-b/"}
    assert set(agent.lines.owners) == {"rs485"}
    figures = metrics["lines"]["rs485"]["devices"]
    assert set(figures) == {"meter-a", "meter-b", "gone"}
    assert figures["gone"]["timeouts"] >= 3
    assert figures["meter-a"]["timeouts"] == 0
    assert 0 < metrics["line_utilisation"]["rs485"] <= 1
    assert agent.counters.polls_skipped == 0
