"""citygate.config: load(), the golden cases of tests/cases/config, durations and sizes.

The factories here are test scaffolding: a small stand-in for the modbus driver
(its key table as config.md gives it, and a ``configure`` that reports issues by
path and in a profile file), and the real mbus and ble config modules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.config import (
    ConfigError,
    Problem,
    load,
    parse_duration,
    parse_size,
)
from citygate.drivers.api import (
    REQUIRED,
    ConfigIssue,
    DeviceContext,
    DriverConfigError,
    DriverFactory,
    Field,
)
from citygate.drivers.ble import config as ble_config
from citygate.drivers.mbus import config as mbus_config
from citygate.drivers.mbus.config import PrimaryAddress

CASES = Path(__file__).parent.parent / "cases" / "config"

# ------------------------------------------------------------------ scaffolding

REGISTER_TYPES = ("int16", "uint16", "int32", "uint32", "float32")
REGISTER_FIELDS = {
    "name": Field("str", REQUIRED),
    "address": Field("int", REQUIRED, minimum=0, maximum=65535),
    "table": Field("str", "holding", choices=("input", "holding", "coil", "discrete")),
    "type": Field("str", "uint16", choices=REGISTER_TYPES),
    "order": Field("str", "ABCD", choices=("ABCD", "CDAB", "BADC", "DCBA")),
    "scale": Field("float", 1.0),
    "offset": Field("float", 0.0),
    "unit": Field("str", None),
}
KNOWN_UNITS = {"V", "A", "W", "kW", "Wh", "kWh", "Hz"}
BUILT_IN_PROFILES = {"eastron-sdm630", "eastron-sdm120"}


class StandInModbus:
    """Enough of a modbus factory to exercise the loader: paths, and a file= issue."""

    name: str = "modbus"
    version: str = "0"
    default_interval: float = 10.0
    fields: Mapping[str, Field] = {
        "host": Field("str"),
        "port": Field("int", 502, minimum=1, maximum=65535),
        "serial": Field("str"),
        "unit": Field("int", 1, minimum=0, maximum=247),
        "profile": Field("str"),
        "timeout": Field("duration", 1.0),
        "retries": Field("int", 1, minimum=0),
        "max_gap": Field("int", 16, minimum=0),
        "max_registers": Field("int", 125, minimum=1, maximum=125),
        "registers": Field("table_list", [], fields=REGISTER_FIELDS),
    }

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> dict[str, Any]:
        issues: list[ConfigIssue] = []
        if (options["host"] is None) == (options["serial"] is None):
            issues.append(ConfigIssue((), 'give exactly one of "host" or "serial"'))
        if options["serial"] is not None and options["serial"] not in context.serial_lines:
            issues.append(ConfigIssue(("serial",), f'no [[serial]] line "{options["serial"]}"'))
        for index, register in enumerate(options["registers"]):
            if register["unit"] is not None and register["unit"] not in KNOWN_UNITS:
                issues.append(
                    ConfigIssue(("registers", index, "unit"), f'unknown unit "{register["unit"]}"')
                )
        profile = options["profile"]
        if profile is not None and profile not in BUILT_IN_PROFILES:
            path = context.config_dir / profile
            try:
                data = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError):
                issues.append(ConfigIssue(("profile",), f"cannot load profile {profile}"))
            else:
                for index, register in enumerate(data.get("registers", [])):
                    if register.get("type") not in REGISTER_TYPES:
                        issues.append(
                            ConfigIssue(
                                ("registers", index, "type"),
                                f'unknown register type "{register.get("type")}"',
                                file=path,
                            )
                        )
        if issues:
            raise DriverConfigError(issues)
        return dict(options)

    def create(self, config: Any, context: DeviceContext) -> Any:
        raise NotImplementedError


class ConfigModuleFactory:
    """A factory made of a driver's config module (the real mbus and ble ones)."""

    version: str = "0"

    def __init__(self, name: str, module: ModuleType) -> None:
        self.name = name
        self.module = module
        self.default_interval: float = module.DEFAULT_INTERVAL
        self.fields: Mapping[str, Field] = module.FIELDS

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> Any:
        return self.module.configure(options, context)

    def create(self, config: Any, context: DeviceContext) -> Any:
        raise NotImplementedError


