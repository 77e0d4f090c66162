"""Files in places someone else may have touched: no symlink is followed, no size is unbounded.

The data directory and the config's secret files are inputs like any other. A symlink planted
as ``.seq-hwm.tmp`` must not make the agent overwrite its target, and a secret path that names
``/dev/zero`` must not make it read forever. Every file the agent creates goes through
:func:`write_atomic` (a fresh temporary opened with ``O_EXCL | O_NOFOLLOW``, renamed over the
target, which replaces a symlink rather than writing through it); every small file it reads
goes through :func:`read_regular` (``O_NOFOLLOW`` optional, regular files only, capped size).
"""

from __future__ import annotations

import os
from pathlib import Path

from citygate.drivers.api import UnsafeFileError, read_regular

__all__ = [
    "FILE_MODE",
    "UnsafeFileError",
    "create_exclusive",
    "fsync_directory",
    "read_regular",
    "write_atomic",
]

#: Mode of every file the agent creates: the readings and state are nobody else's business.
FILE_MODE = 0o600


def create_exclusive(path: Path, mode: int = FILE_MODE) -> int:
    """A new file at ``path`` opened for writing; fails if anything (even a symlink) is there."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def write_atomic(path: Path, data: bytes, *, durable: bool = True, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never half.

    The temporary ``<name>.tmp`` is created with ``O_EXCL | O_NOFOLLOW``; a stale one (a crash
    between create and rename, or a planted symlink) is unlinked first, which removes the link,
    never its target. ``durable`` fsyncs the file and the directory (survives power loss).
    """
    temporary = path.with_name(path.name + ".tmp")
    try:
        fd = create_exclusive(temporary, mode)
    except FileExistsError:
        temporary.unlink()
        fd = create_exclusive(temporary, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    if durable:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` survive power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
