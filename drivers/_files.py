"""Reading small files that someone else may have put there (re-exported by the driver API)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


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


def open_regular(path: Path, what: str) -> BinaryIO:
    """``path`` open for reading in binary; OSError (naming ``what``) unless it is a regular
    file. Opening never waits: a FIFO without a writer is refused, not waited for."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{what} {path} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True, slots=True)
class OverlongLine:
    """A line longer than the limit of :func:`bounded_lines`: skipped unread (``size`` bytes)."""

    size: int


def bounded_lines(stream: BinaryIO, limit: int) -> Iterator[str | OverlongLine]:
    """Each line of ``stream`` as text (bad UTF-8 replaced), or an :class:`OverlongLine` for one
    longer than ``limit`` bytes, whose rest is skipped in chunks of at most ``limit``."""
    while True:
        raw = stream.readline(limit + 1)
        if not raw:
            return
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = stream.readline(limit)
                size += len(raw)
            yield OverlongLine(size)
            continue
        yield raw.decode("utf-8", errors="replace")