class BuggyFactory(StandInModbus):
    """A plugin whose configure has a bug."""

    name = "buggy"

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> dict[str, Any]:
        raise KeyError("oops")


FACTORIES: dict[str, DriverFactory] = {
    "modbus": StandInModbus(),
    "mbus": ConfigModuleFactory("mbus", mbus_config),
    "ble": ConfigModuleFactory("ble", ble_config),
}


def write(directory: Path, files: Mapping[str, str], mode: int = 0o600) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="")
        path.chmod(mode)
    return directory / "gateway.toml"


def problems(exc: pytest.ExceptionInfo[ConfigError], base: Path) -> list[str]:
    return [str(p).replace(f"{base}{os.sep}", "") for p in exc.value.problems]


GATEWAY = '[gateway]\nid = "gw-1"\n'

# ------------------------------------------------------------------ golden cases


def case_names() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if p.is_dir())


@pytest.mark.parametrize("case", case_names())
def test_golden_case(case: str, tmp_path: Path) -> None:
    """gateway.toml [+ devices.d/*.toml] -> error.txt (errors) and warnings.txt.

    The case is copied so that file modes are known: 0600 everywhere unless
    modes.txt says ``NAME MODE`` (octal). FILE in the expected lines is relative
    to the case directory.
    """
    work = tmp_path / case
    shutil.copytree(CASES / case, work)
    for path in work.rglob("*"):
        if path.is_file():
            path.chmod(0o600)
    modes = work / "modes.txt"
    if modes.exists():
        for line in modes.read_text().splitlines():
            name, mode = line.split()
            (work / name).chmod(int(mode, 8))

    def expected(name: str) -> list[str]:
        path = work / name
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def shown(found: list[Problem]) -> list[str]:
        return [str(p).replace(f"{work}{os.sep}", "") for p in found]

    try:
        config = load(work / "gateway.toml", FACTORIES, environ={})
    except ConfigError as exc:
        errors, warnings = exc.problems, exc.warnings
    else:
        errors, warnings = [], list(config.warnings)
    assert shown(errors) == expected("error.txt")
    assert shown(warnings) == expected("warnings.txt")


def test_there_are_enough_golden_cases() -> None:
    with_errors = [c for c in case_names() if (CASES / c / "error.txt").exists()]
    assert len(with_errors) >= 15


def test_the_example_of_config_md_loads_with_its_values(tmp_path: Path) -> None:
    work = tmp_path / "example"
    shutil.copytree(CASES / "example", work)
    (work / "mqtt-password").chmod(0o600)
    config = load(work / "gateway.toml", FACTORIES, environ={})

    assert config.warnings == ()
    assert config.files == (work / "gateway.toml",)
    assert config.gateway.id == "gw-plaza-01"
    assert config.gateway.data_dir == work / "var"
    assert config.gateway.labels == {"site": "plaza-mayor"}
    mqtt = config.mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls) == ("broker.city.example", 8883, True)
    assert mqtt.client_id == "citygate-gw-plaza-01"
    assert mqtt.password == "s3cret pass"  # the trailing newline of the file is gone
    assert mqtt.ca_file == work / "ca.pem"
    assert (mqtt.keepalive, mqtt.linger, mqtt.qos) == (30.0, 0.2, 1)
    assert config.buffer.max_size == 256 * 2**20
    assert config.buffer.max_age == 30 * 86400
    assert config.ble is None
    assert config.serial["rs485"].baudrate == 9600
    assert config.serial["mbus"].parity == "E"
    assert config.serial["mbus"].timeout == 1.0

    devices = {d.id: d for d in config.devices}
    assert list(devices) == ["meter-townhall", "meter-library", "water-main", "env-bus-stop-12"]
    library = devices["meter-library"]
    assert library.interval == 30.0
    assert library.options["registers"][0]["address"] == 0x48
    assert library.options["registers"][0]["scale"] == 1.0
    assert library.options["port"] == 502
    water = devices["water-main"]
    assert water.interval == 900.0
    assert water.driver_config.address == PrimaryAddress(5)
    assert water.driver_config.serial is config.serial["mbus"]
    sensor = devices["env-bus-stop-12"]
    assert sensor.interval == 60.0
    assert sensor.driver_config.format == "pvvx"
    assert all(d.enabled and d.source == work / "gateway.toml" for d in config.devices)


