"""data_dir at start (agent/datadir.py): a private umask, and a directory nobody else can write.

The ``citygate run`` cases run the real command as a subprocess, the way an operator runs it by
hand (umask 022, no systemd ``UMask=``).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from citygate import datadir
from citygate.datadir import DataDirError
from tests.faults.store_harness import counting_devices, plugin_env, write_config
from tests.support.broker import Mosquitto
from tests.support.processes import AgentProcess, run_cli

OTHER_UID = 54321  # a user that does not run the agent
as_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="giving a directory to another user needs root (CI runs the suite as root)",
)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask of an operator's shell; restored after the test."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------- citygate run


@pytest.mark.usefixtures("umask_022")
def test_run_by_hand_creates_a_private_directory_and_private_files(
    tmp_path: Path, broker: Mosquitto
) -> None:
    env = plugin_env(tmp_path)
    data_dir = tmp_path / "state" / "var"
    config = write_config(
        tmp_path / "gateway.toml",
        broker_port=broker.port,
        data_dir=data_dir,
        devices=counting_devices(2, limit=20),
    )
    agent = AgentProcess(config, env)
    try:
        agent.wait_for_log("running")
        created = {p.name: mode(p) for p in data_dir.iterdir()}  # SQLite's -wal/-shm exist now
    finally:
        assert agent.stop() == 0, agent.log
    assert mode(data_dir) == 0o700
    assert mode(data_dir.parent) == 0o700  # made by the agent too
    assert {"buffer.sqlite3", "buffer.sqlite3-wal", "buffer.sqlite3-shm"} <= set(created)
    assert {"buffer.sqlite3.lock", "buffer.sqlite3.seq-hwm"} <= set(created)
    assert created == dict.fromkeys(created, 0o600)
    after = {p.name: mode(p) for p in data_dir.iterdir()}  # after the clean close
    assert after == dict.fromkeys(after, 0o600)


def refused(tmp_path: Path, data_dir: Path) -> str:
    """Stderr of `citygate run` on ``data_dir``, which must exit 1 at once, having written
    nothing; one line, no traceback."""
    config = write_config(
        tmp_path / "gateway.toml", broker_port=1, data_dir=data_dir, devices=counting_devices(1)
    )
    done = run_cli("run", "-c", str(config), env=plugin_env(tmp_path), timeout=30)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert os.listdir(data_dir) == []
    return lines[0]


def test_run_refuses_a_data_dir_others_can_write(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    line = refused(tmp_path, data_dir)
    assert line.endswith(f"data_dir {data_dir} is writable by others (mode 0777); chmod 700 it")


@as_root
def test_run_refuses_a_data_dir_owned_by_another_user(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    os.chown(data_dir, OTHER_UID, OTHER_UID)
    line = refused(tmp_path, data_dir)
    assert f"data_dir {data_dir} is owned by uid {OTHER_UID}, not by the agent's user 0" in line


# ---------------------------------------------------------------------- prepare / check


@pytest.mark.usefixtures("umask_022")
def test_prepare_sets_the_agents_umask_and_makes_the_directory_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    datadir.prepare(data_dir)
    assert os.umask(0o022) == 0o077
    assert mode(data_dir) == 0o700


@pytest.mark.parametrize("dir_mode", [0o700, 0o750, 0o755, 0o500])
def test_a_directory_only_its_owner_can_write_is_accepted(tmp_path: Path, dir_mode: int) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    data_dir.chmod(dir_mode)
    datadir.check(data_dir)  # 0750: StateDirectoryMode= of systemd/citygate.service


@pytest.mark.parametrize(
    ("dir_mode", "said"),
    [
        (0o770, "writable by its group (mode 0770)"),
        (0o757, "writable by others (mode 0757)"),
        (0o1777, "writable by others (mode 1777)"),  # /tmp: sticky does not make it private
    ],
)
def test_a_directory_others_can_write_is_refused(tmp_path: Path, dir_mode: int, said: str) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    data_dir.chmod(dir_mode)
    message = f"data_dir {data_dir} is {said}; chmod 700 it"
    with pytest.raises(DataDirError, match=f"^{re.escape(message)}$"):
        datadir.prepare(data_dir)


def test_a_symlink_made_by_the_admin_is_followed_and_its_target_checked(tmp_path: Path) -> None:
    card = tmp_path / "sd-card" / "citygate"  # /var/lib/citygate -> an SD card mount
    card.mkdir(parents=True, mode=0o700)
    link = tmp_path / "citygate"
    link.symlink_to(card)
    datadir.prepare(link)
    card.chmod(0o777)
    with pytest.raises(DataDirError, match=re.escape(f"data_dir {link} (-> {card}) is writable")):
        datadir.check(link)


def test_a_data_dir_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.write_text("")
    with pytest.raises(DataDirError, match="is not a directory"):
        datadir.prepare(data_dir)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(DataDirError, match="is not a directory"):
        datadir.prepare(dangling)


@as_root
def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o700)
    os.chown(data_dir, OTHER_UID, -1)
    with pytest.raises(DataDirError, match=f"owned by uid {OTHER_UID}, not by the agent's user 0"):
        datadir.check(data_dir)
