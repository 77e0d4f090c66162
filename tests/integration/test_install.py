"""The offline install into a staging root, and the uninstall that keeps config and data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "systemd" / "install.sh"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **env},
    )


def test_offline_install_and_uninstall(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    stage = tmp_path / "root"
    env = {"PYTHON": sys.executable, "DESTDIR": str(stage)}

    prepared = run("wheels", str(wheels), env={"PYTHON": sys.executable})
    assert prepared.returncode == 0, prepared.stderr
    assert any(p.name.startswith("citygate-") for p in wheels.iterdir())

    installed = run("install", "--wheels", str(wheels), env=env)
    assert installed.returncode == 0, installed.stderr
    citygate = stage / "opt/citygate/venv/bin/citygate"
    assert (stage / "etc/systemd/system/citygate.service").is_file()
    assert (stage / "usr/lib/sysusers.d/citygate.conf").is_file()
    assert (stage / "usr/lib/tmpfiles.d/citygate.conf").is_file()
    config = stage / "etc/citygate/gateway.toml"
    assert config.is_file()
    assert (stage / "etc/citygate/mqtt-password").stat().st_mode & 0o077 == 0

    # The installed agent checks the example config with its installed profiles,
    # with no repository on the path.
    checked = subprocess.run(
        [str(citygate), "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert checked.returncode == 0, checked.stderr
    assert "devices   2 (2 modbus)" in checked.stdout

    config.write_text(config.read_text() + "\n# edited by the operator\n")
    removed = run("uninstall", env=env)
    assert removed.returncode == 0, removed.stderr
    assert not (stage / "opt/citygate").exists()
    assert not (stage / "etc/systemd/system/citygate.service").exists()
    assert config.read_text().endswith("# edited by the operator\n")
