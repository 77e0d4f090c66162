"""M-Bus discovery (primary probe, secondary wildcard search), ``citygate scan mbus``
and ``citygate read`` against the simulator on a pseudo-terminal."""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from citygate.drivers.api import SerialLineConfig
from citygate.drivers.mbus.config import PrimaryAddress, SecondaryAddress
from citygate.drivers.mbus.scan import probe_primary, search_secondary, secondary_address, snippet
from citygate.lines import LineOwner
from tests.support.processes import run_cli

citygate_sim = pytest.importorskip("citygate_sim.mbus")

BAUD = 38400
PROBE = 0.05  # seconds: a probe at 38400 baud; silent addresses cost this much each


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = [
        citygate_sim.WaterMeter(12345678, 5, seed=1),
        citygate_sim.WaterMeter(12345699, 6, telegrams=2, seed=2),
        citygate_sim.WaterMeter(87654321, 7, manufacturer="ABB", medium="warm_water", seed=3),
        citygate_sim.WaterMeter(55500001, 9, seed=4),  # two meters left at the same address
        citygate_sim.WaterMeter(55500002, 9, seed=5),
    ]
    for meter in meters:
        meter.freeze()
    async with citygate_sim.MbusSimulator(meters, baudrate=BAUD) as simulator:
        yield simulator


@pytest.fixture
async def few() -> AsyncIterator[Any]:
    """Three meters; two of them differ from the fourth id digit on."""
    meters = [
        citygate_sim.WaterMeter(12345678, 5, seed=1),
        citygate_sim.WaterMeter(12395678, 6, telegrams=2, seed=2),
        citygate_sim.WaterMeter(87654321, 7, manufacturer="ABB", medium="warm_water", seed=3),
    ]
    async with citygate_sim.MbusSimulator(meters, baudrate=BAUD) as simulator:
        yield simulator


def line_config(port: str) -> SerialLineConfig:
    return SerialLineConfig("mbus", port, BAUD, "N", 1, 8, 1.0)


async def test_primary_probe_finds_meters_and_collisions(sim: Any) -> None:
    owner = LineOwner(line_config(sim.port), protocol="mbus")
    try:
        found = await probe_primary(owner, range(11), PROBE)
    finally:
        owner.close()
    assert [f.address for f in found] == [PrimaryAddress(a) for a in (5, 6, 7, 9)]
    five, six, seven, nine = found
    assert five.header is not None and five.header.id == "12345678"
    assert "volume" in five.records and "meter_status" in five.records
    assert six.header is not None and "fabrication_number" in six.records  # 2nd telegram
    assert seven.header is not None and seven.header.medium == "warm_water"
    assert nine.header is None and nine.problem is not None and "collision" in nine.problem
    text = snippet(owner.config, five)
    table = tomllib.loads(text)["device"][0]
    assert table == {"id": "water-12345678", "driver": "mbus", "serial": "mbus", "address": 5}
    assert '# secondary address: "1234567823242907"' in text


async def test_secondary_search_finds_every_meter(few: Any) -> None:
    owner = LineOwner(line_config(few.port), protocol="mbus")
    try:
        result = await search_secondary(owner, PROBE, max_time=60)
    finally:
        owner.close()
    assert result.complete
    ids = sorted(f.header.id for f in result.found if f.header is not None)
    assert ids == ["12345678", "12395678", "87654321"]
    for found in result.found:
        assert isinstance(found.address, SecondaryAddress)
        assert found.header is not None
        assert str(found.address) == secondary_address(found.header)
    # depth first, ten digits where meters collide (FFFFFFFF, 1, 12, 123): 1 + 10 × 4
    assert result.probes == 41


async def test_secondary_search_stops_at_its_time_limit(sim: Any) -> None:
    owner = LineOwner(line_config(sim.port), protocol="mbus")
    try:
        result = await search_secondary(owner, PROBE, max_time=0.05)
    finally:
        owner.close()
    assert not result.complete


def write_config(tmp_path: Path, port: str) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
id = "gw-mbus"
data_dir = "{tmp_path / "var"}"

[[serial]]
id = "mbus"
port = "{port}"
baudrate = {BAUD}

[[device]]
id = "water-main"
driver = "mbus"
serial = "mbus"
address = 6

[[device]]
id = "water-secondary"
driver = "mbus"
serial = "mbus"
address = "8765432F"
records = ["volume", "volume_flow"]
"""
    )
    return config


async def cli(*args: str) -> Any:
    # in a thread: the simulator serves the pty from this event loop meanwhile
    return await asyncio.to_thread(run_cli, *args, timeout=60.0)


async def test_citygate_scan_mbus_prints_snippets(few: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, few.port)
    result = await cli(
        "scan", "mbus", "-c", str(config), "--serial", "mbus", "--addresses", "4-6",
        "--secondary", "--timeout", str(PROBE),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tables = tomllib.loads(result.stdout)["device"]
    addresses = [t["address"] for t in tables]
    # address 7 is not probed: the secondary search finds that meter
    assert addresses == [5, 6, "8765432104422906"]
    assert "probing 3 primary addresses" in result.stderr


async def test_citygate_scan_mbus_json_and_usage(sim: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.port)
    result = await cli(
        "scan", "mbus", "-c", str(config), "--serial", "mbus", "--addresses", "9",
        "--timeout", str(PROBE), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (found,) = json.loads(result.stdout)
    assert found["address"] == 9 and "collision" in found["problem"]
    bad = await cli("scan", "mbus", "-c", str(config), "--serial", "mbus", "--addresses", "251")
    assert bad.returncode == 2
    assert "0-250" in bad.stderr
    unknown = await cli("scan", "mbus", "-c", str(config), "--serial", "nope")
    assert unknown.returncode == 2


async def test_citygate_read_an_mbus_meter(sim: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.port)
    result = await cli("read", "water-secondary", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    readings = {r["name"]: r for r in json.loads(result.stdout)["readings"]}
    assert set(readings) == {"meter_status", "volume", "volume_flow"}
    values = sim.meters[2].values()
    assert readings["volume"]["value"] == pytest.approx(values.volume_m3)
    assert readings["volume_flow"]["unit"] == "m3/h"
    table = await cli("read", "water-main", "-c", str(config))
    assert table.returncode == 0, table.stderr
    assert "volume_s1" in table.stdout