# ------------------------------------------------------------------ load(): behaviours


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    config = load(write(tmp_path, {"gateway.toml": GATEWAY}), FACTORIES, environ={})
    assert config.gateway.data_dir == tmp_path / "var"
    assert config.gateway.log_level == "info"
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("127.0.0.1", 1883, False)
    assert config.mqtt.client_id == "citygate-gw-1"
    assert config.mqtt.password is None
    assert config.devices == ()
    assert config.serial == {}


def test_data_dir_comes_from_state_directory_or_resolves_against_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"gateway.toml": GATEWAY})
    config = load(path, FACTORIES, environ={"STATE_DIRECTORY": "/var/lib/citygate:/x"})
    assert config.gateway.data_dir == Path("/var/lib/citygate")
    write(tmp_path, {"gateway.toml": GATEWAY + 'data_dir = "state/here"\n'})
    config = load(path, FACTORIES, environ={"STATE_DIRECTORY": "/var/lib/citygate"})
    assert config.gateway.data_dir == tmp_path / "state" / "here"


def test_a_relative_config_path_resolves_paths_against_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etc", {"gateway.toml": GATEWAY, "pw": "x\n"})
    (tmp_path / "etc" / "gateway.toml").write_text(
        GATEWAY + '[mqtt]\nusername = "u"\npassword_file = "pw"\n'
    )
    monkeypatch.chdir(tmp_path)
    config = load(Path("etc/gateway.toml"), FACTORIES, environ={})
    assert config.mqtt.password == "x"
    assert config.gateway.data_dir == tmp_path / "etc" / "var"
    assert config.path == Path("etc/gateway.toml")


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker", "broker", 1883, False),
        ("mqtts://broker", "broker", 8883, True),
        ("mqtt://10.0.0.1:1884", "10.0.0.1", 1884, False),
        ("mqtts://[::1]:8884/", "::1", 8884, True),
    ],
)
def test_mqtt_url_gives_host_port_and_tls(
    tmp_path: Path, url: str, host: str, port: int, tls: bool
) -> None:
    path = write(tmp_path, {"gateway.toml": GATEWAY + f'[mqtt]\nurl = "{url}"\n'})
    mqtt = load(path, FACTORIES, environ={}).mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls, mqtt.url) == (host, port, tls, url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "tcp://broker",
            'expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], found "tcp://broker"',
        ),
        ("mqtt://broker:99999", "found a bad port"),
        ("mqtt://", "found"),
        ("mqtt://u:p@broker", 'put the user name and password in "username" and "password_file"'),
        ("mqtt://broker/topic", "found"),
    ],
)
def test_bad_mqtt_urls(tmp_path: Path, url: str, message: str) -> None:
    path = write(tmp_path, {"gateway.toml": GATEWAY + f'[mqtt]\nurl = "{url}"\n'})
    with pytest.raises(ConfigError) as exc:
        load(path, FACTORIES, environ={})
    (problem,) = exc.value.problems
    assert (problem.line, problem.col) == (4, 7)
    assert problem.message.startswith('"url": ')
    assert message in problem.message


def test_mqtt_url_may_list_the_nodes_of_a_cluster(tmp_path: Path) -> None:
    urls = '["mqtts://a.example:8883", "mqtts://b.example"]'
    path = write(tmp_path, {"gateway.toml": GATEWAY + f"[mqtt]\nurl = {urls}\n"})
    mqtt = load(path, FACTORIES, environ={}).mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls, mqtt.url) == (
        "a.example",
        8883,
        True,
        "mqtts://a.example:8883",
    )
    assert mqtt.endpoints == (
        ("mqtts://a.example:8883", "a.example", 8883),
        ("mqtts://b.example", "b.example", 8883),
    )


