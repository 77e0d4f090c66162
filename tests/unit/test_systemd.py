"""The service unit is valid and hardened; sd_notify reaches a real datagram socket."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from citygate import systemd
from tests.bench.e2e import HWM_MIB_TARGET

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "citygate.service"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed on this machine",
)


def installed_unit(tmp_path: Path) -> Path:
    """The unit as it would be installed, with ExecStart pointing at a real citygate."""
    citygate = Path(sys.executable).parent / "citygate"
    unit = tmp_path / "citygate.service"
    unit.write_text(UNIT.read_text().replace("/opt/citygate/venv/bin/citygate", str(citygate)))
    return unit


@needs_systemd_analyze
def test_unit_verifies_clean(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(installed_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@needs_systemd_analyze
def test_unit_exposure_is_at_most_1_6(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(installed_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for citygate.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.6


def test_unit_essentials() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "User=citygate",
        "StateDirectory=citygate",
        "ConfigurationDirectory=citygate",
        "SupplementaryGroups=dialout",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert line in text
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    assert re.search(r"^LoadCredential=mqtt-password:", text, re.M)


def test_unit_caps_memory_and_tasks_with_room_above_the_measured_peak() -> None:
    text = UNIT.read_text()
    memory = re.search(r"^MemoryMax=(\d+)M$", text, re.M)
    tasks = re.search(r"^TasksMax=(\d+)$", text, re.M)
    assert memory, "MemoryMax=<n>M missing"
    assert tasks, "TasksMax=<n> missing"
    # Well above the bench's peak-RSS ceiling; above the most threads asyncio's default executor
    # (32), the event loop and the buffer thread can ever be.
    assert int(memory.group(1)) >= 4 * HWM_MIB_TARGET
    assert 32 + 2 < int(tasks.group(1)) <= 64


def test_notify_reaches_a_datagram_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify("READY=1")
        assert systemd.notify("STATUS=2 online, 0 offline")
        assert server.recv(1024) == b"READY=1"
        assert server.recv(1024) == b"STATUS=2 online, 0 offline"


def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"citygate-test-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("WATCHDOG=1")
        assert server.recv(1024) == b"WATCHDOG=1"


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.notify("READY=1") is False
