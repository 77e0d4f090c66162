"""`citygate run` as a subprocess, the simulator as the meters, a real Mosquitto as the broker."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import ROOT, AgentProcess, SimProcess, modbus_config, run_cli


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    process = SimProcess({1: "sdm630", 2: "sdm120"})
    yield process
    process.stop()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def records_of(sub: Subscriber, device: str) -> list[dict[str, object]]:
    return [r for r in sub.data_records() if r["topic"] == f"city/gw-e2e/{device}/data"]


def last_status(sub: Subscriber, device: str) -> dict[str, object]:
    statuses = sub.snapshot(f"/{device}/status")
    assert statuses, f"no status for {device}"
    return dict(json.loads(statuses[-1].payload))


def test_meters_to_broker_and_clean_stop(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    config = modbus_config(
        tmp_path / "gateway.toml",
        broker_port=broker.port,
        data_dir=tmp_path / "var",
        devices=[
            {
                "id": "meter-townhall",
                "driver": "modbus",
                "host": "127.0.0.1",
                "port": sim.port,
                "unit": 1,
                "profile": "eastron-sdm630",
                "interval": "200ms",
            },
            {
                "id": "meter-library",
                "driver": "modbus",
                "host": "127.0.0.1",
                "port": sim.port,
                "unit": 2,
                "profile": "eastron-sdm120",
                "interval": "200ms",
            },
        ],
    )
    sub = Subscriber(broker.port).start()
    agent = AgentProcess(config)
    try:
        sub.wait_for(
            lambda: (
                len({r["seq"] for r in records_of(sub, "meter-townhall")}) >= 5
                and len({r["seq"] for r in records_of(sub, "meter-library")}) >= 5
            ),
            timeout=20,
        )
    finally:
        code = agent.stop()
    sub.wait_for(lambda: sub.snapshot("city/gw-e2e/status")[-1].payload == b"offline")
    sub.stop()
    assert code == 0, agent.log
    assert "Traceback" not in agent.log

    townhall = records_of(sub, "meter-townhall")
    names = {r["n"] for r in townhall}
    assert {
        "voltage_l1",
        "voltage_l2",
        "voltage_l3",
        "current_l1",
        "active_power",
        "frequency",
        "energy_import",
        "power_factor",
        "voltage_l1_l2",
    } <= names
    units = {r["n"]: r["u"] for r in townhall}
    assert units["voltage_l1"] == "V"
    assert units["active_power"] == "W"
    assert units["energy_import"] == "kWh"
    assert units["frequency"] == "Hz"
    for record in townhall:
        if record["n"] == "voltage_l1":
            assert 200.0 < float(record["v"]) < 260.0  # type: ignore[arg-type]
        if record["n"] == "frequency":
            assert 49.5 < float(record["v"]) < 50.5  # type: ignore[arg-type]
    energy = [float(r["v"]) for r in townhall if r["n"] == "energy_import"]  # type: ignore[arg-type]
    assert energy == sorted(energy)

    library = {r["n"] for r in records_of(sub, "meter-library")}
    assert {"voltage", "current", "active_power", "energy_import"} <= library
    assert last_status(sub, "meter-townhall")["state"] == "online"
    assert last_status(sub, "meter-library")["state"] == "online"


def test_faulty_meters_are_reported_and_do_not_disturb_the_healthy_one(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    base = {
        "driver": "modbus",
        "host": "127.0.0.1",
        "interval": "200ms",
        "timeout": "300ms",
        "retries": 0,
    }
    config = modbus_config(
        tmp_path / "gateway.toml",
        broker_port=broker.port,
        data_dir=tmp_path / "var",
        devices=[
            {**base, "id": "healthy", "port": sim.port, "unit": 1, "profile": "eastron-sdm630"},
            {
                **base,
                "id": "unreachable",
                "port": closed_port(),
                "unit": 1,
                "profile": "eastron-sdm120",
            },
            {**base, "id": "wrong-unit", "port": sim.port, "unit": 7, "profile": "eastron-sdm120"},
        ],
        extra="",
    )
    # A register the meter does not have: the meter answers with exception 2.
    config.write_text(
        config.read_text()
        + f"""
[[device]]
id = "bad-register"
driver = "modbus"
host = "127.0.0.1"
port = {sim.port}
unit = 1
interval = "200ms"

  [[device.registers]]
  name = "voltage_l1"
  address = 0x4000
  table = "input"
  type = "float32"
  unit = "V"
