"""Sizing in ``citygate check`` (issue 16): the arithmetic from a config, ``--json``, and the
stored-bytes constants of agent/sizing.py against a real buffer file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citygate import registry, sizing
from citygate.app import EXPIRE_EVERY_S
from citygate.cli import main
from citygate.config import load
from tests.bench.sdwear import METER, SENSOR, SampleMaker, fill, used_bytes

CONFIG = """
[gateway]
id = "gw-size"
data_dir = "var"

[buffer]
max_size = "{max_size}"
max_age = "{max_age}"
durability = "full"

[ble]

[[serial]]
id = "mbus"
port = "/dev/null"

[[device]]
id = "meter-a"
driver = "modbus"
host = "127.0.0.1"
interval = "15s"
  [[device.registers]]
  name = "voltage_l1"
  address = 0
  type = "float32"
  unit = "V"
  [[device.registers]]
  name = "current_l1"
  address = 2
  type = "float32"
  unit = "A"
  [[device.registers]]
  name = "active_power"
  address = 4
  type = "float32"
  unit = "W"

[[device]]
id = "meter-b"
driver = "modbus"
host = "127.0.0.1"
interval = "1m"
  [[device.registers]]
  name = "energy_import"
  address = 0
  type = "float32"
  unit = "kWh"
  [[device.registers]]
  name = "frequency"
  address = 2
  type = "float32"
  unit = "Hz"

[[device]]
id = "env-pvvx"
driver = "ble"
address = "A4:C1:38:5B:0F:21"
format = "pvvx"

[[device]]
id = "env-auto"
driver = "ble"
address = "A4:C1:38:5B:0F:22"

[[device]]
id = "water"
driver = "mbus"
serial = "mbus"
address = 5
records = ["volume", "volume_flow"]

[[device]]
id = "spare"
driver = "modbus"
host = "127.0.0.1"
enabled = false
  [[device.registers]]
  name = "voltage_l1"
  address = 0
"""

# By hand from CONFIG: per minute, meter-a 4 samples × 3 readings, meter-b 1 × 2, env-pvvx
# (60 s) 1 × 6 (pvvx: 5 values + rssi), env-auto 1 × 6 (the BLE estimate), water (15 min)
# 1/15 × 3 (two records + meter_status); spare is disabled.
SAMPLES_PER_MIN = 4 + 1 + 1 + 1 + 1 / 15
READINGS_PER_MIN = 12 + 2 + 6 + 6 + 3 / 15


def _config(tmp_path: Path, max_size: str = "1MiB", max_age: str = "30d") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(max_size=max_size, max_age=max_age))
    return path


def _expected_per_day(durability: str, broker_up: bool) -> float:
    cost = sizing.WRITE_BYTES[durability, broker_up]
    per_min = cost.per_sample * SAMPLES_PER_MIN + cost.per_reading * READINGS_PER_MIN
    return per_min * 1440 + sizing.EXPIRE_WRITE_BYTES[durability] * 1440


def test_the_figures_of_a_known_config(tmp_path: Path) -> None:
    config = load(_config(tmp_path), registry.factories())
    sized = sizing.size(config, registry.factories())

    loads = {d.device: (d.readings_per_sample, d.source) for d in sized.devices}
    assert loads == {
        "meter-a": (3, "driver"),
        "meter-b": (2, "driver"),
        "env-pvvx": (6, "driver"),
        "env-auto": (sizing.ESTIMATED_READINGS["ble"], "estimate"),
        "water": (3, "driver"),
    }
    assert sized.samples_per_min == pytest.approx(SAMPLES_PER_MIN)
    assert sized.readings_per_min == pytest.approx(READINGS_PER_MIN)
    accounted_per_min = (
        sizing.ACCOUNTED_BYTES.per_sample * SAMPLES_PER_MIN
        + sizing.ACCOUNTED_BYTES.per_reading * READINGS_PER_MIN
    )
    assert sized.max_size_lasts_s == pytest.approx(2**20 / accounted_per_min * 60)
    assert not sized.ended_by_max_age  # 1 MiB lasts hours, max_age is 30 days
    file_per_min = (
        sizing.FILE_BYTES.per_sample * SAMPLES_PER_MIN
        + sizing.FILE_BYTES.per_reading * READINGS_PER_MIN
    )
    assert sized.stored_bytes_per_reading == pytest.approx(file_per_min / READINGS_PER_MIN)
    assert sized.durability == "full"
    for durability in ("normal", "full"):
        assert sized.write_bytes_per_day[durability] == pytest.approx(
            _expected_per_day(durability, broker_up=True)
        )
        assert sized.write_bytes_per_day_outage[durability] == pytest.approx(
            _expected_per_day(durability, broker_up=False)
        )


def test_sparse_samples_pay_for_acks_of_their_own(tmp_path: Path) -> None:
    """One sample a minute: the next append comes later than ACK_FOLD_S, so each ack is a
    commit of its own (the config above, ~7 samples a minute, folds them)."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[gateway]\nid = "gw"\ndata_dir = "var"\n\n[[device]]\nid = "m"\ndriver = "modbus"\n'
        'host = "127.0.0.1"\ninterval = "1m"\n  [[device.registers]]\n  name = "voltage_l1"\n'
        '  address = 0\n  type = "float32"\n  unit = "V"\n'
    )
    sized = sizing.size(load(path, registry.factories()), registry.factories())
    assert sized.samples_per_min == 1
    for durability in ("normal", "full"):
        folded = sizing.WRITE_BYTES[durability, True].of(1, 1) * 1440
        expected = (
            folded
            + sizing.UNFOLDED_ACK_WRITE_BYTES[durability] * 1440
            + sizing.EXPIRE_WRITE_BYTES[durability] * 1440
        )
        assert sized.write_bytes_per_day[durability] == pytest.approx(expected)


