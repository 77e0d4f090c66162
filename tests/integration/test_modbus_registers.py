"""Strings, 48-bit counters and identity registers end to end: `citygate run` against the
Modbus simulator over a real socket, a real Mosquitto, and `citygate read`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import AgentProcess, SimProcess, run_cli

citygate_sim = pytest.importorskip("citygate_sim.modbus")

TYPED, IEM = 1, 2
IDENTITY = {"serial_number", "model", "firmware_version", "manufacturer"}


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    process = SimProcess({TYPED: "typed", IEM: "iem3255"})
    yield process
    process.stop()


def address(type_name: str, order: str) -> int:
    return int(
        citygate_sim.typed_address(citygate_sim.ValueType(type_name), citygate_sim.WordOrder(order))
    )


def write_config(path: Path, broker_port: int, sim_port: int, data_dir: Path) -> Path:
    count = citygate_sim.TYPED_TEXT_REGISTERS
    path.write_text(
        f"""
[gateway]
id = "gw-e2e"
data_dir = "{data_dir}"
log_level = "info"

[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
linger = "50ms"

[[device]]
id = "meter-typed"
driver = "modbus"
host = "127.0.0.1"
port = {sim_port}
unit = {TYPED}
interval = "200ms"

  [[device.registers]]
  name = "label"
  address = {address("string", "ABCD")}
  type = "string"
  count = {count}

  [[device.registers]]
  name = "energy_import"
  address = {address("uint48", "CDAB")}
  type = "uint48"
  order = "CDAB"
  unit = "Wh"

  [[device.registers]]
  name = "balance"
  address = {address("int48", "DCBA")}
  type = "int48"
  order = "DCBA"

  [[device.registers]]
  name = "serial_number"
  address = {address("uint32", "ABCD")}
  type = "uint32"

  [[device.registers]]
  name = "firmware_version"
  address = {address("string", "BADC")}
  type = "string"
  count = {count}
  order = "BADC"

[[device]]
id = "meter-iem"
driver = "modbus"
host = "127.0.0.1"
port = {sim_port}
unit = {IEM}
profile = "schneider-iem3255"
interval = "200ms"
""",
        encoding="utf-8",
    )
    return path


def status_of(sub: Subscriber, device: str) -> dict[str, Any] | None:
    statuses = sub.snapshot(f"/{device}/status")
    return dict(json.loads(statuses[-1].payload)) if statuses else None


def test_strings_48_bit_counters_and_identity_through_the_agent(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    config = write_config(tmp_path / "gateway.toml", broker.port, sim.port, tmp_path / "var")
    sub = Subscriber(broker.port).start()
    agent = AgentProcess(config)

    def typed_records() -> list[dict[str, Any]]:
        return [r for r in sub.data_records() if r["topic"] == "city/gw-e2e/meter-typed/data"]

    def has_meter(device: str) -> bool:
        status = status_of(sub, device)
        return status is not None and "meter" in status

    try:
        sub.wait_for(
            lambda: (
                len({r["seq"] for r in typed_records()}) >= 3
                and has_meter("meter-typed")
                and has_meter("meter-iem")
            ),
            timeout=20,
        )
    finally:
        code = agent.stop()
    sub.stop()
    assert code == 0, agent.log
    assert "Traceback" not in agent.log

    records = typed_records()
    by_name: dict[str, dict[str, Any]] = {r["n"]: r for r in records}
    assert set(by_name) == {"label", "energy_import", "balance"}  # identity not in data
    assert by_name["label"]["vs"] == citygate_sim.TYPED_TEXT
    assert "u" not in by_name["label"]
    uint48 = citygate_sim.TYPED_VALUES[citygate_sim.ValueType.UINT48]
    assert by_name["energy_import"]["v"] == pytest.approx(uint48 / 1000)  # Wh → kWh
    assert by_name["energy_import"]["u"] == "kWh"
    assert by_name["balance"]["v"] == citygate_sim.TYPED_VALUES[citygate_sim.ValueType.INT48]
    iem_names = {r["n"] for r in sub.data_records() if r["topic"] == "city/gw-e2e/meter-iem/data"}
    assert "active_power" in iem_names
    assert not iem_names & IDENTITY

    typed_status = status_of(sub, "meter-typed")
    assert typed_status is not None
    assert typed_status["meter"] == {
        "serial_number": str(citygate_sim.TYPED_VALUES[citygate_sim.ValueType.UINT32]),
        "firmware_version": citygate_sim.TYPED_TEXT,
    }
    iem_status = status_of(sub, "meter-iem")
    assert iem_status is not None
    meter = iem_status["meter"]
    assert (meter["model"], meter["manufacturer"]) == ("iEM3255", "Schneider Electric")
    assert meter["serial_number"].isdigit()
    assert set(meter) == IDENTITY
    # one line per device when it was identified
    assert "meter-iem: meter model 'iEM3255', manufacturer 'Schneider Electric'" in agent.log

    # `citygate read` shows the identity under the readings
    table = run_cli("read", "meter-iem", "-c", str(config))
    assert table.returncode == 0, table.stderr
    assert "meter: model iEM3255, manufacturer Schneider Electric, serial_number " in table.stdout
    as_json = run_cli("read", "meter-typed", "-c", str(config), "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert {r["name"] for r in report["readings"]} == {"label", "energy_import", "balance"}
    assert report["meter"] == typed_status["meter"]