@pytest.mark.parametrize(
    ("urls", "col", "message"),
    [
        ('["mqtt://a", "mqtts://b"]', 20, "every url of the list must be mqtt:// or every"),
        ('["mqtt://a", "tcp://b"]', 20, 'found "tcp://b"'),
        ('["mqtt://a", 3]', 20, '"url[1]": expected a string'),
        ("[]", 7, "expected at least one url"),
    ],
)
def test_bad_mqtt_url_lists(tmp_path: Path, urls: str, col: int, message: str) -> None:
    path = write(tmp_path, {"gateway.toml": GATEWAY + f"[mqtt]\nurl = {urls}\n"})
    with pytest.raises(ConfigError) as exc:
        load(path, FACTORIES, environ={})
    (problem,) = exc.value.problems
    assert (problem.line, problem.col) == (4, col)
    assert message in problem.message


def test_a_missing_main_file_is_one_clean_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path / "nope.toml", FACTORIES)
    assert problems(exc, tmp_path) == [
        "nope.toml:1:1: cannot read the file: No such file or directory"
    ]


def test_a_file_that_is_not_utf8_is_placed_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b'[gateway]\nid = "gw\xe9"\n')
    with pytest.raises(ConfigError) as exc:
        load(path, FACTORIES)
    assert problems(exc, tmp_path) == ["gateway.toml:2:9: not UTF-8 text (byte 0xE9)"]


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GATEWAY.encode())
    assert load(path, FACTORIES, environ={}).gateway.id == "gw-1"


