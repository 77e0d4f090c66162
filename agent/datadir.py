"""``gateway.data_dir`` before the agent writes a byte in it: the umask, the mode, the owner.

The buffer and its side files live in ``data_dir``; whoever else can write there can plant a
symlink where the agent is about to create a file, or swap the buffer for one of their own.
Each file the agent creates itself is opened with ``O_NOFOLLOW``/``O_EXCL``
(agent/safefile.py), but SQLite creates the ``-wal`` and ``-shm`` files itself, following
symlinks, so the real defence is this check: ``data_dir`` must be a directory owned by the
agent's user and writable by nobody else. Then only that user (and root) can put anything in it.

``data_dir`` may be a symlink an administrator made (``/var/lib/citygate`` linked to an SD card
mount is normal): it is followed, and the directory it resolves to is the one checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from citygate.drivers.api import CitygateError

__all__ = ["AGENT_UMASK", "DIR_MODE", "DataDirError", "check", "prepare"]

#: The agent's umask, whoever starts it (systemd's ``UMask=0077`` only covers the service).
AGENT_UMASK = 0o077
#: Mode of a data_dir the agent creates.
DIR_MODE = 0o700


class DataDirError(CitygateError):
    """data_dir cannot be created, or is not safe to use (the message says what to do)."""


def prepare(data_dir: Path) -> None:
    """At the start of ``citygate run``: set the process umask to :data:`AGENT_UMASK`, create
    ``data_dir`` (mode :data:`DIR_MODE`) if missing, and :func:`check` it. Raises DataDirError."""
    os.umask(AGENT_UMASK)
    try:
        data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except FileExistsError as e:  # exist_ok does not cover a file or a dangling symlink
        raise DataDirError(f"data_dir {data_dir} is not a directory") from e
    except OSError as e:
        raise DataDirError(f"cannot create data_dir {data_dir}: {e.strerror or e}") from e
    check(data_dir)


def check(data_dir: Path) -> None:
    """Refuse a ``data_dir`` (symlinks followed) that is not a directory, is owned by another
    user than the one the agent runs as, or is writable by its group or others. Raises
    DataDirError."""
    try:
        info = os.stat(data_dir)
    except OSError as e:
        raise DataDirError(f"cannot use data_dir {data_dir}: {e.strerror or e}") from e
    name = str(data_dir)
    resolved = os.path.realpath(data_dir)
    if resolved != os.path.abspath(data_dir):  # say which directory was checked
        name += f" (-> {resolved})"
    if not stat.S_ISDIR(info.st_mode):
        raise DataDirError(f"data_dir {name} is not a directory")
    user = os.geteuid()
    if info.st_uid != user:
        raise DataDirError(
            f"data_dir {name} is owned by uid {info.st_uid}, not by the agent's user {user};"
            f" chown it, or run the agent as uid {info.st_uid}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        who = "others" if mode & 0o002 else "its group"
        raise DataDirError(f"data_dir {name} is writable by {who} (mode {mode:04o}); chmod 700 it")
