"""Files in places someone else may have touched: no symlink is followed, no size is unbounded.

The data directory and the config's secret files are inputs like any other. A symlink planted
as ``.seq-hwm.tmp`` must not make the agent overwrite its target, and a secret path that names
``/dev/zero`` must not make it read forever. Every file the agent creates goes through
:func:`write_atomic` (a fresh temporary opened with ``O_EXCL | O_NOFOLLOW``, renamed over the
target, which replaces a symlink rather than writing through it); every small file it reads
goes through :func:`read_regular` (``O_NOFOLLOW`` optional, regular files only, capped size).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: Mode of every file the agent creates: the readings and state are nobody else's business.
FILE_MODE = 0o600


class UnsafeFileError(OSError):
    """A path that is not a regular file, is too large, or is a symlink where none may be."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def read_regular(path: Path, *, max_bytes: int, follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them.

    Devices, FIFOs and directories are refused before a byte is read (``/dev/zero`` would never
    end); a file larger than ``max_bytes`` is refused without reading it whole. Symlinks are
    followed unless ``follow_symlinks`` is false (a secret under /run/secrets is often one).
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a FIFO must not hang open()
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:  #: the last component is a symlink and O_NOFOLLOW is set
            raise UnsafeFileError(e.errno, "is a symbolic link", str(path)) from e
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(0, "is not a regular file", str(path))
        if info.st_size > max_bytes:
            raise UnsafeFileError(
                0, f"is {info.st_size} bytes, more than the {max_bytes} allowed", str(path)
            )
        chunks: list[bytes] = []
        total = 0
        while True:  # the size may change under us; never read past the cap
            chunk = os.read(fd, max_bytes + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise UnsafeFileError(0, f"is more than the {max_bytes} bytes allowed", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


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
