"""A whole site in one `citygate run`: a Modbus TCP meter, an M-Bus water meter on a
serial line (a pty), BLE sensors replayed from a capture; a real Mosquitto."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from citygate_sim.ble import DEMO_BINDKEY, BleSimulator
from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import BIN, AgentProcess, SimProcess, run_cli

PLAIN_SENSOR = "A4:C1:38:5B:0F:21"  # pvvx
ENCRYPTED_SENSOR = "54:48:E6:8F:80:A5"  # BTHome v2 with a bindkey


@pytest.fixture
def mbus_port() -> Iterator[str]:
    process = subprocess.Popen(
        [
            str(BIN / "citygate-sim"),
            "mbus",
            "--baudrate",
            "9600",
            "--unit",
            "5=12345678:medium=water",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("serial port "), line
    yield line.split()[-1]
    process.send_signal(signal.SIGTERM)
    process.wait(10)


def test_one_agent_reads_every_kind_of_device(
    tmp_path: Path, broker: Mosquitto, mbus_port: str
) -> None:
    sim = SimProcess({1: "sdm120"})
    capture = tmp_path / "site.jsonl"
    with capture.open("w") as stream:
        BleSimulator(seed=7).write_capture(stream, 600.0)
    key_file = tmp_path / "bindkey"
    key_file.write_text(DEMO_BINDKEY.hex() + "\n")
    key_file.chmod(0o600)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
id = "gw-site"
data_dir = "{tmp_path / "var"}"

[mqtt]
url = "mqtt://127.0.0.1:{broker.port}"
linger = "50ms"

[ble]
replay = "{capture}"
replay_loop = true

[[serial]]
id = "mbus"
port = "{mbus_port}"
baudrate = 9600
parity = "N"

[[device]]
id = "meter"
driver = "modbus"
host = "127.0.0.1"
port = {sim.port}
profile = "eastron-sdm120"
interval = "500ms"

[[device]]
id = "water"
driver = "mbus"
serial = "mbus"
address = 5
interval = "2s"

[[device]]
id = "env-plain"
driver = "ble"
address = "{PLAIN_SENSOR}"
interval = "1s"

[[device]]
id = "env-secret"
driver = "ble"
address = "{ENCRYPTED_SENSOR}"
bindkey_file = "{key_file}"
interval = "1s"
"""
    )
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == ""  # no warning: the bindkey is in a private file

    read = run_cli("read", "env-secret", "-c", str(config), "--json")
    assert read.returncode == 0, read.stderr
    assert {r["name"] for r in json.loads(read.stdout)["readings"]} >= {
        "temperature",
        "humidity",
        "rssi",
    }

    sub = Subscriber(broker.port).start()
    agent = AgentProcess(config)
    try:

        def names(device: str) -> set[str]:
            return {
                r["n"] for r in sub.data_records() if r["topic"] == f"city/gw-site/{device}/data"
            }

        sub.wait_for(
            lambda: all(names(d) for d in ("meter", "water", "env-plain", "env-secret")), timeout=30
        )
        sub.wait_for(lambda: any(b'"meter"' in m.payload for m in sub.snapshot("/water/status")))
    finally:
        code = agent.stop()
        sim.stop()
    sub.stop()
    assert code == 0, agent.log
    assert "Traceback" not in agent.log

    assert {"voltage", "energy_import"} <= names("meter")
    assert {"volume", "meter_status"} <= names("water")
    assert {"temperature", "humidity", "battery", "rssi"} <= names("env-plain")
    assert {"temperature", "humidity", "rssi"} <= names("env-secret")
    units = {r["n"]: r.get("u") for r in sub.data_records() if r["topic"].endswith("/water/data")}
    assert units["volume"] == "m3"
    assert units["meter_status"] is None  # a status byte: no unit
    water_status = json.loads(sub.snapshot("/water/status")[-1].payload)
    assert water_status["meter"]["id"] == "12345678"
    assert water_status["meter"]["medium"] == "water"
    for device in ("env-plain", "env-secret"):
        assert json.loads(sub.snapshot(f"/{device}/status")[-1].payload)["state"] == "online"
    # seq is gateway-wide: it never repeats across device kinds
    seqs = sub.seqs()
    assert len(seqs) == len(set(seqs))
