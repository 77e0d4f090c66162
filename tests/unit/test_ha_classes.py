"""The Home Assistant class table (agent/ha_classes.toml) against the spec and the decoders.

Home Assistant ≥ 2025.3 rejects a discovery message whose unit its device class does not
allow (home-assistant/core#140131), so every reading any built-in profile or decoder can
produce must classify to an allowed pair or to no class at all.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from citygate.cli import main
from citygate.drivers.api import CANONICAL_UNITS, CONVERSIONS, DecodeError
from citygate.drivers.ble import bthome, pvvx, ruuvi
from citygate.drivers.mbus.decode import decode_user_data
from citygate.drivers.modbus.profile import builtin_profiles, is_identity, load_profile
from citygate.ha_classes import (
    HaClass,
    allowed_state_classes,
    allowed_units,
    classify,
    device_classes,
    ha_unit,
    known_quantity,
    quantities,
    valid,
)

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT.parent / "shared" / "spec" / "quantities.md"
# A clean clone (CI) may not have ../shared: the names are also committed here.
SNAPSHOT = json.loads(Path(__file__).with_name("spec_quantities.json").read_text("utf-8"))
TABLE: dict[str, Any] = tomllib.loads(
    resources.files("citygate").joinpath("ha_classes.toml").read_text("utf-8")
)
NAME = re.compile(r"[a-z][a-z0-9_]*")
NOT_QUANTITIES = {"vb", "vs", "g"}  # SenML fields and a unit the spec's prose mentions


def canonical(unit: str | None) -> str | None:
    """The unit a reading is published in (agent/normalise.py)."""
    return None if unit is None else CONVERSIONS.get(unit, (unit, 1.0))[0]


def assert_valid(name: str, unit: str | None, found: HaClass) -> None:
    where = f"{name} [{unit}] -> {found}"
    if found.device_class is None:
        return
    assert found.device_class in device_classes(), where
    assert valid(found.device_class, found.unit), where
    assert found.unit in allowed_units(found.device_class), where
    if found.state_class is not None:
        assert found.state_class in allowed_state_classes(found.device_class), where


# --------------------------------------------------------------------------- the spec


def spec_sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in SPEC.read_text("utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
        sections.setdefault(current, []).append(line)
    return sections


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]*)`", text)


def spec_quantities() -> set[str]:
    """The quantity names of quantities.md (from the spec beside the repository when it is
    there, else from the snapshot committed with these tests)."""
    if not SPEC.is_file():
        return set(SNAPSHOT["quantities"])
    return parse_spec_quantities()


def spec_canonical_units() -> set[str]:
    if not SPEC.is_file():
        return set(SNAPSHOT["canonical_units"])
    return parse_spec_canonical_units()


def parse_spec_quantities() -> set[str]:
    """The quantity names of quantities.md: its prose lists and the M-Bus table's names."""
    names: set[str] = set()
    for title, lines in spec_sections().items():
        if not title.startswith(("Energy meters", "M-Bus meters", "BLE sensors")):
            continue
        for line in lines:
            if line.startswith("|"):
                cells = line.split("|")
                text = cells[2] if len(cells) > 2 else ""
            else:
                text = line
            names.update(t for t in backticked(text) if NAME.fullmatch(t))
    return names - NOT_QUANTITIES


def parse_spec_canonical_units() -> set[str]:
    units: set[str] = set()
    for line in spec_sections()["Canonical units"]:
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 3:
            units.update(backticked(cells[2]) + backticked(cells[3]))
    return units


@pytest.mark.skipif(not SPEC.is_file(), reason="no ../shared/spec to compare the snapshot with")
def test_the_committed_snapshot_is_the_spec() -> None:
    assert sorted(parse_spec_quantities()) == SNAPSHOT["quantities"]
    assert sorted(parse_spec_canonical_units()) == SNAPSHOT["canonical_units"]


def test_the_spec_parse_finds_the_quantities() -> None:
    names = spec_quantities()
    assert {"voltage_l1_l2", "energy_import", "flow_temperature", "rssi", "pm2_5"} <= names
    assert {"movement_counter", "meter_status", "energy_forward", "datetime"} <= names
    assert len(names) > 50


@pytest.mark.parametrize("name", sorted(spec_quantities()))
def test_every_quantity_of_the_spec_has_a_row(name: str) -> None:
    assert known_quantity(name), f"{name} has no row in ha_classes.toml [quantities]"