def test_max_age_ends_the_outage_first(tmp_path: Path) -> None:
    config = load(_config(tmp_path, max_size="1GiB", max_age="2h"), registry.factories())
    sized = sizing.size(config, registry.factories())
    assert sized.max_size_lasts_s is not None
    assert sized.max_size_lasts_s > 2 * 3600
    assert sized.ended_by_max_age
    assert "max_age 2 h ends" in "\n".join(sizing.summary_lines(sized))


def test_a_driver_that_cannot_tell_gets_the_documented_estimate(tmp_path: Path) -> None:
    config = load(_config(tmp_path), registry.factories())
    sized = sizing.size(config, {})  # no factory offers expected_readings
    assert {d.source for d in sized.devices} == {"estimate"}
    readings = {d.device: d.readings_per_sample for d in sized.devices}
    assert readings["meter-a"] == sizing.DEFAULT_ESTIMATE
    assert readings["water"] == sizing.ESTIMATED_READINGS["mbus"]


class _BrokenHook:
    def expected_readings(self, config: object) -> int:
        raise RuntimeError("a plugin's bug")


def test_a_broken_hook_gives_the_estimate(tmp_path: Path) -> None:
    config = load(_config(tmp_path), registry.factories())
    sized = sizing.size(config, {"modbus": _BrokenHook()})  # type: ignore[dict-item]
    meter = next(d for d in sized.devices if d.device == "meter-a")
    assert (meter.readings_per_sample, meter.source) == (sizing.DEFAULT_ESTIMATE, "estimate")


def test_the_expire_period_is_the_agents() -> None:
    assert sizing.EXPIRE_EVERY_S == EXPIRE_EVERY_S


def test_check_json_has_the_sizing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path)
    assert main(["check", "-c", str(path), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)["sizing"]
    assert figures["samples_per_min"] == pytest.approx(SAMPLES_PER_MIN, abs=1e-3)
    assert figures["readings_per_min"] == pytest.approx(READINGS_PER_MIN, abs=1e-3)
    assert figures["durability"] == "full"
    assert figures["max_size_bytes"] == 2**20
    assert figures["write_bytes_per_day"]["normal"] == round(_expected_per_day("normal", True))
    assert figures["write_bytes_per_day_outage"]["full"] == round(_expected_per_day("full", False))
    assert [d["device"] for d in figures["devices"]] == [
        "meter-a",
        "meter-b",
        "env-pvvx",
        "env-auto",
        "water",
    ]


def test_check_prints_the_sizing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "7.07 samples/min, 26.2 readings/min (per sample: estimated for env-auto," in out
    assert "of broker outage (max_age 30 d)" in out
    assert "/day at durability full (configured), " in out


@pytest.mark.parametrize("readings", [SENSOR, METER])
def test_the_stored_bytes_constants_match_a_real_buffer_file(tmp_path: Path, readings: int) -> None:
    """A size check: 300 realistic samples in a real buffer file cost what agent/sizing.py
    says, within 10 % (the bench that measured the constants fills it the same way)."""
    path = tmp_path / "buffer.sqlite3"
    maker = SampleMaker(seed=7)  # not the bench's seed: other values, the same kind
    buffer = fill(path, 40, readings, maker=maker)  # past the file's first pages
    try:
        accounted_before, used_before = buffer.stats().backlog_bytes, used_bytes(path)
        for i in range(300):
            buffer.append([maker.sample(f"meter-{i % 4}", 1.8e9 + 10 * i, readings)])
        accounted = (buffer.stats().backlog_bytes - accounted_before) / 300
        grown = (used_bytes(path) - used_before) / 300
    finally:
        buffer.close()
    assert accounted == pytest.approx(sizing.ACCOUNTED_BYTES.of(1, readings), rel=0.10)
    assert grown == pytest.approx(sizing.FILE_BYTES.of(1, readings), rel=0.10)
