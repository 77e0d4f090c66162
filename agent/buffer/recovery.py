"""Opening a buffer file: the lock, the integrity check, moving a bad file aside, a fresh file.

Opening takes an exclusive ``flock`` on ``<name>.lock`` (a second agent on the same data_dir gets
a BufferError) and runs ``PRAGMA quick_check``, which reads the whole file: 4.4 s cold, 0.2 s
warm for a full 256 MiB buffer on the development machine's disk. A corrupt or foreign file at
open (not SQLite, another ``application_id``, a newer schema, a
failed ``PRAGMA quick_check``, "database disk image is malformed") is renamed to
``<name>.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm``, renamed alike so SQLite still
finds them together), with one WARNING line; a new buffer starts (its ``seq`` continues above
the reservation, agent/buffer/seq.py). An older schema is upgraded in place.

Files in data_dir (see agent/datadir.py for the directory itself): the lock is opened with
``O_NOFOLLOW``, the buffer file created by us with ``O_EXCL | O_NOFOLLOW``, both mode 0600
whatever the umask; SQLite creates ``-wal``/``-shm`` itself (following symlinks, which no
Python API can stop) with the buffer file's mode, so a symlink at any of those paths is
refused before SQLite opens anything.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

from citygate.buffer.errors import BufferError
from citygate.buffer.schema import (
    APPLICATION_ID,
    BUSY_TIMEOUT_S,
    MIGRATIONS,
    PAGE_SIZE,
    SCHEMA,
    SCHEMA_VERSION,
    WAL_SIZE_LIMIT,
    Counters,
    pragma_int,
    read_counters,
    scalar_int,
)
from citygate.clock import Timebase
from citygate.safefile import FILE_MODE, create_exclusive

__all__ = ["OwnerLock", "checked_counters", "open_database"]

log = logging.getLogger("citygate.buffer")  # one logger for the whole buffer
_SQLITE_MAGIC = b"SQLite format 3\x00"
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
# O_NONBLOCK: whatever is planted at the lock's path, opening it must not hang.
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: The files SQLite keeps beside the buffer (it creates them itself, following symlinks).
_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


class OwnerLock:
    """``<name>.lock`` of the buffer at ``buffer_path``: one process per buffer."""

    def __init__(self, buffer_path: Path) -> None:
        self.buffer_path = buffer_path
        self.path = buffer_path.with_name(buffer_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; a second agent on the same data_dir fails fast with BufferError."""
        try:  # O_NOFOLLOW: a symlink planted there must not make us open (or create) its target
            fd = os.open(self.path, _LOCK_FLAGS, FILE_MODE)
        except OSError as e:
            reason = "it is a symbolic link; remove it" if e.errno == errno.ELOOP else e.strerror
            raise BufferError(f"cannot open {self.path}: {reason or e}") from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BufferError(f"cannot open {self.path}: not a regular file; remove it")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BufferError:
            os.close(fd)
            raise
        except OSError as e:
            os.close(fd)
            raise BufferError(f"buffer {self.buffer_path} is in use by another process") from e
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None


class _Unusable(Exception):
    """The file at the buffer's path is not a healthy citygate buffer (reason in args[0])."""


def open_database(
    path: Path, *, durability: str, first_seq: int, timebase: Timebase
) -> tuple[sqlite3.Connection, Counters]:
    """A connection to a healthy buffer file at ``path`` and its ``meta`` counters.

    A missing file is created (its seq starting at ``first_seq``), an older schema upgraded;
    a corrupt or foreign file is moved aside (stamped with ``timebase``'s wall time) and a new
    one created. Raises BufferError.
    """
    try:
        return _connect(path, durability, first_seq)
    except _Unusable as e:
        _move_aside(path, str(e), timebase)
    try:
        return _connect(path, durability, first_seq)
    except _Unusable as again:
        raise BufferError(f"cannot create a new buffer {path}: {again}") from again


def checked_counters(db: sqlite3.Connection, recorded: Counters, path: Path) -> Counters:
    """Cheap insurance at open: the counters that describe the rows (``recorded`` if they
    do; logged if not). Raises BufferError."""
    try:
        row = db.execute(
            "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(length(body)), 0),"
            " coalesce(max(seq) + 1, 1) FROM sample"
        ).fetchone()
    except sqlite3.Error as e:
        raise BufferError(f"buffer {path}: open: {e}") from e
    samples, readings, body_bytes, above_rows = (int(v) for v in row)
    found = Counters(
        max(recorded.next_seq, above_rows), recorded.dropped, samples, readings, body_bytes
    )
    if found == recorded:
        return recorded
    log.warning(
        "buffer %s: counters did not match the rows (%d samples recorded, %d found); corrected",
        path,
        recorded.samples,
        samples,
    )
    return found


