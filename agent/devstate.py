"""Per-device state files: the runtime's :class:`~citygate.drivers.api.DeviceState`.

Each device that keeps state has one file, ``<data_dir>/state/<device_id>``, holding the bytes
its driver last saved (the BLE driver: the last encryption counter accepted, so that replayed
adverts stay refused after a restart). Files are written with
:func:`citygate.safefile.write_atomic` (a fresh ``O_EXCL | O_NOFOLLOW`` temporary, mode 0600,
renamed over the old one) and read with :func:`citygate.safefile.read_regular` (regular
files only, at most :data:`MAX_STATE_BYTES`). The ``state`` directory is created (mode 0700) on
the first save and must be a real directory, not a symlink.

Nothing here raises into a driver: a missing file reads as None; an unreadable, oversized or
otherwise unusable one is logged once and reads as None (the driver starts afresh and its next
save replaces it); a failed write is logged once per episode (until a write succeeds again).

A save is not fsynced: it runs on the event loop, and an fsync there costs about 10 ms on this
machine's disk and far more on an SD card. The rename keeps the file whole (old or new); an agent
crash loses nothing (the page cache survives it); a power cut may bring back a version up to the
kernel's write-back delay old (about 30 s), which for the BLE counter means adverts of those
seconds could each be accepted once more.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Final

from citygate.drivers.api import DeviceState
from citygate.safefile import read_regular, write_atomic

__all__ = ["MAX_STATE_BYTES", "STATE_DIR", "FileDeviceState"]

log = logging.getLogger(__name__)

STATE_DIR: Final = "state"
"""The folder of ``data_dir`` that holds one file per device."""
MAX_STATE_BYTES: Final = 64 * 1024
"""Largest state a device may keep; a bigger file is refused unread."""
STATE_DIR_MODE: Final = 0o700

# A device id as config.md allows it: a plain file name, never a path.
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class FileDeviceState:
    """One device's state file under ``<data_dir>/state/`` (a :class:`DeviceState`)."""

    def __init__(self, data_dir: Path, device_id: str) -> None:
        if not _SAFE_NAME.fullmatch(device_id):
            raise ValueError(f"device id {device_id!r} cannot name a state file")
        self.device_id = device_id
        self.directory = data_dir / STATE_DIR
        self.path = self.directory / device_id
        self._load_failed = False
        self._save_failing = False

    def load(self) -> bytes | None:
        """The bytes last saved, or None: no file yet, or one that cannot be used (logged once)."""
        try:
            return read_regular(self.path, max_bytes=MAX_STATE_BYTES, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if not self._load_failed:
                self._load_failed = True
                log.warning(
                    "%s: state file %s unusable (%s); starting without it",
                    self.device_id,
                    self.path,
                    exc.strerror or exc,
                )
            return None

    def save(self, data: bytes) -> None:
        """Replace the file with ``data``; a failure is logged (once per episode), never raised."""
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"state of {len(data)} bytes; at most {MAX_STATE_BYTES} are kept")
        try:
            self._ensure_directory()
            write_atomic(self.path, data, durable=False)
        except OSError as exc:
            if not self._save_failing:
                self._save_failing = True
                log.warning(
                    "%s: cannot save state to %s (%s); keeping it in memory",
                    self.device_id,
                    self.path,
                    exc.strerror or exc,
                )
            return
        if self._save_failing:
            self._save_failing = False
            log.info("%s: state saved again to %s", self.device_id, self.path)

    def _ensure_directory(self) -> None:
        with contextlib.suppress(FileExistsError):
            self.directory.mkdir(mode=STATE_DIR_MODE)
        info = os.lstat(self.directory)
        if not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(
                errno.ENOTDIR, "not a directory (a symlink is refused)", str(self.directory)
            )


if TYPE_CHECKING:
    _: DeviceState = FileDeviceState(Path(), "device")