def test_a_secret_file_is_read_stripped_and_its_mode_checked(tmp_path: Path) -> None:
    files = {
        "gateway.toml": GATEWAY + '[mqtt]\nusername = "u"\npassword_file = "secret/pw"\n',
        "secret/pw": "p4ss word\r\n",
    }
    config = load(write(tmp_path, files), FACTORIES, environ={})
    assert config.mqtt.password == "p4ss word"
    assert config.warnings == ()

    (tmp_path / "secret" / "pw").chmod(0o640)
    config = load(tmp_path / "gateway.toml", FACTORIES, environ={})
    (warning,) = config.warnings
    assert (warning.line, warning.col) == (5, 17)
    assert warning.message == (
        f'warning: "password_file": {tmp_path}/secret/pw is open to group or others'
        " (mode 0640); chmod 600 it"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_secret_file_is_an_error_on_its_key(tmp_path: Path) -> None:
    files = {"gateway.toml": GATEWAY + '[mqtt]\npassword_file = "pw"\n', "pw": "x"}
    path = write(tmp_path, files)
    (tmp_path / "pw").chmod(0o000)
    with pytest.raises(ConfigError) as exc:
        load(path, FACTORIES, environ={})
    assert problems(exc, tmp_path) == [
        f'gateway.toml:4:17: "password_file": cannot read {tmp_path}/pw: Permission denied'
    ]


def test_a_bindkey_file_is_read_for_the_ble_driver(tmp_path: Path) -> None:
    key = "231d39c1d7cc1ab1aee224cd096db932"
    files = {
        "gateway.toml": GATEWAY
        + '[[device]]\nid = "s"\ndriver = "ble"\naddress = "a4:c1:38:5b:0f:21"\n'
        + 'bindkey_file = "keys/s.key"\n',
        "keys/s.key": key + "\n",
    }
    (device,) = load(write(tmp_path, files), FACTORIES, environ={}).devices
    assert device.driver_config.bindkey == bytes.fromhex(key)
    assert device.driver_config.address == "A4:C1:38:5B:0F:21"
    assert device.options["bindkey"] == key


def test_a_serial_line_used_only_by_mbus_defaults_to_2400_baud(tmp_path: Path) -> None:
    files = {
        "gateway.toml": GATEWAY
        + '[[serial]]\nid = "m"\nport = "/dev/ttyAMA0"\n'
        + '[[serial]]\nid = "r"\nport = "/dev/ttyUSB0"\n'
        + '[[serial]]\nid = "fixed"\nport = "/dev/ttyUSB1"\nbaudrate = 9600\n'
        + '[[device]]\nid = "w"\ndriver = "mbus"\nserial = "m"\naddress = 1\n'
        + '[[device]]\nid = "e"\ndriver = "modbus"\nserial = "r"\n'
        + '[[device]]\nid = "w2"\ndriver = "mbus"\nserial = "fixed"\naddress = 2\n'
    }
    config = load(write(tmp_path, files), FACTORIES, environ={})
    assert config.serial["m"].baudrate == 2400
    assert config.serial["r"].baudrate == 9600
    assert config.serial["fixed"].baudrate == 9600


def test_includes_are_read_in_sorted_order_after_the_main_file(tmp_path: Path) -> None:
    device = '[[device]]\nid = "{}"\ndriver = "ble"\naddress = "A4:C1:38:5B:0F:2{}"\n'
    files = {
        "gateway.toml": 'include = ["devices.d/*.toml", "more/**/*.toml", "devices.d/b.toml"]\n'
        + GATEWAY
        + device.format("main", 0),
        "devices.d/b.toml": device.format("b", 2),
        "devices.d/a.toml": device.format("a", 1),
        "devices.d/notes.txt": "not toml",
        "more/x/c.toml": device.format("c", 3),
    }
    config = load(write(tmp_path, files), FACTORIES, environ={})
    assert [d.id for d in config.devices] == ["main", "a", "b", "c"]
    assert config.files == (
        tmp_path / "gateway.toml",
        tmp_path / "devices.d/a.toml",
        tmp_path / "devices.d/b.toml",
        tmp_path / "more/x/c.toml",
    )
    assert config.devices[1].source == tmp_path / "devices.d/a.toml"


def test_errors_of_several_files_come_sorted_by_file_then_position(tmp_path: Path) -> None:
    files = {
        "gateway.toml": 'include = ["d/*.toml"]\n[gateway]\nid = "gw"\nlog_level = "loud"\n'
        + "[[serial]]\nport = 5\n",
        "d/b.toml": '[[device]]\nid = "x"\ndriver = "nope"\n',
        "d/a.toml": '[[serial]]\nid = "s"\nport = "/dev/x"\nstopbits = 3\n',
    }
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, files), FACTORIES, environ={})
    assert problems(exc, tmp_path) == [
        'gateway.toml:4:13: "log_level": expected "debug", "info", "warning" or "error",'
        ' found "loud"',
        'gateway.toml:5:1: missing required key "id" in [[serial]]',
        'gateway.toml:6:8: "port": expected a string, found an integer 5',
        'd/a.toml:4:12: "stopbits": expected 1 or 2, found 3',
        'd/b.toml:3:10: unknown driver "nope" (installed: ble, mbus, modbus)',
    ]


def test_a_serial_line_with_errors_is_still_known_to_its_devices(tmp_path: Path) -> None:
    files = {
        "gateway.toml": GATEWAY
        + '[[serial]]\nid = "m"\nport = "/dev/ttyAMA0"\nparity = "X"\n'
        + '[[device]]\nid = "w"\ndriver = "mbus"\nserial = "m"\naddress = 1\n'
    }
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, files), FACTORIES, environ={})
    assert problems(exc, tmp_path) == [
        'gateway.toml:6:10: "parity": expected "N", "E" or "O", found "X"'
    ]


def test_include_written_under_a_table_gets_a_hint(tmp_path: Path) -> None:
    files = {"gateway.toml": GATEWAY + 'include = ["d/*.toml"]\n'}
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, files), FACTORIES, environ={})
    assert problems(exc, tmp_path) == [
        'gateway.toml:3:1: unknown key "include" in [gateway];'
        ' "include" belongs at the top, before the first [table]'
    ]


