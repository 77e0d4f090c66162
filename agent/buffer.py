"""The store-and-forward buffer: SenML-encoded samples in SQLite until the broker acks them.

One :class:`Buffer` owns one SQLite file (``data_dir/buffer.sqlite3``) and is used from one
thread; :class:`AsyncBuffer` runs every call on one dedicated thread so the event loop never
waits on SQLite. The delivery loop is a transaction API in the Telegraf manner:
:meth:`Buffer.append` → :meth:`Buffer.fetch` after a cursor → publish → :meth:`Buffer.ack`
the seqs the broker acknowledged (only then are the rows deleted).

Durability (the file is always in WAL mode; every call that changes data is one transaction):

* ``"normal"`` — ``synchronous=NORMAL``: a commit is in the WAL file (in the OS page cache)
  before :meth:`Buffer.append` returns, but is not fsynced. Every committed sample survives a
  crash or ``kill -9`` of the agent. A power cut or kernel crash can lose the transactions
  committed since the last checkpoint (the WAL is fsynced only when it is checkpointed into the
  main file, by default every 1000 pages); the file is never corrupted by it.
* ``"full"`` — ``synchronous=FULL``: the WAL is fsynced at every commit, so a sample is on
  stable storage before :meth:`Buffer.append` returns and survives a power cut too (if the
  storage honours flushes).

``seq`` is gateway-wide and strictly increasing. The next value lives in the ``meta`` row,
updated in the transaction that uses it, so an emptied backlog does not reset it. A side file
``<name>.seq-hwm`` holds a reservation: every seq ever handed out is below it. It is written
(fsynced, atomically replaced) before a seq beyond it is used, a block of
:data:`SEQ_RESERVE_BLOCK` at a time, so a buffer started fresh (file lost or moved aside as
corrupt) continues above every seq the old one could have published. With ``"normal"`` a power
cut can also take the last commits (and the seqs they used, perhaps already published) out of
the file itself, so the first open after a reboot continues above the reservation too, unless
the last close was clean: a clean close checkpoints (fsyncing the WAL and the file) and
shrinks the reservation to ``next_seq``. (A crash without a reboot loses nothing: the page
cache outlives the process.)

Size: a sample costs ``len(stored body) + ROW_OVERHEAD`` bytes against ``max_size``; that sum
is :attr:`BufferStats.backlog_bytes`. Bodies are stored zlib-compressed (level 1, 4 KiB window:
~8 µs per 100-reading body; float32 meter values shrink to about a third, so the same
``max_size`` holds three times the backlog). :data:`ROW_OVERHEAD` (96) was measured with
``bench_buffer`` on 4 KiB pages: a row's cell, its other columns and its time-index entry take
40–70 bytes; the rest is a share of the unused tail of each page. The pages in use per
accounted byte came out 0.63 / 0.76 / 0.86 / 0.99 / 0.99 / 1.25 / 1.31 / 1.00 / 1.08 for
samples of 1 / 3 / 10 / 30 / 60 / 100 / 200 / 300 / 500 readings (at 100–200 readings a
compressed row is 1.5–3 KiB and only two fit a page). On top the file holds the WAL, at most
:data:`WAL_SIZE_LIMIT` after a checkpoint. 4 KiB pages keep the bytes written per commit low
(~14 KiB for a one-sample commit, flash wear); 16 KiB pages would pack large rows better but
triple that. Freed pages are reused; with ``auto_vacuum=INCREMENTAL``, :meth:`Buffer.expire`
also gives them back to the file system, 16 MiB per call, while more than a quarter of the
file is free.

Ages (``max_age``, :attr:`BufferStats.oldest_unsent_age_s`) are never read off the wall clock,
which jumps: NTP steps it, an operator sets it, a gateway without a real-time clock boots in
the past and is stepped forward by years once NTP answers. Each row also stores ``line``, the
moment it entered the buffer on the buffer's own *timeline*: seconds that advance with
``CLOCK_BOOTTIME`` (never jumps, counts suspend) while the agent runs. The ``meta`` row records,
with every transaction, where the timeline stood (``line``) together with the boot id, the boot
clock and the wall clock (and whether it was synchronised). At open the timeline resumes from
that record:

* same boot (agent restarted or killed): plus the boot-clock time since the record: exact,
  whatever the wall clock did meanwhile;
* after a reboot, if the wall clock was synchronised both then and now: plus the wall-clock
  gap (never negative);
* otherwise (a reboot with an unsynchronised clock): the downtime is unknown and counts as 0:
  samples may then outlive ``max_age`` by that downtime, but a bad clock never expires them.

So a sample's age is the time it spent in the buffer, the timeline only grows, ``line`` grows
with ``seq``, and a wall clock set forward by 40 days, set back, or stepped from 1970 to now
expires nothing, reorders nothing, renumbers nothing (``seq`` is the buffer's own counter and
rows are sent in ``seq`` order). A new file starts its timeline at the wall time (its origin
means nothing; only differences count).

Limits: ``max_age`` applies to every sample by its age on the timeline; ``max_size`` to all.
``when_full = "drop_oldest"`` deletes the oldest rows (lowest seq) to make room;
``"drop_newest"`` refuses the first new sample that does not fit and those after it in the same
call. A sample larger than ``max_size`` is never stored. Every drop — size, age, invalid input,
disk full — adds to ``dropped_samples``, a persistent counter, and to
:attr:`AppendResult.dropped` or the return value of :meth:`Buffer.expire`.

Opening takes an exclusive ``flock`` on ``<name>.lock`` (a second agent on the same data_dir gets
a BufferError) and runs ``PRAGMA quick_check``, which reads the whole file: 4.4 s cold, 0.2 s
warm for a full 256 MiB buffer on the development machine's disk. A corrupt or foreign file at
open (not SQLite, another ``application_id``, a newer schema, a
failed ``PRAGMA quick_check``, "database disk image is malformed") is renamed to
``<name>.corrupt-<UTC timestamp>`` (with its ``-wal``/``-shm``, renamed alike so SQLite still
finds them together), with one WARNING line; a new buffer starts. A full disk never raises: an
append drops and counts its samples, acks and device statuses wait in memory and are written by
the next transaction that succeeds.

Errors::

    CitygateError
    └── BufferError    fatal: cannot open or lock the file, unexpected SQLite error, a call
                       that hangs (AsyncBuffer's call_timeout)

(The name is the contract's; it shadows Python's builtin ``BufferError`` where imported
unqualified.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import math
import operator
import os
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import ParamSpec, Self, TypeVar

from citygate.clock import SYSTEM, Timebase
from citygate.config import BufferSettings
from citygate.drivers.api import CitygateError

__all__ = [
    "APPLICATION_ID",
    "ROW_OVERHEAD",
    "SCHEMA_VERSION",
    "AppendResult",
    "AsyncBuffer",
    "Buffer",
    "BufferError",
    "BufferStats",
    "NewSample",
    "StoredSample",
    "open_readonly_stats",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_P = ParamSpec("_P")

APPLICATION_ID = 0x43477462  # "CGtb": PRAGMA application_id of a citygate buffer
SCHEMA_VERSION = 2  # PRAGMA user_version; _MIGRATIONS[v - 1] upgrades v to v + 1
ROW_OVERHEAD = 96  # bytes per row beyond its stored body; see the module docstring
SEQ_RESERVE_BLOCK = 10_000
WAL_SIZE_LIMIT = 4 * 1024 * 1024
PAGE_SIZE = 4096  # the flash/file-system block: one commit of a small sample writes few bytes
BUSY_TIMEOUT_S = 5.0
VACUUM_PAGES_PER_CALL = 4096  # 16 MiB given back per expire(): ~0.1 s, not seconds at once
_ZLIB_LEVEL = 1  # with a 4 KiB window: ~8 µs for a 100-reading body; level 6 saves only ~10 %
_ZLIB_WBITS = 12
_ZLIB_MEMLEVEL = 4
_SQLITE_MAGIC = b"SQLite format 3\x00"
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_UNIX_NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"
_MIGRATIONS: tuple[tuple[str, ...], ...] = (  # statements, run in one transaction
    (  # 1 → 2: the timeline ("Ages" in the module docstring)
        "ALTER TABLE sample ADD COLUMN line REAL NOT NULL DEFAULT 0",
        f"UPDATE sample SET line = CASE WHEN clock_synced THEN time ELSE {_UNIX_NOW_SQL} END",
        "ALTER TABLE meta ADD COLUMN line REAL",
        "ALTER TABLE meta ADD COLUMN boot_id TEXT",
        "ALTER TABLE meta ADD COLUMN since_boot REAL",
        "ALTER TABLE meta ADD COLUMN wall REAL",
        "ALTER TABLE meta ADD COLUMN wall_synced INTEGER",
    ),
)

_SCHEMA = """
CREATE TABLE meta (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq           INTEGER NOT NULL,
    dropped_samples    INTEGER NOT NULL,
    backlog_samples    INTEGER NOT NULL,
    backlog_readings   INTEGER NOT NULL,
    backlog_body_bytes INTEGER NOT NULL,
    -- where the timeline stood at the last commit, and the clocks then (NULL: never written)
    line               REAL,
    boot_id            TEXT,
    since_boot         REAL,
    wall               REAL,
    wall_synced        INTEGER
);
CREATE TABLE sample (
    seq          INTEGER PRIMARY KEY,
    time         REAL NOT NULL,
    clock_synced INTEGER NOT NULL,
    readings     INTEGER NOT NULL,
    device_id    TEXT NOT NULL,
    body         BLOB NOT NULL,  -- zlib(UTF-8 SenML body)
    line         REAL NOT NULL   -- when it entered the buffer, on the timeline
);
CREATE INDEX sample_synced_time ON sample (time) WHERE clock_synced = 1;
CREATE TABLE device_status (
    device_id TEXT PRIMARY KEY,
    status    TEXT NOT NULL
) WITHOUT ROWID;
"""


class BufferError(CitygateError):
    """The buffer cannot go on: the agent must stop (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class NewSample:
    """A sample to buffer: ``body`` is its SenML records as ``citygate.senml`` encodes them."""

    device_id: str
    time: float
    clock_synced: bool
    readings: int
    body: str


@dataclass(frozen=True, slots=True)
class StoredSample:
    """A buffered sample with its gateway-wide sequence number."""

    seq: int
    device_id: str
    time: float
    clock_synced: bool
    readings: int
    body: str


@dataclass(frozen=True, slots=True)
class AppendResult:
    """``seqs[i]`` is the seq given to ``samples[i]``, None if it was dropped."""

    seqs: list[int | None]
    dropped: int  # samples dropped by this call: old rows deleted for room, or new ones refused
    disk_full: bool = False  # all of them were dropped because the disk is full (logged here)


@dataclass(frozen=True, slots=True)
class BufferStats:
    """Backlog figures; ``backlog_bytes`` is what ``max_size`` bounds."""

    backlog_samples: int
    backlog_readings: int
    backlog_bytes: int
    oldest_unsent_time: float | None  # the oldest synced sample's time, else the first row's
    oldest_unsent_age_s: float | None  # how long the first row has been buffered (timeline)
    dropped_samples: int  # since the buffer file was created
    next_seq: int


@dataclass(slots=True)
class _Counters:
    """The ``meta`` row, mirrored in memory; changed on a copy that is kept only on commit."""

    next_seq: int
    dropped: int
    samples: int
    readings: int
    body_bytes: int


@dataclass(frozen=True, slots=True)
class _Row:
    index: int  # position in the append call
    sample: NewSample
    blob: bytes

    @property
    def cost(self) -> int:
        return len(self.blob) + ROW_OVERHEAD


@dataclass(frozen=True, slots=True)
class _ClockRecord:
    """The clocks at the last commit (``meta``)."""

    line: float
    boot_id: str
    since_boot: float
    wall: float
    wall_synced: bool


def _resume_line(record: _ClockRecord | None, timebase: Timebase) -> float:
    """Where the timeline stands now, from the last record (rules in the module docstring)."""
    if record is None:
        return timebase.wall()
    boot_id = timebase.boot_id()
    since_boot = timebase.since_boot()
    if boot_id and boot_id == record.boot_id and since_boot >= record.since_boot:
        return record.line + (since_boot - record.since_boot)
    if record.wall_synced and timebase.synced():
        return record.line + max(0.0, timebase.wall() - record.wall)
    return record.line


def _read_clock_record(db: sqlite3.Connection) -> _ClockRecord | None:
    row = db.execute(
        "SELECT line, boot_id, since_boot, wall, wall_synced FROM meta WHERE id = 1"
    ).fetchone()
    if row is None or any(v is None for v in row):
        return None
    line, boot_id, since_boot, wall, synced = row
    return _ClockRecord(float(line), str(boot_id), float(since_boot), float(wall), bool(synced))


class _Unusable(Exception):
    """The file at the buffer's path is not a healthy citygate buffer (reason in args[0])."""


class _DiskFull(Exception):
    """SQLITE_FULL or ENOSPC: the transaction was rolled back."""


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, sqlite3.Error):
        return (getattr(error, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return isinstance(error, OSError) and error.errno in {errno.ENOSPC, errno.EDQUOT}


def _compress(body: bytes) -> bytes:
    packer = zlib.compressobj(_ZLIB_LEVEL, zlib.DEFLATED, _ZLIB_WBITS, _ZLIB_MEMLEVEL)
    return packer.compress(body) + packer.flush()


def _invalid_reason(sample: NewSample) -> str | None:
    if not isinstance(sample.device_id, str) or not sample.device_id:
        return f"device_id must be a non-empty string, not {sample.device_id!r}"
    if not isinstance(sample.time, int | float) or not math.isfinite(sample.time):
        return f"time must be a finite number, not {sample.time!r}"
    if not isinstance(sample.readings, int) or sample.readings < 1:
        return f"readings must be a positive int, not {sample.readings!r}"
    if not isinstance(sample.body, str) or not sample.body:
        return "body must be a non-empty string"
    return None


class Buffer:
    """The SQLite buffer, used from one thread (see the module docstring)."""

    def __init__(
        self, path: Path, settings: BufferSettings, *, timebase: Timebase = SYSTEM
    ) -> None:
        if settings.when_full not in ("drop_oldest", "drop_newest"):
            raise ValueError(
                f"when_full must be drop_oldest or drop_newest, not {settings.when_full!r}"
            )
        if settings.durability not in ("normal", "full"):
            raise ValueError(f"durability must be normal or full, not {settings.durability!r}")
        self.path = path
        self.settings = settings
        self._timebase = timebase
        self._line_at_open = 0.0
        self._boot_at_open = 0.0
        self._hwm_path = path.with_name(path.name + ".seq-hwm")
        self._lock_path = path.with_name(path.name + ".lock")
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._counters = _Counters(1, 0, 0, 0, 0)
        self._reserved = 0  # every seq ever used is below this (the side file says so)
        # Writes a full disk refused, carried by the next transaction that succeeds.
        self._unsaved_dropped = 0
        self._pending_acks: set[int] = set()
        self._pending_statuses: dict[str, str] = {}
        self._disk_full = False
        self._disk_full_dropped = 0  # in this disk-full episode

    # ------------------------------------------------------------------ open / close

    def open(self) -> None:
        """Open or create the file; move a corrupt or foreign one aside. Raises BufferError."""
        if self._db is not None:
            raise BufferError(f"buffer {self.path} is already open")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BufferError(f"cannot create {self.path.parent}: {e}") from e
        self._lock()
        try:
            self._reserved = self._read_reserve()
            try:
                self._db, self._counters = self._connect()
            except _Unusable as e:
                self._move_aside(str(e))
                try:
                    self._db, self._counters = self._connect()
                except _Unusable as again:
                    raise BufferError(f"cannot create a new buffer {self.path}: {again}") from again
            with self._errors("open"):
                record = _read_clock_record(self._require_open())
            self._line_at_open = _resume_line(record, self._timebase)
            self._boot_at_open = self._timebase.since_boot()
            self._check_counters()
            self._skip_seqs_a_power_cut_may_have_lost(record)
            if self._reserved < self._counters.next_seq:  # side file lost or behind
                try:
                    self._reserve(self._counters.next_seq)
                except OSError as e:  # tried again by the next append
                    log.warning("buffer: cannot write %s: %s", self._hwm_path, e)
        except BaseException:
            self.close()
            raise

    def _skip_seqs_a_power_cut_may_have_lost(self, record: _ClockRecord | None) -> None:
        """First open since a reboot, durability "normal": the last commits may have been lost
        with the page cache, and with them seqs already published. Continue above the side
        file's reservation (fsynced before any seq is used) so no seq is handed out twice."""
        if self.settings.durability != "normal" or self._reserved <= self._counters.next_seq:
            return
        boot_id = self._timebase.boot_id()
        if record is not None and boot_id and record.boot_id == boot_id:
            return  # same boot: the page cache kept every commit
        log.info(
            "buffer %s: first start since a reboot: seq continues at %d, above every seq handed"
            " out before (commits not yet on disk at a power cut may be lost, never reused)",
            self.path,
            self._reserved,
        )
        self._counters.next_seq = self._reserved  # written by the next transaction

    def _make_durable(self, db: sqlite3.Connection) -> None:
        """Clean close with durability "normal": checkpoint (fsyncs the WAL and the file),
        then shrink the seq reservation to next_seq, so the next boot needs no seq jump."""
        try:
            busy, wal_frames, checkpointed = db.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)"
            ).fetchone()
            if (
                busy == 0
                and wal_frames == checkpointed
                and self._reserved > self._counters.next_seq
            ):
                self._write_reserve(self._counters.next_seq)
        except (sqlite3.Error, OSError) as e:  # the next boot skips seqs instead
            log.debug("buffer %s: final checkpoint: %s", self.path, e)

    def close(self) -> None:
        """Close the file (idempotent). Writes a full disk held back are tried once more, then
        given up (an ack given up means that sample is sent again: at least once)."""
        if self._db is not None:
            if self._unsaved_dropped or self._pending_acks or self._pending_statuses:
                with contextlib.suppress(_DiskFull, BufferError):
                    self._write(lambda db, c: None)
            if self.settings.durability == "normal":
                self._make_durable(self._db)
            db, self._db = self._db, None
            try:
                db.close()
            except sqlite3.Error as e:
                log.warning("buffer %s: closing: %s", self.path, e)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        """One process per buffer: a second agent on the same data_dir fails fast."""
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise BufferError(f"cannot open {self._lock_path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise BufferError(f"buffer {self.path} is in use by another process") from e
        self._lock_fd = fd

    def _connect(self) -> tuple[sqlite3.Connection, _Counters]:
        """A connection to a healthy buffer file (created if absent) and its meta row;
        raises _Unusable for a corrupt or foreign file."""
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed:
            with self.path.open("rb") as f:
                if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                    raise _Unusable("not an SQLite database")
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as e:
            raise BufferError(f"cannot open buffer {self.path}: {e}") from e
        try:
            self._prepare(db)
            row = db.execute(
                "SELECT next_seq, dropped_samples, backlog_samples, backlog_readings,"
                " backlog_body_bytes FROM meta WHERE id = 1"
            ).fetchone()
            if row is None:
                raise _Unusable("its meta row is missing")
            return db, _Counters(*(int(v) for v in row))
        except _Unusable:
            db.close()
            raise
        except sqlite3.Error as e:
            db.close()
            if (getattr(e, "sqlite_errorcode", 0) & 0xFF) in _CORRUPTION_CODES:
                raise _Unusable(str(e)) from e
            raise BufferError(f"cannot open buffer {self.path}: {e}") from e
        except BaseException:
            db.close()
            raise

    def _prepare(self, db: sqlite3.Connection) -> None:
        application_id = _pragma_int(db, "application_id")
        version = _pragma_int(db, "user_version")
        tables = _scalar_int(db, "SELECT count(*) FROM sqlite_schema")
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
            raise BufferError(f"buffer {self.path}: the file system does not allow WAL mode")
        synchronous = "FULL" if self.settings.durability == "full" else "NORMAL"
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        if not tables:
            self._create_schema(db)
        elif version < SCHEMA_VERSION:
            db.execute("BEGIN IMMEDIATE")  # a failure closes the connection: rolled back
            for step in _MIGRATIONS[version - 1 :]:
                for statement in step:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
            log.info("buffer %s: schema upgraded from %d to %d", self.path, version, SCHEMA_VERSION)

    def _create_schema(self, db: sqlite3.Connection) -> None:
        # A fresh file continues above every seq the side file says may have been used.
        next_seq = max(1, self._reserved)
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT INTO meta (id, next_seq, dropped_samples, backlog_samples, backlog_readings,"
            " backlog_body_bytes) VALUES (1, ?, 0, 0, 0, 0)",
            (next_seq,),
        )
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")

    def _check_counters(self) -> None:
        """Cheap insurance at open: the meta counters must describe the rows."""
        db = self._require_open()
        with self._errors("open"):
            row = db.execute(
                "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(length(body)), 0),"
                " coalesce(max(seq) + 1, 1) FROM sample"
            ).fetchone()
        samples, readings, body_bytes, above_rows = (int(v) for v in row)
        recorded = self._counters
        found = _Counters(
            max(recorded.next_seq, above_rows), recorded.dropped, samples, readings, body_bytes
        )
        if found == recorded:
            return
        log.warning(
            "buffer %s: counters did not match the rows (%d samples recorded, %d found); corrected",
            self.path,
            recorded.samples,
            samples,
        )
        self._counters = found
        with contextlib.suppress(_DiskFull):
            self._write(lambda db, c: None)

    def _move_aside(self, reason: str) -> None:
        stamp = datetime.fromtimestamp(self._timebase.wall(), UTC).strftime("%Y%m%dT%H%M%SZ")
        base = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        target, n = base, 1
        while target.exists():
            target, n = base.with_name(f"{base.name}.{n}"), n + 1
        try:
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    os.replace(source, f"{target}{suffix}")
        except OSError as e:
            raise BufferError(
                f"buffer {self.path} is unusable ({reason}) and cannot be moved aside: {e}"
            ) from e
        log.warning(
            "buffer %s is unusable (%s): moved it aside as %s and started an empty buffer",
            self.path,
            reason,
            target.name,
        )

    # ------------------------------------------------------------------ seq reservation

    def _read_reserve(self) -> int:
        try:
            text = self._hwm_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as e:
            log.warning(
                "buffer: cannot read %s (%s); relying on the buffer file alone", self._hwm_path, e
            )
            return 0
        if not text.isdigit():
            log.warning(
                "buffer: %s holds %r, not a seq; relying on the buffer file alone",
                self._hwm_path,
                text[:40],
            )
            return 0
        return int(text)

    def _reserve(self, end: int) -> None:
        """Make sure every seq below ``end`` is covered by the side file (fsynced)."""
        if end <= self._reserved:
            return
        self._write_reserve(end + SEQ_RESERVE_BLOCK)

    def _write_reserve(self, reserved: int) -> None:
        temporary = self._hwm_path.with_name(self._hwm_path.name + ".tmp")
        with temporary.open("w", encoding="ascii") as f:
            f.write(f"{reserved}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self._hwm_path)
        directory = os.open(self._hwm_path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._reserved = reserved

    # ------------------------------------------------------------------ transactions

    def _line_now(self) -> float:
        """Now on the timeline ("Ages" in the module docstring)."""
        return self._line_at_open + max(0.0, self._timebase.since_boot() - self._boot_at_open)

    def _require_open(self) -> sqlite3.Connection:
        if self._db is None:
            raise BufferError(f"buffer {self.path} is not open")
        return self._db

    @contextlib.contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise BufferError(f"buffer {self.path}: {operation}: {e}") from e

    def _write(self, change: Callable[[sqlite3.Connection, _Counters], _T]) -> _T:
        """Run ``change`` in one transaction with the writes a full disk held back.

        ``change`` updates the counters it is given (a copy); they become the buffer's only
        if the transaction commits. Raises _DiskFull (rolled back) or BufferError.
        """
        db = self._require_open()
        counters = dataclasses.replace(self._counters)
        counters.dropped += self._unsaved_dropped
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if self._pending_acks:
                    self._delete_seqs(db, counters, sorted(self._pending_acks))
                if self._pending_statuses:
                    db.executemany(
                        "INSERT OR REPLACE INTO device_status VALUES (?, ?)",
                        self._pending_statuses.items(),
                    )
                result = change(db, counters)
                clocks = (
                    self._line_now(),
                    self._timebase.boot_id(),
                    self._timebase.since_boot(),
                    self._timebase.wall(),
                    self._timebase.synced(),
                )
                db.execute(
                    "UPDATE meta SET next_seq = ?, dropped_samples = ?, backlog_samples = ?,"
                    " backlog_readings = ?, backlog_body_bytes = ?, line = ?, boot_id = ?,"
                    " since_boot = ?, wall = ?, wall_synced = ? WHERE id = 1",
                    dataclasses.astuple(counters) + clocks,
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            if _is_disk_full(e):
                self._note_disk_full()
                raise _DiskFull from e
            raise BufferError(f"buffer {self.path}: {e}") from e
        self._counters = counters
        self._unsaved_dropped = 0
        self._pending_acks.clear()
        self._pending_statuses.clear()
        if self._disk_full:
            self._disk_full = False
            log.info(
                "buffer %s: writing again (disk space is back); %d samples were dropped",
                self.path,
                self._disk_full_dropped,
            )
            self._disk_full_dropped = 0
            # Give back what the WAL grew to meanwhile (the next checkpoint could need it).
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return result

    def _note_disk_full(self) -> None:
        if not self._disk_full:
            self._disk_full = True
            log.warning("buffer %s: disk full; dropping new samples until space is free", self.path)

    @staticmethod
    def _delete_seqs(db: sqlite3.Connection, counters: _Counters, seqs: list[int]) -> None:
        wanted = json.dumps(seqs)
        where = "WHERE seq IN (SELECT value FROM json_each(?))"
        n, readings, body_bytes = db.execute(
            "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(length(body)), 0)"
            f" FROM sample {where}",
            (wanted,),
        ).fetchone()
        db.execute(f"DELETE FROM sample {where}", (wanted,))
        counters.samples -= int(n)
        counters.readings -= int(readings)
        counters.body_bytes -= int(body_bytes)

    # ------------------------------------------------------------------ the data path

    def append(self, samples: Sequence[NewSample]) -> AppendResult:
        """Store ``samples`` in one transaction, giving each the next seq.

        Invalid samples, samples refused by ``when_full``/``max_size`` and, on a full disk, all
        of them are dropped and counted; nothing here raises but a BufferError.
        """
        self._require_open()
        rows: list[_Row] = []
        invalid: list[str] = []
        for index, sample in enumerate(samples):
            reason = _invalid_reason(sample)
            if reason is None:
                try:
                    rows.append(_Row(index, sample, _compress(sample.body.encode("utf-8"))))
                except UnicodeEncodeError as e:
                    reason = f"body is not valid Unicode: {e.reason}"
            if reason is not None:
                invalid.append(reason)
        if invalid:
            log.warning("buffer: dropped %d invalid samples (first: %s)", len(invalid), invalid[0])
        seqs: list[int | None] = [None] * len(samples)
        if not samples:
            return AppendResult(seqs, 0)
        try:
            self._reserve(self._counters.next_seq + len(rows))
            dropped = self._write(lambda db, c: self._insert(db, c, rows, seqs, len(invalid)))
        except _DiskFull:
            self._unsaved_dropped += len(samples)
            self._disk_full_dropped += len(samples)
            return AppendResult([None] * len(samples), len(samples), disk_full=True)
        except OSError as e:  # the side file
            if not _is_disk_full(e):
                raise BufferError(f"buffer: cannot write {self._hwm_path}: {e}") from e
            self._note_disk_full()
            self._unsaved_dropped += len(samples)
            self._disk_full_dropped += len(samples)
            return AppendResult(seqs, len(samples), disk_full=True)
        return AppendResult(seqs, dropped)

    def _insert(
        self,
        db: sqlite3.Connection,
        counters: _Counters,
        rows: list[_Row],
        seqs: list[int | None],
        invalid: int,
    ) -> int:
        """Make room, insert what fits, fill ``seqs``; returns the samples dropped, counting
        the ``invalid`` ones already left out."""
        limit = self.settings.max_size
        fitting = [row for row in rows if row.cost <= limit]  # the others never could
        dropped = len(rows) - len(fitting)
        if self.settings.when_full == "drop_newest":
            room = limit - (counters.body_bytes + counters.samples * ROW_OVERHEAD)
            keep = 0
            while keep < len(fitting) and fitting[keep].cost <= room:
                room -= fitting[keep].cost
                keep += 1
            kept = fitting[:keep]
            dropped += len(fitting) - keep
        else:
            # A batch larger than the whole buffer loses its own oldest samples first.
            total = sum(row.cost for row in fitting)
            first = 0
            while total > limit:
                total -= fitting[first].cost
                first += 1
            kept = fitting[first:]
            dropped += first
            excess = counters.body_bytes + counters.samples * ROW_OVERHEAD + total - limit
            if excess > 0:
                dropped += self._delete_oldest(db, counters, excess)
        seq = counters.next_seq
        line = self._line_now()
        values = []
        for row in kept:
            s = row.sample
            values.append(
                (seq, float(s.time), bool(s.clock_synced), s.readings, s.device_id, row.blob, line)
            )
            seqs[row.index] = seq
            counters.samples += 1
            counters.readings += s.readings
            counters.body_bytes += len(row.blob)
            seq += 1
        db.executemany("INSERT INTO sample VALUES (?, ?, ?, ?, ?, ?, ?)", values)
        counters.next_seq = seq
        counters.dropped += dropped + invalid
        return dropped + invalid

    @staticmethod
    def _delete_oldest(db: sqlite3.Connection, counters: _Counters, excess: int) -> int:
        """Delete rows from the head until ``excess`` bytes are freed; returns how many."""
        freed = count = readings = body_bytes = 0
        last = None
        cursor = db.execute("SELECT seq, readings, length(body) FROM sample ORDER BY seq")
        for seq, row_readings, row_bytes in cursor:
            last = seq
            count += 1
            readings += row_readings
            body_bytes += row_bytes
            freed += row_bytes + ROW_OVERHEAD
            if freed >= excess:
                break
        cursor.close()
        if last is not None:
            db.execute("DELETE FROM sample WHERE seq <= ?", (last,))
        counters.samples -= count
        counters.readings -= readings
        counters.body_bytes -= body_bytes
        return count

    def fetch(
        self, after_seq: int, max_readings: int, max_samples: int = 10_000
    ) -> list[StoredSample]:
        """Samples with ``seq > after_seq`` in seq order, as many as fit in ``max_readings``
        (at least one if any exists, however many readings it has), at most ``max_samples``."""
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, not {max_samples}")
        db = self._require_open()
        found: list[StoredSample] = []
        unreadable: list[tuple[int, str]] = []
        total = 0
        with self._errors("fetch"):
            cursor = db.execute(
                "SELECT seq, device_id, time, clock_synced, readings, body FROM sample"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, max_samples),
            )
            try:
                for seq, device_id, t, synced, readings, blob in cursor:
                    if seq in self._pending_acks:  # acked while the disk was full
                        continue
                    if found and total + readings > max_readings:
                        break
                    try:
                        body = zlib.decompress(blob).decode("utf-8")
                    except (zlib.error, UnicodeDecodeError, TypeError) as e:
                        unreadable.append((seq, str(e)))
                        continue
                    found.append(StoredSample(seq, device_id, t, bool(synced), readings, body))
                    total += readings
            finally:
                cursor.close()
        if unreadable:
            self._drop_unreadable(unreadable)
        return found

    def _drop_unreadable(self, unreadable: list[tuple[int, str]]) -> None:
        log.warning(
            "buffer %s: dropped %d unreadable rows (seq %d: %s)",
            self.path,
            len(unreadable),
            unreadable[0][0],
            unreadable[0][1],
        )
        seqs = [seq for seq, _ in unreadable]

        def drop(db: sqlite3.Connection, counters: _Counters) -> None:
            before = counters.samples
            self._delete_seqs(db, counters, seqs)
            counters.dropped += before - counters.samples

        with contextlib.suppress(_DiskFull):  # they are skipped again next time
            self._write(drop)

    def ack(self, seqs: Iterable[int]) -> None:
        """Delete these rows: the broker acknowledged them. Unknown seqs are ignored."""
        wanted = [operator.index(seq) for seq in seqs]
        if not wanted:
            return
        try:
            self._write(lambda db, c: self._delete_seqs(db, c, wanted))
        except _DiskFull:
            self._pending_acks.update(wanted)

    def expire(self) -> int:
        """Drop samples buffered longer than ``max_age`` (counted); returns how many.

        Age is measured on the timeline, never on the wall clock (module docstring, "Ages");
        rows go oldest first, from the head (``line`` grows with ``seq``). Also gives free
        pages back to the file system, 16 MiB per call, while more than a quarter of the file
        is free (after a large backlog drained).
        """
        cutoff = self._line_now() - self.settings.max_age

        def delete_old(db: sqlite3.Connection, counters: _Counters) -> int:
            n = readings = body_bytes = 0
            last = None
            cursor = db.execute("SELECT seq, readings, length(body), line FROM sample ORDER BY seq")
            for seq, row_readings, row_bytes, line in cursor:
                if line >= cutoff:
                    break
                last = seq
                n += 1
                readings += row_readings
                body_bytes += row_bytes
            cursor.close()
            if last is not None:
                db.execute("DELETE FROM sample WHERE seq <= ?", (last,))
                counters.samples -= n
                counters.readings -= readings
                counters.body_bytes -= body_bytes
                counters.dropped += n
            return n

        try:
            expired = self._write(delete_old)
        except _DiskFull:
            return 0
        self._give_back_free_pages()
        return expired

    def _give_back_free_pages(self) -> None:
        db = self._require_open()
        try:
            free = _pragma_int(db, "freelist_count")
            if free > 256 and free * 4 > _pragma_int(db, "page_count"):
                # executescript steps the pragma to the end (execute would free one page).
                db.executescript(f"PRAGMA incremental_vacuum({min(free, VACUUM_PAGES_PER_CALL)})")
        except sqlite3.Error as e:
            if not _is_disk_full(e):
                raise BufferError(f"buffer {self.path}: incremental vacuum: {e}") from e

    # ------------------------------------------------------------------ bookkeeping

    def stats(self) -> BufferStats:
        """The backlog now (cheap: counters in memory, one index lookup)."""
        db = self._require_open()
        with self._errors("stats"):
            oldest = _oldest_unsent_time(db)
            first_line = _first_line(db)
        c = self._counters
        return BufferStats(
            backlog_samples=c.samples,
            backlog_readings=c.readings,
            backlog_bytes=c.body_bytes + c.samples * ROW_OVERHEAD,
            oldest_unsent_time=oldest,
            oldest_unsent_age_s=_age(self._line_now(), first_line),
            dropped_samples=c.dropped + self._unsaved_dropped,
            next_seq=c.next_seq,
        )

    def save_device_status(self, device_id: str, status_json: str) -> None:
        """Persist a device's status (JSON text, for ``citygate status``)."""
        self._pending_statuses[device_id] = status_json
        with contextlib.suppress(_DiskFull):
            self._write(lambda db, c: None)

    def device_statuses(self) -> dict[str, str]:
        """Every persisted device status by device id."""
        db = self._require_open()
        with self._errors("device statuses"):
            statuses = {
                str(d): str(s) for d, s in db.execute("SELECT device_id, status FROM device_status")
            }
        statuses.update(self._pending_statuses)
        return statuses

    def add_dropped(self, n: int) -> None:
        """Count ``n`` samples lost before they reached the buffer."""
        if n < 0:
            raise ValueError(f"cannot add a negative drop count ({n})")
        if n:
            self._unsaved_dropped += n  # written by the next transaction that succeeds
            with contextlib.suppress(_DiskFull):
                self._write(lambda db, c: None)


def _pragma_int(db: sqlite3.Connection, name: str) -> int:
    return _scalar_int(db, f"PRAGMA {name}")


def _scalar_int(db: sqlite3.Connection, sql: str) -> int:
    row = db.execute(sql).fetchone()
    return int(row[0])


def _oldest_unsent_time(db: sqlite3.Connection) -> float | None:
    # Unsynced times are not comparable with synced ones; they count only when alone.
    row = db.execute("SELECT min(time) FROM sample WHERE clock_synced = 1").fetchone()
    if row[0] is None:
        row = db.execute("SELECT time FROM sample ORDER BY seq LIMIT 1").fetchone()
    return None if row is None or row[0] is None else float(row[0])


def _first_line(db: sqlite3.Connection) -> float | None:
    row = db.execute("SELECT line FROM sample ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def _age(line_now: float, first_line: float | None) -> float | None:
    return None if first_line is None else max(0.0, line_now - first_line)


def open_readonly_stats(
    path: Path, *, timebase: Timebase = SYSTEM
) -> tuple[BufferStats, dict[str, str]]:
    """Backlog and device statuses of a buffer file, read-only (safe while the agent runs)."""
    if not path.exists():
        raise BufferError(f"no buffer at {path}")
    # An open buffer always has its WAL. Without one no agent runs: read the file as immutable,
    # so this (perhaps root) process does not create a -wal/-shm the agent could not open later.
    options = "mode=ro" if Path(f"{path}-wal").exists() else "mode=ro&immutable=1"
    try:
        db = sqlite3.connect(
            f"{path.resolve().as_uri()}?{options}", uri=True, timeout=BUSY_TIMEOUT_S
        )
    except sqlite3.Error as e:
        raise BufferError(f"cannot open buffer {path}: {e}") from e
    try:
        application_id = _pragma_int(db, "application_id")
        if application_id != APPLICATION_ID:
            raise BufferError(
                f"{path} is not a citygate buffer (application_id {application_id:#x})"
            )
        db.execute("BEGIN")  # one snapshot for every figure
        row = db.execute(
            "SELECT next_seq, dropped_samples, backlog_samples, backlog_readings,"
            " backlog_body_bytes FROM meta WHERE id = 1"
        ).fetchone()
        if row is None:
            raise BufferError(f"buffer {path}: the meta row is missing")
        c = _Counters(*(int(v) for v in row))
        # The agent's timeline now, resumed from its last commit as the agent itself would.
        line_now = _resume_line(_read_clock_record(db), timebase)
        stats = BufferStats(
            backlog_samples=c.samples,
            backlog_readings=c.readings,
            backlog_bytes=c.body_bytes + c.samples * ROW_OVERHEAD,
            oldest_unsent_time=_oldest_unsent_time(db),
            oldest_unsent_age_s=_age(line_now, _first_line(db)),
            dropped_samples=c.dropped,
            next_seq=c.next_seq,
        )
        statuses = {
            str(d): str(s) for d, s in db.execute("SELECT device_id, status FROM device_status")
        }
        db.execute("COMMIT")
    except sqlite3.Error as e:
        raise BufferError(f"cannot read buffer {path}: {e}") from e
    finally:
        db.close()
    return stats, statuses


class AsyncBuffer:
    """:class:`Buffer` for the event loop: every call runs on one dedicated thread.

    ``call_timeout`` bounds each call, ``open_timeout`` the opening (its quick_check reads the
    whole file: seconds on an SD card); a call that takes longer raises BufferError (the thread
    may still finish it: an append that timed out may have been stored). ``async with`` opens
    and closes the buffer and the thread.
    """

    def __init__(
        self,
        path: Path,
        settings: BufferSettings,
        *,
        timebase: Timebase = SYSTEM,
        call_timeout: float = 30.0,
        open_timeout: float = 300.0,
    ) -> None:
        self.buffer = Buffer(path, settings, timebase=timebase)
        self.call_timeout = call_timeout
        self.open_timeout = open_timeout
        self._executor: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self, limit_s: float, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        if self._executor is None:
            raise BufferError(f"buffer {self.buffer.path} is not open")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit_s):
                return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))
        except TimeoutError as e:
            name = getattr(function, "__name__", "call")
            raise BufferError(f"buffer {name} did not finish within {limit_s:g} s") from e

    async def open(self) -> None:
        """Start the thread and open the buffer on it."""
        if self._executor is not None:
            raise BufferError(f"buffer {self.buffer.path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="citygate-buffer")
        try:
            await self._call(self.open_timeout, self.buffer.open)
        except BaseException:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise

    async def close(self) -> None:
        """Close the buffer on its thread, then stop the thread (idempotent)."""
        if self._executor is None:
            return
        try:
            await self._call(self.call_timeout, self.buffer.close)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def append(self, samples: Sequence[NewSample]) -> AppendResult:
        """See :meth:`Buffer.append`."""
        return await self._call(self.call_timeout, self.buffer.append, samples)

    async def fetch(
        self, after_seq: int, max_readings: int, max_samples: int = 10_000
    ) -> list[StoredSample]:
        """See :meth:`Buffer.fetch`."""
        return await self._call(
            self.call_timeout, self.buffer.fetch, after_seq, max_readings, max_samples
        )

    async def ack(self, seqs: Iterable[int]) -> None:
        """See :meth:`Buffer.ack`."""
        await self._call(self.call_timeout, self.buffer.ack, list(seqs))

    async def expire(self) -> int:
        """See :meth:`Buffer.expire`."""
        return await self._call(self.call_timeout, self.buffer.expire)

    async def stats(self) -> BufferStats:
        """See :meth:`Buffer.stats`."""
        return await self._call(self.call_timeout, self.buffer.stats)

    async def save_device_status(self, device_id: str, status_json: str) -> None:
        """See :meth:`Buffer.save_device_status`."""
        await self._call(self.call_timeout, self.buffer.save_device_status, device_id, status_json)

    async def device_statuses(self) -> dict[str, str]:
        """See :meth:`Buffer.device_statuses`."""
        return await self._call(self.call_timeout, self.buffer.device_statuses)

    async def add_dropped(self, n: int) -> None:
        """See :meth:`Buffer.add_dropped`."""
        await self._call(self.call_timeout, self.buffer.add_dropped, n)