def _connect(path: Path, durability: str, first_seq: int) -> tuple[sqlite3.Connection, Counters]:
    """Raises _Unusable for a corrupt or foreign file."""
    _refuse_planted(path)
    try:  # ours, 0600, whatever the umask: SQLite gives its -wal and -shm this file's mode
        os.close(create_exclusive(path))
    except FileExistsError:
        pass
    except OSError as e:
        raise BufferError(f"cannot create buffer {path}: {e.strerror or e}") from e
    existed = path.stat().st_size > 0
    if existed:
        with path.open("rb") as f:
            if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                raise _Unusable("not an SQLite database")
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as e:
        raise BufferError(f"cannot open buffer {path}: {e}") from e
    try:
        _prepare(db, path, durability, first_seq)
        counters = read_counters(db)
        if counters is None:
            raise _Unusable("its meta row is missing")
        return db, counters
    except _Unusable:
        db.close()
        raise
    except sqlite3.Error as e:
        db.close()
        if (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _CORRUPTION_CODES:
            raise _Unusable(str(e)) from e
        raise BufferError(f"cannot open buffer {path}: {e}") from e
    except BaseException:
        db.close()
        raise


def _refuse_planted(path: Path) -> None:
    """Refuse a symlink (or anything but a regular file) at the buffer's path or its SQLite
    companions: SQLite opens and creates them following symlinks, and would write through one.

    This is a second line: the real defence is agent/datadir.py, which lets only the agent's
    user (and root) write in data_dir, so nobody else can plant anything here."""
    for suffix in _SQLITE_SUFFIXES:
        name = Path(f"{path}{suffix}")
        try:
            info = name.lstat()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise BufferError(f"cannot open buffer {path}: {name}: {e.strerror or e}") from e
        if not stat.S_ISREG(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
            raise BufferError(f"{name} is {kind}, which citygate never makes; remove it")


def _prepare(db: sqlite3.Connection, path: Path, durability: str, first_seq: int) -> None:
    application_id = pragma_int(db, "application_id")
    version = pragma_int(db, "user_version")
    tables = scalar_int(db, "SELECT count(*) FROM sqlite_schema")
    if application_id != APPLICATION_ID and (tables or application_id):
        raise _Unusable(f"not a citygate buffer (application_id {application_id:#x})")
    if version > SCHEMA_VERSION:
        raise _Unusable(f"written by a newer citygate (schema {version} > {SCHEMA_VERSION})")
    if tables:
        names = {
            str(r[0]) for r in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        }
        if version < 1 or not {"meta", "sample", "device_status"} <= names:
            raise _Unusable(f"unexpected schema (version {version}, tables {sorted(names)})")
        problems = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            text = " ".join(" ".join(problems).replace("*** in database main ***", "").split())
            raise _Unusable(f"quick_check: {text}")
    else:  # page size and auto-vacuum can only be chosen before the first table
        db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise BufferError(f"buffer {path}: the file system does not allow WAL mode")
    synchronous = "FULL" if durability == "full" else "NORMAL"
    db.execute(f"PRAGMA synchronous = {synchronous}")
    db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    if not tables:
        _create_schema(db, first_seq)
    elif version < SCHEMA_VERSION:
        db.execute("BEGIN IMMEDIATE")  # a failure closes the connection: rolled back
        for step in MIGRATIONS[version - 1 :]:
            for statement in step:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
        log.info("buffer %s: schema upgraded from %d to %d", path, version, SCHEMA_VERSION)


def _create_schema(db: sqlite3.Connection, first_seq: int) -> None:
    db.execute("BEGIN IMMEDIATE")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(
        "INSERT INTO meta (id, next_seq, dropped_samples, backlog_samples, backlog_readings,"
        " backlog_body_bytes) VALUES (1, ?, 0, 0, 0, 0)",
        (first_seq,),
    )
    db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.execute("COMMIT")


def _move_aside(path: Path, reason: str, timebase: Timebase) -> None:
    stamp = datetime.fromtimestamp(timebase.wall(), UTC).strftime("%Y%m%dT%H%M%SZ")
    base = path.with_name(f"{path.name}.corrupt-{stamp}")
    target, n = base, 1
    while target.exists():
        target, n = base.with_name(f"{base.name}.{n}"), n + 1
    try:
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{path}{suffix}")
            if source.exists():
                os.replace(source, f"{target}{suffix}")
    except OSError as e:
        raise BufferError(
            f"buffer {path} is unusable ({reason}) and cannot be moved aside: {e}"
        ) from e
    log.warning(
        "buffer %s is unusable (%s): moved it aside as %s and started an empty buffer",
        path,
        reason,
        target.name,
    )
