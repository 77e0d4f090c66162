"""`citygate read`, `scan modbus --serial` (unit probe and byte-order assistant) on
an RTU line served by the simulator on a pseudo-terminal."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from citygate.drivers.api import shortest_float32
from tests.support.processes import run_cli

citygate_sim = pytest.importorskip("citygate_sim.modbus")

BAUD = 38400


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = {
        1: citygate_sim.make_meter("sdm630", seed=1),
        3: citygate_sim.make_meter("em24", seed=3),
    }
    async with citygate_sim.ModbusRtuSimulator(meters, baudrate=BAUD) as simulator:
        for meter in meters.values():
            meter.freeze()
        yield simulator


def write_config(tmp_path: Path, port: str) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
id = "gw-rtu"
data_dir = "{tmp_path / "var"}"

[[serial]]
id = "rs485"
port = "{port}"
baudrate = {BAUD}
timeout = "300ms"

[[device]]
id = "meter-1"
driver = "modbus"
serial = "rs485"
unit = 1
profile = "eastron-sdm630"
"""
    )
    return config


async def cli(*args: str) -> Any:
    # run in a thread: the simulator serves the pty from this event loop meanwhile
    return await asyncio.to_thread(run_cli, *args, timeout=60.0)


async def test_read_polls_an_rtu_device(sim: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.port)
    result = await cli("read", "meter-1", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    readings = {r["name"]: r for r in json.loads(result.stdout)["readings"]}
    truth = sim.meters[1].truth()
    assert len(readings) == 84
    want = shortest_float32(struct.unpack(">f", struct.pack(">f", truth["voltage_l1"]))[0])
    assert readings["voltage_l1"]["value"] == want


async def test_scan_finds_the_units_and_their_profiles(sim: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.port)
    result = await cli(
        "scan", "modbus", "--serial", "rs485", "--units", "1-4", "-c", str(config), "--json"
    )
    assert result.returncode == 0, result.stderr
    found = {entry["unit"]: entry for entry in json.loads(result.stdout)}
    assert set(found) == {1, 3}
    assert found[1]["profiles"][0] == "eastron-sdm630"
    assert found[3]["profiles"] == ["carlo-gavazzi-em24"]

    text = await cli("scan", "modbus", "--serial", "rs485", "--units", "3", "-c", str(config))
    assert text.returncode == 0, text.stderr
    assert 'profile = "carlo-gavazzi-em24"' in text.stdout
    assert "unit = 3" in text.stdout


async def test_the_byte_order_assistant_reads_over_rtu(sim: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.port)
    result = await cli(
        "scan", "modbus", "--serial", "rs485", "--unit", "3", "--address", "0x0000",
        "--count", "2", "--table", "input", "-c", str(config),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    raw = int(sim.meters[3].truth()["voltage_l1"])
    assert f"{raw:d}" in result.stdout  # int32 CDAB shows the raw tenths of a volt


async def test_scan_names_an_unknown_line(sim: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.port)
    result = await cli("scan", "modbus", "--serial", "rs232", "-c", str(config))
    assert result.returncode == 2
    assert "no [[serial]] line 'rs232'" in result.stderr
