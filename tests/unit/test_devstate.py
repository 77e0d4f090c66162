"""The runtime's per-device state files (agent/devstate.py): real files in a real data_dir."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from citygate.devstate import MAX_STATE_BYTES, FileDeviceState
from citygate.drivers.api import DeviceState


def test_round_trip_across_instances_with_private_modes(tmp_path: Path) -> None:
    state = FileDeviceState(tmp_path, "env-1")
    assert isinstance(state, DeviceState)
    assert state.load() is None  # nothing saved yet, no directory yet
    state.save(b"one")
    state.save(b"two")
    assert FileDeviceState(tmp_path, "env-1").load() == b"two"  # a new agent reads it
    assert FileDeviceState(tmp_path, "env-2").load() is None
    path = tmp_path / "state" / "env-1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["env-1"]  # no temporary left


@pytest.mark.parametrize("device_id", ["../etc", "a/b", "", ".", "x" * 65])
def test_a_device_id_never_names_a_path(tmp_path: Path, device_id: str) -> None:
    with pytest.raises(ValueError, match="cannot name a state file"):
        FileDeviceState(tmp_path, device_id)


def plant(tmp_path: Path, how: str) -> Path:
    directory = tmp_path / "state"
    directory.mkdir()
    path = directory / "env-1"
    if how == "oversized":
        path.write_bytes(b"x" * (MAX_STATE_BYTES + 1))
    elif how == "symlink":
        (tmp_path / "secret").write_bytes(b"not yours")
        path.symlink_to(tmp_path / "secret")
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "directory":
        path.mkdir()
    elif how == "unreadable":
        path.write_bytes(b"x")
        path.chmod(0)
    return path


@pytest.mark.parametrize("how", ["oversized", "symlink", "fifo", "directory", "unreadable"])
def test_an_unusable_file_reads_as_none_logged_once(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = plant(tmp_path, how)
    if how == "unreadable" and os.access(path, os.R_OK):
        pytest.skip("running as root: permissions do not stop a read")
    state = FileDeviceState(tmp_path, "env-1")
    assert state.load() is None
    assert state.load() is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "env-1: state file" in warnings[0].getMessage()
    if how != "directory":
        state.save(b"fresh")  # the next save replaces it (a symlink, never its target)
        assert state.load() == b"fresh"
    if how == "symlink":
        assert (tmp_path / "secret").read_bytes() == b"not yours"


def test_a_failed_save_is_logged_once_per_episode_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state").write_bytes(b"a file where the folder goes")
    state = FileDeviceState(tmp_path, "env-1")
    caplog.set_level(logging.INFO)
    for _ in range(3):
        state.save(b"x")
    assert caplog.text.count("cannot save state") == 1
    (tmp_path / "state").unlink()
    state.save(b"y")
    assert "state saved again" in caplog.text
    assert state.load() == b"y"


def test_a_symlinked_state_folder_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    (data_dir / "state").symlink_to(elsewhere)
    FileDeviceState(data_dir, "env-1").save(b"x")
    assert list(elsewhere.iterdir()) == []