def test_every_unit_of_the_spec_and_the_converter_has_a_home_assistant_spelling() -> None:
    units = spec_canonical_units() | CANONICAL_UNITS | set(CONVERSIONS)
    assert {"Cel", "m3", "%RH", "ug/m3", "/", "kvarh", "dBm", "m/s2"} <= units
    assert sorted(units - set(TABLE["units"])) == []


@pytest.mark.parametrize(
    ("senml", "home_assistant"),
    [("Cel", "°C"), ("m3", "m³"), ("%RH", "%"), ("ug/m3", "\u00b5g/m³"), ("/", None),
     ("Wh", "Wh"), ("kWh", "kWh"), ("var", "var"), ("VA", "VA"), ("Hz", "Hz"),
     ("dBm", "dBm"), ("m/s2", "m/s²"), ("m3/h", "m³/h"), ("deg", "°"), ("count", None),
     (None, None), ("furlong", "furlong")],
)  # fmt: skip
def test_senml_units_map_to_home_assistant_spellings(
    senml: str | None, home_assistant: str | None
) -> None:
    assert ha_unit(senml) == home_assistant


# --------------------------------------------------------------------------- the table


def test_every_row_is_a_pair_home_assistant_accepts() -> None:
    rows: dict[str, dict[str, str]] = TABLE["quantities"]
    assert set(rows) == quantities()
    for name, row in rows.items():
        found = classify(name, row.get("unit"))
        assert found == HaClass(
            row.get("device_class"), row.get("state_class"), ha_unit(row.get("unit"))
        ), name  # a row classifies to itself, never to a unit-derived class
        assert_valid(name, row.get("unit"), found)


def test_every_unit_derived_class_is_a_pair_home_assistant_accepts() -> None:
    for unit, entry in TABLE["unit_classes"].items():
        found = classify("custom_register", unit)
        assert found.device_class == entry["device_class"], unit
        assert_valid("custom_register", unit, found)


def test_the_class_table_is_home_assistants() -> None:
    assert len(device_classes()) >= 60
    assert allowed_units("power_factor") == {"%", None}
    assert allowed_units("temperature") == {"°C", "°F", "K"}
    assert allowed_state_classes("energy") == {"total", "total_increasing"}
    assert allowed_units("no_such_class") == frozenset()
    assert not valid("power", "Watt")  # core#140131's example
    assert not valid("no_such_class", None)
    assert valid(None, "anything")
    for device_class, units in TABLE["device_classes"].items():
        for unit in units["units"]:
            assert "\u03bc" not in unit, f"{device_class}: micro as U+00B5, see the header"


@pytest.mark.parametrize(
    ("name", "unit", "expected"),
    [
        ("energy_import", "kWh", HaClass("energy", "total_increasing", "kWh")),
        ("energy_import_l2", "kWh", HaClass("energy", "total_increasing", "kWh")),
        (
            "reactive_energy_export",
            "kvarh",
            HaClass("reactive_energy", "total_increasing", "kvarh"),
        ),
        ("voltage_l1_l2", "V", HaClass("voltage", "measurement", "V")),
        ("current_n", "A", HaClass("current", "measurement", "A")),
        ("power_factor_l1", "/", HaClass("power_factor", "measurement", None)),
        ("phase_angle", "deg", HaClass(None, "measurement", "°")),
        ("voltage_thd_l1", "%", HaClass(None, "measurement", "%")),
        ("volume", "m3", HaClass("volume", "total_increasing", "m³")),
        ("energy_t2", "kWh", HaClass("energy", "total_increasing", "kWh")),
        ("energy_backward", "kWh", HaClass("energy", "total_increasing", "kWh")),
        ("energy_s1", "kWh", HaClass("energy", None, "kWh")),  # the billing-date value
        ("volume_max", "m3", HaClass("volume", None, "m³")),
        ("flow_temperature", "Cel", HaClass("temperature", "measurement", "°C")),
        ("temperature_difference", "K", HaClass("temperature_delta", "measurement", "K")),
        ("date", None, HaClass("date", None, None)),
        ("datetime", None, HaClass(None, None, None)),
        ("fabrication_number", None, HaClass(None, None, None)),
        ("meter_status", None, HaClass(None, None, None)),
        ("hca", "count", HaClass(None, "total_increasing", None)),
        ("humidity", "%RH", HaClass("humidity", "measurement", "%")),
        ("pm2_5", "ug/m3", HaClass("pm25", "measurement", "\u00b5g/m³")),
        ("temperature_2", "Cel", HaClass("temperature", "measurement", "°C")),
        ("acceleration_x", "m/s2", HaClass(None, "measurement", "m/s²")),
        # unknown names: the unit decides when it fits one class
        ("pump_power", "W", HaClass("power", "measurement", "W")),
        ("tank_level", "%", HaClass(None, "measurement", "%")),
        ("gas_ppm", "ppm", HaClass(None, "measurement", "ppm")),
        ("flags", None, HaClass(None, None, None)),
        # a known name in another unit is classified by the unit
        ("temperature", "V", HaClass("voltage", "measurement", "V")),
        ("energy_per_hour", None, HaClass(None, None, None)),
    ],
)
def test_classify(name: str, unit: str | None, expected: HaClass) -> None:
    assert classify(name, unit) == expected
    assert_valid(name, unit, expected)


