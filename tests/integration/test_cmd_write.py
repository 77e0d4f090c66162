"""The ``write`` remote command end to end (mqtt.md "Commands"): `citygate run` as a
subprocess with ``[commands] write = true``, a real Mosquitto, the Modbus simulators (the
``typed`` unit: holding registers 1000–1127 and coils 0–63 writable) over TCP and over RTU on
a pty shared with a meter polled back to back; requests sent by `citygate cmd`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_commands import GW, start_commanded_agent
from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import AgentProcess, run_cli
from tests.support.wait import until

citygate_sim = pytest.importorskip("citygate_sim.modbus")

pytestmark = pytest.mark.broker

BAUD = 38400
TYPED = 3
WRITES = frozenset({0x05, 0x06, 0x0F, 0x10})  # Modbus function codes that write
SETPOINT = 1000  # typed: int16 ABCD, writable
READONLY = 1016  # typed: uint16 ABCD, writable on the simulator, not in the config

REGISTERS = f"""
  [[device.registers]]
  name = "setpoint"
  address = {SETPOINT}
  type = "int16"
  scale = 0.1
  unit = "kW"
  writable = true
  min = -2.0
  max = 2.0

  [[device.registers]]
  name = "mode"
  address = {READONLY}
  type = "uint16"

  [[device.registers]]
  name = "relay"
  address = 5
  table = "coil"
  writable = true
"""


def count_writes(sim: Any) -> list[tuple[int, int]]:
    """Record the (unit, function code) of every write request ``sim`` receives."""
    seen: list[tuple[int, int]] = []
    handle: Callable[[int, bytes], bytes | None] = sim.handler.handle_request

    def counting(unit_id: int, pdu: bytes) -> bytes | None:
        if pdu and pdu[0] in WRITES:
            seen.append((unit_id, pdu[0]))
        return handle(unit_id, pdu)

    sim.handler.handle_request = counting
    return seen


def write_config(tmp_path: Path, broker: Mosquitto, target: str, busy_meter: str = "") -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
id = "{GW}"
data_dir = "{tmp_path / "var"}"
log_level = "info"

[mqtt]
url = "mqtt://127.0.0.1:{broker.port}"
linger = "50ms"

[commands]
enabled = true
write = true
{busy_meter}
[[device]]
id = "pump"
driver = "modbus"
{target}
unit = {TYPED}
interval = "500ms"
{REGISTERS}
"""
    )
    return config


async def write(broker: Mosquitto, name: str, value: str) -> tuple[int, dict[str, Any]]:
    result = await asyncio.to_thread(
        run_cli,
        "cmd",
        GW,
        "write",
        "--device",
        "pump",
        "--arg",
        f"name={name}",
        "--arg",
        f"value={value}",
        "--broker",
        f"mqtt://127.0.0.1:{broker.port}",
        "--timeout",
        "20",
    )
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout)


async def polled_after(data: Subscriber, name: str, t: float) -> float:
    """The value of ``pump/name`` in the first sample polled after ``t`` (Unix s)."""

    def found() -> list[dict[str, Any]]:
        return [
            r
            for r in data.data_records()
            if r["bn"] == f"{GW}/pump/" and r["n"] == name and float(r["bt"]) > t
        ]

    records = await until(found, 20, f"a sample of {name} polled after the write")
    return float(records[0]["v"])


async def check_writes(
    agent: AgentProcess, broker: Mosquitto, writes: list[tuple[int, int]]
) -> None:
    data = Subscriber(broker.port, f"city/{GW}/pump/data").start()
    try:
        code, reply = await write(broker, "setpoint", "-1.5")
        assert code == 0, reply
        assert reply["ok"] is True
        assert reply["result"] == {"name": "setpoint", "value": -1500.0}  # kW → W, read back
        assert writes == [(TYPED, 0x06)]
        assert await polled_after(data, "setpoint", time.time()) == -1500.0

        code, reply = await write(broker, "relay", "true")
        assert code == 0 and reply["result"] == {"name": "relay", "value": True}, reply
        assert writes[-1] == (TYPED, 0x05)

        refused = {
            ("setpoint", "2.5"): "out_of_range",
            ("mode", "7"): "forbidden",
            ("nonexistent", "1"): "forbidden",
            ("relay", "1.5"): "bad_request",
            ("setpoint", "0.05"): "bad_request",  # no whole raw step (scale 0.1)
        }
        before = len(writes)
        for (name, value), want in refused.items():
            code, reply = await write(broker, name, value)
            assert code == 1 and reply["error"]["code"] == want, (name, value, reply)
        assert len(writes) == before  # nothing was sent for any of them
    finally:
        data.stop()


@pytest.fixture
async def tcp() -> AsyncIterator[Any]:
    meters = {TYPED: citygate_sim.make_meter("typed")}
    async with citygate_sim.ModbusTcpSimulator(meters, host="127.0.0.1", port=0) as simulator:
        yield simulator


@pytest.fixture
async def rtu() -> AsyncIterator[Any]:
    meters = {1: citygate_sim.make_meter("sdm120", seed=1), TYPED: citygate_sim.make_meter("typed")}
    async with citygate_sim.ModbusRtuSimulator(meters, baudrate=BAUD) as simulator:
        yield simulator


async def test_write_over_tcp_reads_back_and_the_next_poll_carries_it(
    tcp: Any, tmp_path: Path, broker: Mosquitto
) -> None:
    writes = count_writes(tcp)
    agent = await start_commanded_agent(
        write_config(tmp_path, broker, f'host = "127.0.0.1"\nport = {tcp.port}'), broker
    )
    try:
        await check_writes(agent, broker, writes)
    finally:
        await asyncio.to_thread(agent.stop)
    assert "Traceback" not in agent.log


async def test_write_on_a_busy_rtu_line_takes_a_turn(
    rtu: Any, tmp_path: Path, broker: Mosquitto
) -> None:
    """The line is shared with a meter polled back to back: the write and its read-back take
    one turn between its polls, so no frame collides (the simulator drops none) and the
    meter never misses a reply."""
    line = f"""
[[serial]]
id = "rs485"
port = "{rtu.port}"
baudrate = {BAUD}
timeout = "200ms"

[[device]]
id = "meter"
driver = "modbus"
serial = "rs485"
unit = 1
profile = "eastron-sdm120"
interval = "50ms"
"""
    writes = count_writes(rtu)
    agent = await start_commanded_agent(
        write_config(tmp_path, broker, 'serial = "rs485"', busy_meter=line), broker
    )
    try:
        polls_before = rtu.handler.requests_by_unit[1]
        await check_writes(agent, broker, writes)
        assert rtu.handler.requests_by_unit[1] > polls_before  # polled throughout
        assert rtu.handler.dropped_count == 0
        assert not any("offline" in line or "timeout" in line for line in agent.lines), agent.log
    finally:
        await asyncio.to_thread(agent.stop)
    assert "Traceback" not in agent.log