"""
    )
    sub = Subscriber(broker.port).start()
    agent = AgentProcess(config, metrics_interval=0.5)
    try:

        def offline(device: str) -> bool:
            return any(
                json.loads(m.payload)["state"] == "offline"
                for m in sub.snapshot(f"/{device}/status")
            )

        sub.wait_for(
            lambda: all(offline(d) for d in ("unreachable", "wrong-unit", "bad-register")),
            timeout=30,
        )
        seqs_before = len(records_of(sub, "healthy"))
        sub.wait_for(lambda: len(records_of(sub, "healthy")) > seqs_before + 100, timeout=10)
        sub.wait_for(
            lambda: any(
                json.loads(m.payload)["devices_offline"] == 3 for m in sub.snapshot("/metrics")
            )
        )
        assert agent.process.poll() is None, agent.log
    finally:
        code = agent.stop()
    sub.stop()
    assert code == 0
    assert "Traceback" not in agent.log
    assert last_status(sub, "healthy")["state"] == "online"
    unreachable = last_status(sub, "unreachable")
    assert (
        "refused" in str(unreachable["error"]).lower()
        or "connect" in str(unreachable["error"]).lower()
    )
    assert "no answer" in str(last_status(sub, "wrong-unit")["error"])
    assert "exception 2" in str(last_status(sub, "bad-register")["error"])
    metrics = json.loads(sub.snapshot("/metrics")[-1].payload)
    assert metrics["poll_errors"] >= 9
    assert metrics["devices_online"] == 1
    # Each device's trouble is logged once when it goes offline, not at every poll.
    for device in ("unreachable", "wrong-unit", "bad-register"):
        assert sum(f"{device}: offline" in line for line in agent.lines) == 1, agent.log


def test_check_read_status_and_scan(tmp_path: Path, broker: Mosquitto, sim: SimProcess) -> None:
    config = modbus_config(
        tmp_path / "gateway.toml",
        broker_port=broker.port,
        data_dir=tmp_path / "var",
        devices=[
            {
                "id": "meter-1",
                "driver": "modbus",
                "host": "127.0.0.1",
                "port": sim.port,
                "unit": 1,
                "profile": "eastron-sdm630",
                "interval": "200ms",
            }
        ],
    )
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "devices   1 (1 modbus)" in checked.stdout

    as_json = json.loads(run_cli("check", "-c", str(config), "--json").stdout)
    assert as_json["ok"] is True
    assert as_json["devices"] == {"modbus": 1}

    read = run_cli("read", "meter-1", "-c", str(config))
    assert read.returncode == 0, read.stderr
    rows = {line.split()[0]: line.split()[1:] for line in read.stdout.splitlines()[1:]}
    assert rows["voltage_l1"][1] == "V"
    assert 200 < float(rows["voltage_l1"][0]) < 260
    read_json = json.loads(run_cli("read", "meter-1", "-c", str(config), "--json").stdout)
    assert any(r["name"] == "energy_import" and r["unit"] == "kWh" for r in read_json["readings"])

    missing = run_cli("read", "nope", "-c", str(config))
    assert missing.returncode == 2
    assert "no device 'nope'" in missing.stderr

    # status before any run, then after a short run
    assert run_cli("status", "-c", str(config)).returncode == 1
    agent = AgentProcess(config)
    from typing import Any

    from tests.support.wait import wait_until

    def online() -> dict[str, Any] | None:
        """`citygate status --json` once it shows meter-1 online (it polls every 200 ms)."""
        shown = run_cli("status", "-c", str(config), "--json")
        if shown.returncode != 0:
            return None  # the agent has not written its state yet
        report: dict[str, Any] = json.loads(shown.stdout)
        meter = report.get("devices", {}).get("meter-1", {})
        return report if meter.get("state") == "online" else None

    status_running = wait_until(online, what="meter-1 online", explain=lambda: agent.log)
    assert agent.stop() == 0
    assert status_running["devices"]["meter-1"]["state"] == "online"
    status = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
    assert set(status) >= {
        "backlog_samples",
        "backlog_bytes",
        "oldest_unsent_age_s",
        "dropped_samples",
        "devices",
    }
    assert status["dropped_samples"] == 0

    # the byte-order assistant: voltage L1 is a float32 ABCD at input register 0
    scan = run_cli(
        "scan",
        "modbus",
        "--host",
        "127.0.0.1",
        "--port",
        str(sim.port),
        "--unit",
        "1",
        "--address",
        "0",
        "--count",
        "2",
        "--table",
        "input",
        "--json",
    )
    assert scan.returncode == 0, scan.stderr
    rows_json = json.dumps(json.loads(scan.stdout))
    assert "float32" in rows_json and "CDAB" in rows_json
    text = run_cli(
        "scan",
        "modbus",
        "--host",
        "127.0.0.1",
        "--port",
        str(sim.port),
        "--unit",
        "1",
        "--address",
        "0",
        "--count",
        "2",
        "--table",
        "input",
    )
    assert text.returncode == 0
    assert "float32" in text.stdout


def test_check_reports_every_error_with_position(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "gw"\n\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nqos = 2\n\n'
        '[[device]]\nid = "m1"\ndriver = "modbus"\nhots = "10.0.0.1"\nprofile = "eastron-sdm630"\n'
    )
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert f"{config}:6:7:" in lines[0] and "qos" in lines[0]
    assert any(
        line.startswith(f"{config}:11:1:") and 'did you mean "host"' in line for line in lines
    )


def test_drivers_lists_builtins() -> None:
    result = run_cli("drivers")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["ble", "mbus", "modbus"] or {"ble", "mbus", "modbus"} <= set(names)


def test_demo_shows_live_readings_and_stops_on_ctrl_c() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "citygate.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 40
        seen: list[str] = []
        assert demo.stdout is not None
        wanted = ("meter-townhall seq", "meter-library seq", "water-main seq", "env-")
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            seen.append(line)
            data = [s for s in seen if " seq " in s]
            if all(any(s.startswith(w) for s in data) for w in wanted):
                break
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=20)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, err
    text = "".join(seen)
    assert "meter-townhall seq" in text and "voltage_l1=" in text
    assert "M-Bus water meter on /dev/" in text
    water = next(line for line in seen if line.startswith("water-main seq"))
    assert "meter_status=0" in water and "volume=" in water and " m3" in water
    assert any(line.startswith("env-") and "temperature=" in line for line in seen), text
    assert "Traceback" not in err
    # A first start on a fresh data_dir has nothing to warn about (it once could not write
    # retained.json: the demo built its Agent before the data_dir existed).
    assert not [s for s in [*seen, *err.splitlines()] if " WARNING " in s or " ERROR " in s]