@pytest.mark.parametrize(
    ("medium", "device_class"),
    [("water", "water"), ("warm_water", "water"), ("cold_water", "water"), ("gas", "gas"),
     ("heat", "volume"), (None, "volume")],
)  # fmt: skip
def test_a_meters_medium_picks_the_energy_dashboard_class(
    medium: str | None, device_class: str
) -> None:
    for name in ("volume", "volume_t1", "volume_forward"):
        found = classify(name, "m3", medium)
        assert found == HaClass(device_class, "total_increasing", "m³")
        assert_valid(name, "m3", found)
    assert classify("energy", "kWh", medium).device_class == "energy"


def test_hostile_names_classify_without_error() -> None:
    for name in ("", "_", "_" * 10_000, "energy" + "_l1" * 5_000, "x" * 100_000, "é_s1"):
        found = classify(name, "W")
        assert found.device_class in (None, "power")


# --------------------------------------------------------------------------- the decoders


def profile_readings() -> set[tuple[str, str | None]]:
    found = set()
    for path in builtin_profiles().values():
        for register in load_profile(path).registers:
            if not is_identity(register):  # read once into the status, never a sensor
                found.add((register.name, canonical(register.unit)))
    return found


COUNTER = re.compile(r"(reactive_)?energy_(import|export|total)(_l[123])?")


def test_every_builtin_profile_register_classifies_to_a_valid_pair() -> None:
    readings = profile_readings()
    assert len(builtin_profiles()) >= 6 and len(readings) > 80
    unclassified = set()
    for name, unit in readings:
        found = classify(name, unit)
        assert_valid(name, unit, found)
        if COUNTER.fullmatch(name):
            assert found.state_class == "total_increasing", name
            assert found.device_class in ("energy", "reactive_energy"), name
        if found.device_class is None:
            unclassified.add(re.sub(r"(_l[123])+$|(_ll)?_avg$", "", name))
    # the profiles' quantities without a class are those without a fitting Home Assistant one
    assert unclassified <= {"phase_angle", "voltage_thd", "current_thd", "apparent_energy"}


def mbus_records(body: bytes) -> list[tuple[str, str | None]]:
    try:
        telegram = decode_user_data(0x78, body)
    except DecodeError:
        return []
    return [(r.name, canonical(r.unit)) for r in telegram.records]


def mbus_readings() -> set[tuple[str, str | None]]:
    """What the M-Bus decoder names and units: every VIF of the primary, FB and FD tables,
    plain-text units, every combinable VIFE on an energy and a volume VIF, and the DIF's
    function, storage, tariff and sub-unit suffixes."""
    data = b"\x01\x02\x03\x04"
    found: set[tuple[str, str | None]] = set()
    vibs = [bytes([code]) for code in range(0x7B)]
    vibs += [bytes([table, code]) for table in (0xFB, 0xFD) for code in range(0x80)]
    vibs += [b"\x7c\x03HR%", b"\x7c\x01%", b"\x7c\x03WkX"]
    for base in (0x04, 0x13):  # energy Wh, volume l
        vibs += [bytes([base | 0x80, code]) for code in range(0x80) if code != 0x7C]
        vibs.append(bytes([base | 0x80, 0xFC, 0x01]))
    for vib in vibs:
        for dib in (b"\x04", b"\x14", b"\x24", b"\x34", b"\x44", b"\x84\x10", b"\x84\x40"):
            found.update(mbus_records(dib + vib + data))
        found.update(mbus_records(b"\x02" + vib + b"\x21\x0c"))  # 16-bit: dates (type G)
    return found


