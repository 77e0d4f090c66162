"""Profiles and the driver's config checks: every error names its place."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from citygate.drivers.api import (
    ConfigIssue,
    DeviceContext,
    DriverConfigError,
    Measurement,
    SerialLineConfig,
)
from citygate.drivers.modbus.config import FIELDS, ModbusConfig, configure
from citygate.drivers.modbus.decode import RegisterSpec
from citygate.drivers.modbus.driver import ModbusRtuDriver, factory
from citygate.drivers.modbus.profile import (
    REGISTER_FIELDS,
    builtin_profile_dirs,
    builtin_profiles,
    is_identity,
    load_profile,
    parse_registers,
)

REPO = Path(__file__).resolve().parents[3]
QUANTITY_NAMES_3PHASE = {
    "voltage_l1", "voltage_l1_l2", "current_l1", "current_n", "active_power_l1", "active_power",
    "apparent_power", "reactive_power", "power_factor", "phase_angle", "frequency",
    "energy_import", "energy_export", "energy_total", "reactive_energy_import",
    "reactive_energy_export", "voltage_thd_l1", "current_thd_l1", "demand_power",
}  # fmt: skip
RS485 = SerialLineConfig("rs485", "/dev/ttyUSB0", 9600, "N", 1, 8, 1.0)


def context(tmp_path: Path) -> DeviceContext:
    return DeviceContext("meter-1", 10.0, tmp_path, serial_lines={"rs485": RS485})


def issues_of(options: dict[str, Any], tmp_path: Path) -> list[ConfigIssue]:
    with pytest.raises(DriverConfigError) as caught:
        configure(options, context(tmp_path))
    return caught.value.issues


def one_issue(options: dict[str, Any], tmp_path: Path) -> ConfigIssue:
    (issue,) = issues_of(options, tmp_path)
    return issue


def write_profile(tmp_path: Path, text: str, name: str = "meter.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


HEADER = '[profile]\nname = "x"\nsource = "test sheet v1"\n'


# ------------------------------------------------------------------ built-in profiles


def test_builtin_profiles_are_found_in_the_repository() -> None:
    found = builtin_profiles()
    assert {"eastron-sdm630", "eastron-sdm120"} <= set(found)
    assert builtin_profile_dirs()[0] == REPO / "config" / "profiles"


@pytest.mark.parametrize("name", ["eastron-sdm630", "eastron-sdm120"])
def test_builtin_eastron_profiles_load(name: str) -> None:
    profile = load_profile(builtin_profiles()[name])
    assert profile.name == name
    assert profile.manufacturer == "Eastron"
    assert profile.source
    assert profile.max_gap is None  # the device default (16) coalesces
    assert profile.max_registers == 80
    identity = [spec for spec in profile.registers if is_identity(spec)]
    assert [(s.name, s.address, s.table, s.type) for s in identity] == [
        ("serial_number", 0xFC00, "holding", "uint32")
    ]
    for spec in profile.registers:
        if is_identity(spec):
            continue
        assert (spec.table, spec.type, spec.order) == ("input", "float32", "ABCD")
        assert spec.address % 2 == 0
        assert spec.unit is not None
    names = {spec.name for spec in profile.registers}
    if name == "eastron-sdm630":
        assert names >= QUANTITY_NAMES_3PHASE
        assert not any(n in names for n in ("voltage", "current"))
    else:
        assert names >= {"voltage", "current", "active_power", "frequency", "energy_import"}
        assert not any(n.endswith(("_l1", "_l2", "_l3")) for n in names)


def test_sdm630_addresses_follow_the_register_numbers() -> None:
    by_name = {s.name: s for s in load_profile(builtin_profiles()["eastron-sdm630"]).registers}
    # register number - 30001, per the Eastron table (vectors/modbus C.2)
    expected = {
        "voltage_l1": 30001, "voltage_l3": 30005, "current_l2": 30009, "active_power_l1": 30013,
        "power_factor_l1": 30031, "active_power": 30053, "frequency": 30071,
        "energy_import": 30073, "energy_export": 30075, "reactive_energy_import": 30077,
        "demand_power": 30085, "voltage_l1_l2": 30201, "current_n": 30225,
        "voltage_thd_l1": 30235, "current_thd_l1": 30241, "energy_total": 30343,
        "energy_import_l1": 30347, "reactive_energy_total_l3": 30381,
    }  # fmt: skip
    for name, register in expected.items():
        assert by_name[name].address == register - 30001, name
    assert by_name["energy_import"].unit == "kWh"
    assert by_name["reactive_power"].unit == "var"
    assert by_name["power_factor"].unit == "/"


def test_profile_files_have_exactly_the_register_keys() -> None:
    for path in builtin_profiles().values():
        document = tomllib.loads(path.read_text(encoding="utf-8"))
        for table in document["registers"]:
            assert set(table) <= set(REGISTER_FIELDS)


# ------------------------------------------------------------------ configure: good


def test_configure_with_a_builtin_profile(tmp_path: Path) -> None:
    config = configure({"host": "127.0.0.1", "profile": "eastron-sdm120"}, context(tmp_path))
    assert isinstance(config, ModbusConfig)
    assert (config.port, config.unit, config.timeout, config.retries) == (502, 1, 1.0, 1)
    assert (config.max_gap, config.max_registers) == (16, 80)  # default gap, profile's span
    assert config.where == "127.0.0.1:502 unit 1"
    assert all(r.count <= 80 for r in config.plan.requests)


@pytest.mark.parametrize(
    ("name", "coalesced", "gap_free"),
    [
        ("eastron-sdm630", [(0x0000, 80), (0x0050, 28), (0x00C8, 70), (0x014E, 48)], 15),
        ("eastron-sdm120", [(0x0000, 38), (0x0046, 26), (0x0102, 8), (0x0156, 4)], 12),
    ],
)
def test_eastron_profiles_read_in_four_requests(
    tmp_path: Path, name: str, coalesced: list[tuple[int, int]], gap_free: int
) -> None:
    config = configure({"host": "h", "profile": name}, context(tmp_path))
    assert [(r.address, r.count) for r in config.plan.requests] == coalesced
    strict = configure({"host": "h", "profile": name, "max_gap": 0}, context(tmp_path))
    assert len(strict.plan.requests) == gap_free


def test_device_limits_override_the_profile(tmp_path: Path) -> None:
    config = configure(
        {"host": "h", "profile": "eastron-sdm630", "max_gap": 0, "max_registers": 100},
        context(tmp_path),
    )
    assert (config.max_gap, config.max_registers) == (0, 100)
    plain = configure({"host": "h", "registers": [{"name": "x", "address": 0}]}, context(tmp_path))
    assert (plain.max_gap, plain.max_registers) == (16, 125)


def test_device_register_replaces_the_profile_register_of_that_name(tmp_path: Path) -> None:
    config = configure(
        {
            "host": "10.20.0.31",
            "profile": "eastron-sdm120",
            "registers": [
                {"name": "energy_import", "address": 0x0048, "table": "input",
                 "type": "float32", "unit": "Wh"},
                {"name": "relay", "address": 3, "table": "coil"},
            ],
        },
        context(tmp_path),
    )  # fmt: skip
    by_name = {spec.name: spec for spec in config.registers}
    assert by_name["energy_import"].unit == "Wh"
    assert [s.name for s in config.registers].count("energy_import") == 1
    assert by_name["relay"] == RegisterSpec("relay", 3, "coil", "bool")


def test_register_defaults_follow_config_md(tmp_path: Path) -> None:
    config = configure(
        {"host": "h", "registers": [{"name": "x", "address": 0x10}]}, context(tmp_path)
    )
    assert config.registers == (RegisterSpec("x", 0x10, "holding", "uint16", "ABCD", 1.0, 0.0),)


def test_profile_path_is_relative_to_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    write_profile(
        tmp_path / "profiles",
        HEADER + '[[registers]]\nname = "level"\naddress = 5\ntable = "input"\nunit = "%"\n',
    )
    config = configure({"host": "h", "profile": "profiles/meter.toml"}, context(tmp_path))
    assert config.registers == (RegisterSpec("level", 5, "input", "uint16", unit="%"),)
    assert config.plan.decode([[42]]) == [Measurement("level", 42, "%")]


def test_serial_device_configures_with_the_line_timeout_by_default(tmp_path: Path) -> None:
    slow_line = dataclasses.replace(RS485, timeout=0.3)
    config = configure(
        {"serial": "rs485", "profile": "eastron-sdm630"},
        dataclasses.replace(context(tmp_path), serial_lines={"rs485": slow_line}),
    )
    assert config.serial == slow_line
    assert config.where == "serial rs485 unit 1"
    assert config.timeout == 0.3
    driver = factory.create(config, context(tmp_path))
    assert isinstance(driver, ModbusRtuDriver)
    own = configure(
        {"serial": "rs485", "profile": "eastron-sdm630", "timeout": 0.25}, context(tmp_path)
    )
    assert own.timeout == 0.25
    assert configure({"host": "h", "profile": "eastron-sdm630"}, context(tmp_path)).timeout == 1.0


def test_serial_device_refuses_the_broadcast_unit(tmp_path: Path) -> None:
    with pytest.raises(DriverConfigError) as caught:
        configure({"serial": "rs485", "unit": 0, "profile": "eastron-sdm630"}, context(tmp_path))
    assert [(i.path, i.message) for i in caught.value.issues] == [
        (("unit",), "unit 0 is the broadcast address on a serial line: no device answers it")
    ]


def test_factory_declares_the_contract() -> None:
    assert factory.name == "modbus"
    assert factory.default_interval == 10.0
    assert factory.fields is FIELDS
    assert set(FIELDS) == {
        "host", "port", "serial", "unit", "profile", "timeout", "retries",
        "max_gap", "max_registers", "registers",
    }  # fmt: skip
    assert FIELDS["registers"].fields is REGISTER_FIELDS
    assert set(REGISTER_FIELDS) == {
        "name", "address", "table", "type", "count", "order", "scale", "offset", "unit",
        "writable", "min", "max",
    }  # fmt: skip
    assert factory.version


# ------------------------------------------------------------------ configure: errors


def test_host_and_serial_are_exclusive(tmp_path: Path) -> None:
    issue = one_issue({"host": "h", "serial": "rs485", "profile": "eastron-sdm120"}, tmp_path)
    assert issue.path == ("serial",)
    assert "not both" in issue.message
    issue = one_issue({"profile": "eastron-sdm120"}, tmp_path)
    assert issue.path == ()
    assert "host" in issue.message
    assert "serial" in issue.message


def test_serial_must_name_a_serial_line(tmp_path: Path) -> None:
    issue = one_issue({"serial": "rs-485", "profile": "eastron-sdm120"}, tmp_path)
    assert issue.path == ("serial",)
    assert issue.message == 'no [[serial]] line has id "rs-485" (defined: "rs485")'


def test_no_registers_at_all(tmp_path: Path) -> None:
    issue = one_issue({"host": "h"}, tmp_path)
    assert issue.path == ()
    assert "no registers" in issue.message


def test_timeout_must_be_positive(tmp_path: Path) -> None:
    issue = one_issue({"host": "h", "profile": "eastron-sdm120", "timeout": 0}, tmp_path)
    assert issue.path == ("timeout",)


def test_unknown_builtin_profile_lists_close_matches(tmp_path: Path) -> None:
    issue = one_issue({"host": "h", "profile": "eastron-sdm603"}, tmp_path)
    assert issue.path == ("profile",)
    assert issue.file is None
    assert 'did you mean "eastron-sdm630"' in issue.message
    assert "eastron-sdm120" in issue.message


def test_missing_profile_file(tmp_path: Path) -> None:
    issue = one_issue({"host": "h", "profile": "profiles/none.toml"}, tmp_path)
    assert issue.path == ("profile",)
    assert str(tmp_path / "profiles" / "none.toml") in issue.message


def test_register_wider_than_max_registers(tmp_path: Path) -> None:
    issue = one_issue(
        {
            "host": "h",
            "max_registers": 2,
            "registers": [{"name": "e", "address": 0, "type": "uint64"}],
        },
        tmp_path,
    )
    assert issue.path == ("max_registers",)
    assert "spans 4 registers" in issue.message


@pytest.mark.parametrize(
    ("register", "path", "message"),
    [
        (
            {"name": "x", "address": 0, "unit": "kwh"},
            ("unit",),
            'unknown unit "kwh"; did you mean "kWh"?',
        ),
        (
            {"name": "x", "address": 0, "unit": "furlong"},
            ("unit",),
            "quantities.md lists the units",
        ),
        ({"name": "x", "address": 0, "table": "coil", "type": "float32"}, ("type",), "single bits"),
        (
            {"name": "x", "address": 0, "table": "discrete", "type": "uint16"},
            ("type",),
            "single bits",
        ),
        ({"name": "x", "address": 0, "table": "coil", "order": "CDAB"}, ("order",), "no meaning"),
        ({"name": "x", "address": 0, "type": "bool", "scale": 2.0}, ("scale",), "no scale"),
        ({"name": "x", "address": 0, "type": "bool", "offset": 1.0}, ("offset",), "no offset"),
        ({"name": "x", "address": 0, "type": "bool", "unit": "V"}, ("unit",), "no unit"),
        ({"name": "x", "address": 0, "scale": 0.0}, ("scale",), "must not be 0"),
        ({"name": "x", "address": 0xFFFF, "type": "float32"}, ("address",), "runs past"),
        (
            {"name": "x", "address": 70000},
            ("address",),
            '"address": expected from 0 to 65535, found 70000',
        ),
        ({"name": "x", "address": "0x10"}, ("address",), "expected an integer, found a string"),
        ({"name": "x", "address": 0, "type": "flaot32"}, ("type",), 'did you mean "float32"'),
        ({"name": "x", "address": 0, "order": "abcd"}, ("order",), 'did you mean "ABCD"'),
        (
            {"name": "Voltage L1", "address": 0},
            ("name",),
            '"name": expected a quantity name in snake_case (quantities.md), found "Voltage L1"',
        ),
        ({"name": "x", "adress": 0}, ("adress",), 'did you mean "address"'),
        ({"address": 0}, (), 'missing required key "name" in [[device.registers]]'),
        ({"name": "x", "address": 0, "scale": float("nan")}, ("scale",), "finite"),
    ],
)
def test_register_errors_name_their_key(
    tmp_path: Path, register: dict[str, Any], path: tuple[str, ...], message: str
) -> None:
    ok = {"name": "ok", "address": 100}
    issues = issues_of({"host": "h", "registers": [ok, register]}, tmp_path)
    assert issues[0].path == ("registers", 1, *path)
    assert message in issues[0].message
    assert issues[0].file is None
    # a misspelt required key also reports the key as missing, on the register table
    assert [issue.path for issue in issues[1:]] == (
        [("registers", 1)] if path == ("adress",) else []
    )


def test_duplicate_register_names_within_a_device(tmp_path: Path) -> None:
    issue = one_issue(
        {"host": "h", "registers": [{"name": "x", "address": 0}, {"name": "x", "address": 2}]},
        tmp_path,
    )
    assert issue.path == ("registers", 1, "name")
    assert 'register name "x" is used twice' in issue.message


def test_every_register_error_is_reported_at_once(tmp_path: Path) -> None:
    issues = issues_of(
        {
            "host": "h",
            "registers": [
                {"name": "a", "address": 0, "unit": "kwh"},
                {"name": "b", "address": 0, "table": "coil", "type": "int32"},
            ],
        },
        tmp_path,
    )
    assert [i.path for i in issues] == [("registers", 0, "unit"), ("registers", 1, "type")]


def test_writable_registers_keep_their_range(tmp_path: Path) -> None:
    registers = [
        {"name": "setpoint", "address": 0, "type": "int16", "scale": 0.1, "unit": "Cel",
         "writable": True, "min": 5, "max": 30.5},
        {"name": "relay", "address": 3, "table": "coil", "writable": True},
        {"name": "flag", "address": 4, "type": "bool", "writable": True},
        {"name": "fixed", "address": 5, "min": 5, "max": 5, "writable": True},
    ]  # fmt: skip
    config = configure({"host": "h", "registers": registers}, context(tmp_path))
    by_name = {spec.name: spec for spec in config.registers}
    setpoint = by_name["setpoint"]
    assert (setpoint.writable, setpoint.minimum, setpoint.maximum) == (True, 5.0, 30.5)
    assert by_name["relay"] == RegisterSpec("relay", 3, "coil", "bool", writable=True)
    assert by_name["flag"].writable
    assert (by_name["fixed"].minimum, by_name["fixed"].maximum) == (5.0, 5.0)


@pytest.mark.parametrize(
    ("register", "path", "at", "message"),
    [
        (
            {"table": "input", "writable": True},
            ("writable",),
            "value",
            "input registers are read-only: only holding registers and coils can be written",
        ),
        (
            {"table": "discrete", "writable": True},
            ("writable",),
            "value",
            "discrete inputs are read-only",
        ),
        ({"writable": True}, ("writable",), "key", 'needs "min" and "max"'),
        ({"writable": True, "min": 0}, ("writable",), "key", 'needs "max"'),
        ({"writable": True, "max": 0}, ("writable",), "key", 'needs "min"'),
        ({"writable": True, "min": 3, "max": 2}, ("max",), "value", '"max" (2) is less than'),
        ({"min": 0}, ("min",), "key", "min only applies with writable = true"),
        (
            {"table": "coil", "writable": True, "max": 1},
            ("max",),
            "key",
            "a bool value takes no max",
        ),
        ({"writable": "yes"}, ("writable",), "value", '"writable": expected true or false'),
        ({"writable": True, "min": "0", "max": 1}, ("min",), "value", "expected a number"),
        ({"writable": True, "min": 0, "max": float("inf")}, ("max",), "value", "finite"),
    ],
)
def test_writable_errors_name_their_key(
    tmp_path: Path, register: dict[str, Any], path: tuple[str, ...], at: str, message: str
) -> None:
    ok = {"name": "ok", "address": 100}
    issues = issues_of(
        {"host": "h", "registers": [ok, {"name": "x", "address": 0, **register}]}, tmp_path
    )
    assert [(issue.path, issue.at) for issue in issues] == [(("registers", 1, *path), at)]
    assert message in issues[0].message


def test_writable_errors_in_a_profile_are_placed_in_the_file(tmp_path: Path) -> None:
    write_profile(
        tmp_path,
        HEADER
        + '[[registers]]\nname = "a"\naddress = 0\ntable = "input"\nwritable = true\n'
        + '[[registers]]\nname = "b"\naddress = 2\nwritable = true\nmin = 1\n',
    )
    issues = issues_of({"host": "h", "profile": "meter.toml"}, tmp_path)
    assert [(i.path, i.file is not None) for i in issues] == [
        (("registers", 0, "writable"), True),
        (("registers", 1, "writable"), True),
    ]


# ------------------------------------------------------------------ profile file errors


def profile_issues(tmp_path: Path, text: str) -> list[ConfigIssue]:
    path = write_profile(tmp_path, text)
    issues = issues_of({"host": "h", "profile": "meter.toml"}, tmp_path)
    assert all(issue.file == path for issue in issues), issues
    return issues


def test_profile_register_errors_are_placed_in_the_profile_file(tmp_path: Path) -> None:
    issues = profile_issues(
        tmp_path,
        HEADER
        + '[[registers]]\nname = "a"\naddress = 0\n'
        + '[[registers]]\nname = "b"\naddress = 2\ntype = "float23"\n'
        + '[[registers]]\nname = "a"\naddress = 4\nunit = "kWH"\n',
    )
    assert [(i.path, i.at) for i in issues] == [
        (("registers", 1, "type"), "value"),
        (("registers", 2, "unit"), "value"),
    ]
    assert 'did you mean "float32"' in issues[0].message
    assert 'did you mean "kWh"' in issues[1].message


def test_profile_duplicate_names(tmp_path: Path) -> None:
    (issue,) = profile_issues(
        tmp_path,
        HEADER + '[[registers]]\nname = "a"\naddress = 0\n[[registers]]\nname = "a"\naddress = 2\n',
    )
    assert issue.path == ("registers", 1, "name")


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ('[[registers]]\nname = "a"\naddress = 0\n', (), "needs a [profile] table"),
        (HEADER, (), "at least one [[registers]]"),
        ("registers = []\n" + HEADER, ("registers",), "at least one register"),
        (
            '[profile]\nname = "x"\n[[registers]]\nname = "a"\naddress = 0\n',
            ("profile",),
            'missing required key "source" in [profile]',
        ),
        (
            HEADER + 'vendor = "y"\n[[registers]]\nname = "a"\naddress = 0\n',
            ("profile", "vendor"),
            "unknown key",
        ),
        (
            HEADER + '[[registers]]\nname = "a"\naddress = 0\n[extra]\n',
            ("extra",),
            "unknown key",
        ),
        (
            HEADER + 'max_registers = 200\n[[registers]]\nname = "a"\naddress = 0\n',
            ("profile", "max_registers"),
            '"max_registers": expected from 1 to 125, found 200',
        ),
        ("[profile\n", (), "invalid TOML"),
        ("registers = 3\n" + HEADER, ("registers",), "array of tables"),
    ],
)
def test_profile_file_errors(
    tmp_path: Path, text: str, path: tuple[str, ...], message: str
) -> None:
    issues = profile_issues(tmp_path, text)
    assert path in [issue.path for issue in issues]
    assert any(message in issue.message for issue in issues), issues


def test_unreadable_profile_is_an_error_on_the_profile_key(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    issue = one_issue({"host": "h", "profile": str(tmp_path / "dir.toml")}, tmp_path)
    assert issue.path == ("profile",)


def test_parse_registers_rejects_non_tables() -> None:
    registers, issues = parse_registers(["x"], path=("registers",))
    assert registers == ()
    assert issues[0].path == ("registers", 0)
    assert "must be a table" in issues[0].message


# ------------------------------------------------------------------ sample.toml and README


def seconds(duration: str) -> float:
    """The two duration forms the sample uses."""
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    assert duration.endswith("s")
    return float(duration[:-1])


def test_sample_configures_and_the_readme_embeds_it(tmp_path: Path) -> None:
    sample = (REPO / "drivers" / "modbus" / "sample.toml").read_text(encoding="utf-8")
    readme = (REPO / "drivers" / "modbus" / "README.md").read_text(encoding="utf-8")
    assert sample in readme
    devices = tomllib.loads(sample)["device"]
    assert len(devices) == 3
    for device in devices:
        assert device["driver"] == "modbus"
        assert set(device) - set(FIELDS) <= {"id", "driver", "interval", "enabled", "labels"}
        options = {key: value for key, value in device.items() if key in FIELDS}
        if "timeout" in options:
            options["timeout"] = seconds(options["timeout"])
        config = configure(options, context(tmp_path))
        assert config.registers
    for key in [*FIELDS, *REGISTER_FIELDS]:
        assert f"`{key}`" in readme, key
