"""The optional factory hooks (``hub``, ``scan``): read through the registry, a factory
without them works, and ``citygate scan`` is built from what the drivers declare."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from citygate import cli, registry
from citygate.drivers.api import BleSettings
from citygate.lines import LineOwner
from tests.faults.store_harness import counting
from tests.support.processes import ROOT, run_cli
from tests.unit.hooked_driver import EchoScan, echo


def plugin_env(tmp_path: Path) -> dict[str, str]:
    """``counting`` (no hooks) and ``echo`` (a scan hook) found as plugins are found."""
    site = tmp_path / "plugins"
    info = site / "citygate_hook_drivers-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: citygate-hook-drivers\nVersion: 0\n"
    )
    (info / "entry_points.txt").write_text(
        "[citygate.drivers]\n"
        "counting = tests.faults.store_harness:counting\n"
        "echo = tests.unit.hooked_driver:echo\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
id = "gw-hooks"
data_dir = "{tmp_path / "var"}"

[[serial]]
id = "rs485"
port = "/dev/citygate-no-such-port"

[[device]]
id = "meter-0"
driver = "counting"
limit = 0
values = 2

[[device]]
id = "echo-0"
driver = "echo"
"""
    )
    return config


def entry(name: str, factory: object) -> registry.DriverEntry:
    return registry.DriverEntry(name, "test", f"tests:{name}", factory)  # type: ignore[arg-type]


def test_a_factory_without_hooks_has_none() -> None:
    assert not hasattr(counting, "hub") and not hasattr(counting, "scan")
    assert registry.hub_factory(counting) is None
    assert registry.scan_command(counting) is None
    assert registry.hub_factory(None) is None  # no such driver installed


def test_the_builtin_drivers_declare_their_hooks() -> None:
    factories = registry.factories()
    make_hub = registry.hub_factory(factories["ble"])
    assert make_hub is not None
    assert callable(getattr(make_hub(BleSettings(adapter="hci1")), "run", None))
    assert registry.hub_factory(factories["modbus"]) is None
    assert registry.hub_factory(factories["mbus"]) is None
    builtin = {e.name: e for e in registry.discover() if e.builtin}
    commands = registry.scan_commands(list(builtin.values()))
    assert sorted(commands) == ["ble", "mbus", "modbus", "wmbus"]


def test_scan_commands_are_those_the_factories_declare() -> None:
    commands = registry.scan_commands([entry("counting", counting), entry("echo", echo)])
    assert commands == {"echo": echo.scan}


def test_a_scan_hook_that_fails_to_load_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name = "broken"

        @property
        def scan(self) -> EchoScan:
            raise ImportError("no module named 'radio'")

    commands = registry.scan_commands([entry("broken", Broken()), entry("echo", echo)])
    assert list(commands) == ["echo"]
    assert "driver broken: its scan command cannot be loaded" in caplog.text


def test_cli_runs_a_declared_scan_with_what_the_runtime_owns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    command = EchoScan()
    monkeypatch.setattr(registry, "scan_commands", lambda: {"echo": command})
    monkeypatch.setattr(registry, "factories", lambda: {"counting": counting, "echo": echo})

    status = cli.main(["scan", "echo", "-c", str(config), "--serial", "rs485", "--word", "hi"])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out.splitlines() == ["hi rs485 /dev/citygate-no-such-port", "devices 1"]
    assert err == "done\n"
    [line] = command.lines
    assert isinstance(line, LineOwner) and line.protocol == "echo"  # a private owner

    assert cli.main(["scan", "echo", "-c", str(config), "--serial", "rs232"]) == 2
    assert "no [[serial]] line 'rs232'" in capsys.readouterr().err
    assert cli.main(["scan", "echo", "--word", "bad"]) == 2
    assert capsys.readouterr().err == "citygate scan: --word must not be bad\n"


def test_scan_lists_the_subcommands_the_installed_drivers_declare(tmp_path: Path) -> None:
    env = plugin_env(tmp_path)
    result = run_cli("scan", "--help", env=env)
    assert result.returncode == 0, result.stderr
    listed = [  # "    NAME  help" (a wrapped help line is indented further)
        line.split()[0]
        for line in result.stdout.splitlines()
        if line.startswith("    ") and not line.startswith("     ")
    ]
    assert listed == ["ble", "echo", "mbus", "modbus", "wmbus"]  # not counting: no scan
    assert "Echo: say what the runtime handed over" in result.stdout

    config = write_config(tmp_path)
    echoed = run_cli("scan", "echo", "-c", str(config), "--serial", "rs485", env=env)
    assert echoed.returncode == 0, echoed.stderr
    assert echoed.stdout.startswith("hello rs485 ")


def test_read_and_check_work_with_a_factory_without_hooks(tmp_path: Path) -> None:
    env = plugin_env(tmp_path)
    config = write_config(tmp_path)
    assert run_cli("check", "-c", str(config), env=env).returncode == 0
    result = run_cli("read", "meter-0", "-c", str(config), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert '"name": "count"' in result.stdout