def test_every_mbus_reading_classifies_to_a_valid_pair() -> None:
    readings = mbus_readings()
    names = {name for name, _ in readings}
    assert len(readings) > 2000
    assert {"energy", "volume", "flow_temperature", "hca", "energy_forward", "volume_t1"} <= names
    assert {"energy_max", "energy_s1", "energy_u1", "relative_humidity", "rf_level"} <= names
    for name, unit in readings:
        for medium in (None, "water", "gas", "heat"):
            assert_valid(name, unit, classify(name, unit, medium))
    counters = [
        (n, u) for n, u in readings if re.fullmatch(r"(energy|volume)(_t\d|_u\d|_forward)?", n)
    ]
    assert len(counters) >= 8
    for name, unit in counters:
        assert classify(name, unit).state_class == "total_increasing", (name, unit)
    # a reading a meter holds for a past date or an extreme is not a running counter
    for name, unit in readings:
        if re.fullmatch(r"(energy|volume)(_max|_min|_err|_s\d)", name):
            assert classify(name, unit).state_class is None, name


def ble_readings() -> set[tuple[str, str | None]]:
    found = {("rssi", "dBm")}  # drivers/ble/decode.py adds it to every sample
    for obj in bthome.OBJECTS.values():
        found.add((obj.name, canonical(obj.unit)))
        found.add((obj.name + "_2", canonical(obj.unit)))  # a property sent twice
    raw5 = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    found.update((m.name, canonical(m.unit)) for m in ruuvi.parse(raw5))
    atc = bytes.fromhex("A4C13800AABB00E6320C0B9A2A")
    found.update((m.name, canonical(m.unit)) for m in pvvx.parse(atc).measurements)
    return found


def test_every_ble_reading_classifies_to_a_valid_pair() -> None:
    readings = ble_readings()
    names = {name for name, _ in readings}
    assert {"temperature", "acceleration_x", "movement_counter", "counter", "co2"} <= names
    for name, unit in readings:
        assert_valid(name, unit, classify(name, unit))
    assert classify("energy", "kWh").state_class == "total_increasing"
    assert classify("water", "m3") == HaClass("water", "total_increasing", "m³")
    assert classify("gas", "m3") == HaClass("gas", "total_increasing", "m³")
    assert classify("movement_counter", "count").state_class == "total_increasing"


# --------------------------------------------------------------------------- citygate check

GATEWAY = """\
[gateway]
id = "gw-1"
data_dir = "{data}"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[homeassistant]
enabled = {enabled}

[[device]]
id = "meter-builtin"
driver = "modbus"
host = "127.0.0.1"
profile = "eastron-sdm630"

[[device]]
id = "meter-custom"
driver = "modbus"
host = "127.0.0.1"
profile = "my-meter.toml"

  [[device.registers]]
  name = "valve_angle"
  address = 0x0100
  unit = "deg"

  [[device.registers]]
  name = "pump_power"
  address = 0x0102
  unit = "kW"

  [[device.registers]]
  name = "phase_angle_l1"
  address = 0x0104
  unit = "deg"
"""

PROFILE = """\
[profile]
name = "my-meter"
source = "a test"

[[registers]]
name = "energy_import"
address = 0
unit = "Wh"

[[registers]]
name = "co_level"
address = 2
unit = "ppm"
"""


def write_site(tmp_path: Path, enabled: bool) -> Path:
    (tmp_path / "my-meter.toml").write_text(PROFILE)
    config = tmp_path / "gateway.toml"
    text = GATEWAY.format(data=tmp_path / "var", enabled=str(enabled).lower())
    config.write_text(text)
    return config


def check_warnings(config: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["check", "-c", str(config)]) == 0
    err = capsys.readouterr().err
    return [line.replace(f"{config.parent}/", "") for line in err.splitlines()]


def test_check_warns_of_custom_registers_without_a_home_assistant_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_site(tmp_path, enabled=True)
    assert check_warnings(config, capsys) == [
        'gateway.toml:26:3: warning: device "meter-custom" register "valve_angle": unit "deg"'
        " has no Home Assistant device class; with [homeassistant] enabled it is published"
        " without one",
        'my-meter.toml:13:1: warning: profile register "co_level": unit "ppm" has no Home'
        " Assistant device class; with [homeassistant] enabled it is published without one",
    ]


def test_check_is_quiet_about_classes_when_home_assistant_is_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_warnings(write_site(tmp_path, enabled=False), capsys) == []


def test_check_json_lists_the_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_site(tmp_path, enabled=True)
    assert main(["check", "-c", str(config), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count('"warning: ') == 2 and "valve_angle" in out and "co_level" in out


def test_the_table_ships_in_the_wheel() -> None:
    """pyproject's package-data puts ha_classes.toml next to the module in the wheel
    (checked by building it: tests/integration/test_wheel.py builds the same way)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["*"]
    assert any(fnmatch.fnmatch("ha_classes.toml", p) for p in patterns)
    assert (ROOT / "agent" / "ha_classes.toml").is_file()