def test_a_crashing_plugin_configure_is_an_error_not_a_crash(tmp_path: Path) -> None:
    files = {"gateway.toml": GATEWAY + '[[device]]\nid = "d"\ndriver = "buggy"\nhost = "h"\n'}
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, files), {"buggy": BuggyFactory()}, environ={})
    assert problems(exc, tmp_path) == [
        "gateway.toml:3:1: driver \"buggy\" failed to check this device: KeyError('oops')"
    ]


def test_the_warnings_travel_with_the_errors(tmp_path: Path) -> None:
    files = {"gateway.toml": GATEWAY + '[mqtt]\npassword = "x"\nqos = 3\n'}
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, files), FACTORIES, environ={})
    assert [str(w).replace(f"{tmp_path}/", "") for w in exc.value.warnings] == [
        'gateway.toml:4:1: warning: "password" is written in the config;'
        ' put it in a file named by "password_file"'
    ]


def test_every_field_kind_is_typed(tmp_path: Path) -> None:
    """One driver declaring every kind of Field gets typed options."""

    class EveryKind(StandInModbus):
        name = "every"
        fields: Mapping[str, Field] = {
            "s": Field("str"),
            "i": Field("int"),
            "f": Field("float"),
            "b": Field("bool"),
            "d": Field("duration"),
            "z": Field("size"),
            "p": Field("path"),
            "n": Field("int_or_str"),
            "l": Field("str_list"),
            "t": Field("str_table"),
            "rows": Field("table_list", fields={"x": Field("int", 7)}),
            "key": Field("secret"),
            "absent": Field("int", 3),
        }

        def configure(self, options: Mapping[str, Any], context: DeviceContext) -> Any:
            return options

    files = {
        "gateway.toml": GATEWAY
        + '[[device]]\nid = "d"\ndriver = "every"\ns = "x"\ni = 0x10\nf = 2\nb = false\n'
        + 'd = "1.5h"\nz = "10kB"\np = "sub/file"\nn = "0042"\nl = ["a", "b"]\n'
        + 't = { k = "v" }\nrows = [{}, { x = 1 }]\nkey = "k"\n'
    }
    (device,) = load(write(tmp_path, files), {"every": EveryKind()}, environ={}).devices
    assert device.options == {
        "s": "x",
        "i": 16,
        "f": 2.0,
        "b": False,
        "d": 5400.0,
        "z": 10_000,
        "p": tmp_path / "sub/file",
        "n": "0042",
        "l": ["a", "b"],
        "t": {"k": "v"},
        "rows": [{"x": 7}, {"x": 1}],
        "key": "k",
        "absent": 3,
    }
    assert isinstance(device.options["f"], float)


# ------------------------------------------------------------------ durations and sizes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        (" 2.5s ", 2.5),
        (".5s", 0.5),
        (30, 30.0),
        (0.25, 0.25),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10", 'duration "10" has no unit: add one (ms, s, m, h, d) or drop the quotes'),
        ("10 sec", 'unknown unit "sec" in duration "10 sec": use ms, s, m, h, d'),
        ("-5s", 'invalid duration "-5s": write a number and a unit'),
        ("s", 'invalid duration "s"'),
        ("", 'invalid duration ""'),
        (-1, "0 or more, found -1"),
        (float("inf"), "finite"),
        (True, "found bool"),
    ],
)
def test_parse_duration_says_what_is_wrong(text: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64MiB", 64 * 2**20),
        ("500MB", 500_000_000),
        ("1GiB", 2**30),
        ("512KiB", 512 * 1024),
        ("10kB", 10_000),
        ("1.5KiB", 1536),
        ("7B", 7),
        (4096, 4096),
        (1e3, 1000),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("64MB ", None),
        ("64 mb", 'unknown unit "mb" in size "64 mb": use B, kB, MB, GB, TB, KiB, MiB, GiB, TiB'),
        ("10KB", 'unknown unit "KB"'),
        ("1024", 'size "1024" has no unit'),
        (1.5, "whole number"),
        (-1, "0 or more"),
        ("big", 'invalid size "big"'),
    ],
)
def test_parse_size_says_what_is_wrong(text: Any, message: str | None) -> None:
    if message is None:
        assert parse_size(text) == 64_000_000
        return
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_size(text)


DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
SIZE_UNITS = {"B": 1, "kB": 1000, "MB": 10**6, "KiB": 1024, "MiB": 2**20, "GiB": 2**30}


@given(st.integers(0, 10**9), st.sampled_from(sorted(DURATION_UNITS)))
def test_durations_scale_by_their_unit(number: int, unit: str) -> None:
    seconds = number * DURATION_UNITS[unit]
    if seconds > 3650 * 86400:
        with pytest.raises(ValueError, match=r"at most 3650d \(10 years\)"):
            parse_duration(f"{number}{unit}")
        return
    assert parse_duration(f"{number}{unit}") == pytest.approx(seconds)
    assert parse_duration(f"{number} {unit}") == parse_duration(f"{number}{unit}")


@given(st.integers(0, 10**6), st.sampled_from(sorted(SIZE_UNITS)))
def test_sizes_scale_by_their_unit(number: int, unit: str) -> None:
    assert parse_size(f"{number}{unit}") == number * SIZE_UNITS[unit]


@given(st.text(max_size=12))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        message = str(exc)
    else:
        message = ""
        assert seconds >= 0
    assert not message or text in message


@given(st.text(max_size=12))
def test_any_text_is_a_size_or_a_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError as exc:
        message = str(exc)
    else:
        message = ""
        assert size >= 0
    assert not message or text in message


# ------------------------------------------------------------------ anything in, no crash out

WORDS = [
    *("gateway", "mqtt", "buffer", "serial", "ble", "device", "include", "registers"),
    *("id", "data_dir", "log_level", "labels", "url", "client_id", "username", "password"),
    *("password_file", "ca_file", "cert_file", "key_file", "topic_prefix", "qos", "protocol"),
    *("keepalive", "max_batch", "linger", "max_inflight", "max_size", "max_age", "when_full"),
    *("durability", "port", "baudrate", "parity", "stopbits", "bytesize", "timeout", "adapter"),
    *("mode", "replay", "replay_loop", "driver", "interval", "enabled", "host", "unit"),
    *("profile", "name", "address", "table", "type", "scale", "records", "format", "bindkey"),
    *("bindkey_file", "baudrat", "x"),
]
STRINGS = [
    *("gw-1", "rs485", "modbus", "mbus", "ble", "knx", "10s", "0ms", "64MiB", "mqtt://h"),
    *("mqtts://h:1", "A4:C1:38:5B:0F:21", "12345678", "E", "float32", "kWh", "*.toml", ""),
    *("input", "drop_oldest", "debug", "/dev/null", "pvvx", "0" * 32),
]
scalars = st.one_of(
    st.sampled_from(STRINGS),
    st.text(st.characters(codec="ascii", exclude_characters="\x7f"), max_size=6),
    st.integers(-10, 300),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(WORDS), inner, max_size=4)
    ),
    max_leaves=10,
)
tables = st.dictionaries(st.sampled_from(WORDS), values, max_size=6)
configs = st.dictionaries(
    st.sampled_from(WORDS),
    st.one_of(tables, st.lists(tables, min_size=1, max_size=3), values),
    max_size=6,
)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


@settings(max_examples=300, deadline=None)
@given(configs)
def test_any_document_loads_or_fails_with_placed_problems(document: dict[str, Any]) -> None:
    text = "".join(f"{key} = {toml_value(value)}\n" for key, value in document.items())
    assert tomllib.loads(text) == document
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "gateway.toml"
        path.write_text(text)
        try:
            config = load(path, FACTORIES, environ={})
        except ConfigError as exc:
            found = exc.problems
            assert found
        else:
            found = list(config.warnings)
            assert "gateway" in document
    lines = text.count("\n") + 1
    for problem in found:
        assert problem.file == path
        assert 1 <= problem.line <= lines
        assert problem.col >= 1
        assert problem.message
