"""The plugin template is a real, installable driver package found through its entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from citygate.drivers.api import DecodeError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "drivers" / "plugin-template"
sys.path.insert(0, str(TEMPLATE / "src"))

from citygate_driver_w1 import factory, parse_w1_slave  # noqa: E402

GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"


def test_parse_real_reply() -> None:
    assert parse_w1_slave(GOOD) == 23.125


@pytest.mark.parametrize(
    "text",
    [
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n",
        "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n",
        "x : YES\nt=abc\n",
        "",
    ],
)
def test_parse_rejects_bad_replies(text: str) -> None:
    with pytest.raises(DecodeError):
        parse_w1_slave(text)


async def test_driver_reads_a_sysfs_like_tree(tmp_path: Path) -> None:
    sensor_dir = tmp_path / "28-0316a2795aff"
    sensor_dir.mkdir()
    (sensor_dir / "w1_slave").write_text(GOOD)
    from citygate.drivers.api import DeviceContext

    context = DeviceContext(device_id="t", interval=30.0, config_dir=tmp_path)
    config = factory.configure({"sensor": "28-0316a2795aff", "devices_dir": tmp_path}, context)
    async with factory.create(config, context) as driver:
        [measurement] = await driver.poll()
    assert (measurement.name, measurement.value, measurement.unit) == ("temperature", 23.125, "Cel")


def test_installed_template_is_listed_as_a_plugin(tmp_path: Path) -> None:
    target = tmp_path / "site"
    source = tmp_path / "plugin"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(TEMPLATE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    listed = subprocess.run(
        [sys.executable, "-m", "citygate.cli", "drivers"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert "plugin (citygate-driver-w1" in lines["w1"]
    assert "built-in (citygate" in lines["modbus"]
