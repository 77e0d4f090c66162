"""Reading small files that someone else may have put there (re-exported by the driver API)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


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
