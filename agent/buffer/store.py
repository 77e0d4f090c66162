"""The store: samples in SQLite from append to ack, its limits and drop policies, its stats.

The delivery loop is a transaction API in the Telegraf manner: :meth:`Buffer.append` →
:meth:`Buffer.fetch` after a cursor → publish → :meth:`Buffer.ack` the seqs the broker
acknowledged (only then are the rows deleted). Every call that changes data is one
transaction, which also records the seq counter and the timeline (agent/buffer/seq.py,
agent/buffer/timeline.py).

Size
----

A sample costs ``len(stored body) + ROW_OVERHEAD`` bytes against ``max_size``; that sum
is :attr:`BufferStats.backlog_bytes`. Bodies are stored zlib-compressed (level 1, 4 KiB window:
~8 µs per 100-reading body; float32 meter values shrink to about a third, so the same
``max_size`` holds three times the backlog). :data:`ROW_OVERHEAD` (96) was measured with
``bench_buffer`` (tests/bench/buffer.py) on 4 KiB pages: a row's cell, its other columns and
its time-index entry take 40–70 bytes; the rest is a share of the unused tail of each page. The
pages in use per accounted byte came out 0.63 / 0.76 / 0.86 / 0.99 / 0.99 / 1.25 / 1.31 / 1.00
/ 1.08 for samples of 1 / 3 / 10 / 30 / 60 / 100 / 200 / 300 / 500 readings (at 100–200
readings a compressed row is 1.5–3 KiB and only two fit a page). On top the file holds the WAL,
at most :data:`~citygate.buffer.WAL_SIZE_LIMIT` after a checkpoint. 4 KiB pages keep the bytes
written per commit low (~14 KiB for a one-sample commit, flash wear); 16 KiB pages would pack
large rows better but triple that. Freed pages are reused; with ``auto_vacuum=INCREMENTAL``,
:meth:`Buffer.expire` also gives them back to the file system, 16 MiB per call, while more
than a quarter of the file is free.

Limits
------

``max_age`` applies to every sample by its age on the timeline (agent/buffer/timeline.py,
"Ages"); ``max_size`` to all. ``when_full = "drop_oldest"`` deletes the oldest rows (lowest
seq) to make room; ``"drop_newest"`` refuses the first new sample that does not fit and those
after it in the same call. A sample larger than ``max_size`` is never stored. Every drop —
size, age, invalid input, disk full — adds to ``dropped_samples``, a persistent counter, and
to :attr:`AppendResult.dropped` or the return value of :meth:`Buffer.expire`.

A full disk never raises: an append drops and counts its samples, acks and device statuses
wait in memory and are written by the next transaction that succeeds.

Folded acks
-----------

A delete of its own costs a commit: the row's page, the time index and the counters written
to the WAL again, ~12 KiB on 4 KiB pages, as much as the append. The publisher therefore acks
with ``fold=True``: the seqs wait in memory and the next transaction — the next append, as a
rule — deletes them with its own pages, at most :data:`ACK_FOLD_S` later (then
:meth:`Buffer.flush_acks`, called by the agent's housekeeping, or the next ack writes them) and
never more than :data:`ACK_FOLD_MAX` of them. Meanwhile :meth:`Buffer.fetch` skips those rows
and :meth:`Buffer.stats` leaves them out. A crash before the delete costs duplicates, never a
loss (delivery is at least once); a clean close writes them. Another process reading the file
(``citygate status`` while the agent runs) may count them in the backlog for up to
:data:`ACK_FOLD_S`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import operator
import os
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from citygate.buffer.errors import BufferError
from citygate.buffer.recovery import OwnerLock, checked_counters, open_database
from citygate.buffer.schema import (
    APPLICATION_ID,
    BUSY_TIMEOUT_S,
    Counters,
    pragma_int,
    read_counters,
)
from citygate.buffer.seq import SeqReservation
from citygate.buffer.timeline import (
    Timeline,
    age,
    first_line,
    read_clock_record,
    resume_line,
    same_boot,
)
from citygate.clock import SYSTEM, Timebase
from citygate.config import BufferSettings
from citygate.datadir import DIR_MODE, DataDirError
from citygate.datadir import check as check_data_dir

__all__ = [
    "ACK_FOLD_MAX",
    "ACK_FOLD_S",
    "ROW_OVERHEAD",
    "VACUUM_PAGES_PER_CALL",
    "AppendResult",
    "Buffer",
    "BufferStats",
    "NewSample",
    "StoredSample",
    "open_readonly_stats",
]

log = logging.getLogger("citygate.buffer")  # one logger for the whole buffer
_T = TypeVar("_T")

ROW_OVERHEAD = 96  # bytes per row beyond its stored body; see "Size" above
ACK_FOLD_S = 10.0
"""How long folded acks may wait for the next transaction. Where writes add up (samples every
few seconds) an append always comes sooner; ``citygate status``, reading the file from another
process, counts delivered samples for at most this long (plus a housekeeping period)."""
ACK_FOLD_MAX = 4096
"""Folded acks written at once when this many wait."""
VACUUM_PAGES_PER_CALL = 4096  # 16 MiB given back per expire(): ~0.1 s, not seconds at once
_ZLIB_LEVEL = 1  # with a 4 KiB window: ~8 µs for a 100-reading body; level 6 saves only ~10 %
_ZLIB_WBITS = 12
_ZLIB_MEMLEVEL = 4


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


@dataclass(frozen=True, slots=True)
class _Row:
    index: int  # position in the append call
    sample: NewSample
    blob: bytes

    @property
    def cost(self) -> int:
        return len(self.blob) + ROW_OVERHEAD


# After a full disk, new samples are tried again only once this much room is back (free on the
# file system plus free pages inside the file): a rollback or a checkpoint frees a few pages,
# and trying on those would start a new "disk full" episode seconds later.
RESUME_FREE_BYTES = 1 << 20


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


def _check_settings(settings: BufferSettings) -> None:
    if settings.when_full not in ("drop_oldest", "drop_newest"):
        raise ValueError(
            f"when_full must be drop_oldest or drop_newest, not {settings.when_full!r}"
        )
    if settings.durability not in ("normal", "full"):
        raise ValueError(f"durability must be normal or full, not {settings.durability!r}")


class Buffer:
    """The SQLite buffer, used from one thread (see ``citygate.buffer``)."""

    def __init__(
        self, path: Path, settings: BufferSettings, *, timebase: Timebase = SYSTEM
    ) -> None:
        _check_settings(settings)
        self.path = path
        self.settings = settings
        self._timebase = timebase
        self._timeline = Timeline(timebase)
        self._seq = SeqReservation(path)
        self._owner = OwnerLock(path)
        self._db: sqlite3.Connection | None = None
        self._counters = Counters(1, 0, 0, 0, 0)
        # Writes a full disk refused, carried by the next transaction that succeeds.
        self._unsaved_dropped = 0
        self._pending_acks: set[int] = set()
        self._pending_acks_since = 0.0  # timebase.since_boot() when the first one came
        self._pending_statuses: dict[str, str] = {}
        self._disk_full = False
        self._disk_full_dropped = 0  # in this disk-full episode

    def apply_settings(self, settings: BufferSettings) -> None:
        """Use new limits (``max_size``, ``max_age``, ``when_full``) from the next call on.
        ``durability`` should stay the one the file was opened with: its pragma is set at open
        (the agent keeps the old value on reload until a restart)."""
        _check_settings(settings)
        self.settings = settings

    # ------------------------------------------------------------------ open / close

    def open(self) -> None:
        """Open or create the file; move a corrupt or foreign one aside. Raises BufferError."""
        if self._db is not None:
            raise BufferError(f"buffer {self.path} is already open")
        try:  # nobody else may write where SQLite follows symlinks (agent/datadir.py)
            self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            check_data_dir(self.path.parent)
        except DataDirError as e:
            raise BufferError(str(e)) from e
        except OSError as e:
            raise BufferError(f"cannot create {self.path.parent}: {e}") from e
        self._owner.acquire()
        try:
            # A fresh file continues above every seq the side file says may have been used.
            reserved = self._seq.load()
            self._db, self._counters = open_database(
                self.path,
                durability=self.settings.durability,
                first_seq=max(1, reserved),
                timebase=self._timebase,
            )
            with self._errors("open"):
                record = read_clock_record(self._db)
            self._timeline.resume(record)
            found = checked_counters(self._db, self._counters, self.path)
            if found != self._counters:
                self._counters = found
                with contextlib.suppress(_DiskFull):
                    self._write(lambda db, c: None)
            self._counters.next_seq = self._seq.next_seq_at_open(
                self._counters.next_seq,
                commits_may_be_lost=(
                    self.settings.durability == "normal" and not same_boot(record, self._timebase)
                ),
            )  # a jump is written by the next transaction
            try:  # the side file lost or behind
                self._seq.cover(self._counters.next_seq)
            except OSError as e:  # tried again by the next append
                log.warning("buffer: cannot write %s: %s", self._seq.path, e)
        except BaseException:
            self.close()
            raise

    def _make_durable(self, db: sqlite3.Connection) -> None:
        """Clean close with durability "normal": checkpoint (fsyncs the WAL and the file),
        then shrink the seq reservation to next_seq, so the next boot needs no seq jump."""
        try:
            busy, wal_frames, checkpointed = db.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)"
            ).fetchone()
            if busy == 0 and wal_frames == checkpointed:
                self._seq.shrink_to(self._counters.next_seq)
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
        self._owner.release()

    # ------------------------------------------------------------------ transactions

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

    def _write(self, change: Callable[[sqlite3.Connection, Counters], _T]) -> _T:
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
                db.execute(
                    "UPDATE meta SET next_seq = ?, dropped_samples = ?, backlog_samples = ?,"
                    " backlog_readings = ?, backlog_body_bytes = ?, line = ?, boot_id = ?,"
                    " since_boot = ?, wall = ?, wall_synced = ? WHERE id = 1",
                    dataclasses.astuple(counters) + dataclasses.astuple(self._timeline.record()),
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

    def _room_is_back(self) -> bool:
        """At least RESUME_FREE_BYTES free on the file system and inside the file together."""
        db = self._require_open()
        try:
            fs = os.statvfs(self.path.parent)
            free_pages = int(db.execute("PRAGMA freelist_count").fetchone()[0])
            page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        except (OSError, sqlite3.Error):
            return True  # cannot tell: let the write itself find out
        return fs.f_bavail * fs.f_frsize + free_pages * page_size >= RESUME_FREE_BYTES

    def _note_disk_full(self) -> None:
        if not self._disk_full:
            self._disk_full = True
            log.warning("buffer %s: disk full; dropping new samples until space is free", self.path)

    @staticmethod
    def _delete_seqs(db: sqlite3.Connection, counters: Counters, seqs: list[int]) -> None:
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
        if self._disk_full and not self._room_is_back():
            self._unsaved_dropped += len(samples)
            self._disk_full_dropped += len(samples)
            return AppendResult(seqs, len(samples), disk_full=True)
        try:
            self._seq.cover(self._counters.next_seq + len(rows))
            dropped = self._write(lambda db, c: self._insert(db, c, rows, seqs, len(invalid)))
        except _DiskFull:
            self._unsaved_dropped += len(samples)
            self._disk_full_dropped += len(samples)
            return AppendResult([None] * len(samples), len(samples), disk_full=True)
        except OSError as e:  # the side file
            if not _is_disk_full(e):
                raise BufferError(f"buffer: cannot write {self._seq.path}: {e}") from e
            self._note_disk_full()
            self._unsaved_dropped += len(samples)
            self._disk_full_dropped += len(samples)
            return AppendResult(seqs, len(samples), disk_full=True)
        return AppendResult(seqs, dropped)

    def _insert(
        self,
        db: sqlite3.Connection,
        counters: Counters,
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
        line = self._timeline.now()
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
    def _delete_oldest(db: sqlite3.Connection, counters: Counters, excess: int) -> int:
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
                    if seq in self._pending_acks:  # acked, not deleted yet (folded, or a full disk)
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

        def drop(db: sqlite3.Connection, counters: Counters) -> None:
            before = counters.samples
            self._delete_seqs(db, counters, seqs)
            counters.dropped += before - counters.samples

        with contextlib.suppress(_DiskFull):  # they are skipped again next time
            self._write(drop)

    def ack(self, seqs: Iterable[int], *, fold: bool = False) -> None:
        """Delete these rows: the broker acknowledged them. Unknown seqs are ignored.

        With ``fold`` the delete rides on the next transaction (see "Folded acks")."""
        wanted = [operator.index(seq) for seq in seqs]
        if not wanted:
            return
        if fold:
            self._hold_acks(wanted)
            if len(self._pending_acks) < ACK_FOLD_MAX and not self._acks_due():
                return
            wanted = []  # _write deletes the held ones first
        try:
            self._write(lambda db, c: self._delete_seqs(db, c, wanted))
        except _DiskFull:
            self._hold_acks(wanted)

    def _hold_acks(self, seqs: list[int]) -> None:
        if not self._pending_acks:
            self._pending_acks_since = self._timebase.since_boot()
        self._pending_acks.update(seqs)

    def _acks_due(self) -> bool:
        return self._timebase.since_boot() - self._pending_acks_since >= ACK_FOLD_S

    def flush_acks(self) -> None:
        """Write folded acks that have waited :data:`ACK_FOLD_S` (no-op otherwise)."""
        if not self._pending_acks or not self._acks_due():
            return
        if self._disk_full and not self._room_is_back():
            return
        with contextlib.suppress(_DiskFull):
            self._write(lambda db, c: None)

    def expire(self) -> int:
        """Drop samples buffered longer than ``max_age`` (counted); returns how many.

        Age is measured on the timeline, never on the wall clock (agent/buffer/timeline.py,
        "Ages"); rows go oldest first, from the head (``line`` grows with ``seq``). Also gives
        free pages back to the file system, 16 MiB per call, while more than a quarter of the
        file is free (after a large backlog drained).
        """
        cutoff = self._timeline.cutoff(self.settings.max_age)

        def delete_old(db: sqlite3.Connection, counters: Counters) -> int:
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
            free = pragma_int(db, "freelist_count")
            if free > 256 and free * 4 > pragma_int(db, "page_count"):
                # executescript steps the pragma to the end (execute would free one page).
                db.executescript(f"PRAGMA incremental_vacuum({min(free, VACUUM_PAGES_PER_CALL)})")
        except sqlite3.Error as e:
            if not _is_disk_full(e):
                raise BufferError(f"buffer {self.path}: incremental vacuum: {e}") from e

    # ------------------------------------------------------------------ bookkeeping

    def stats(self) -> BufferStats:
        """The backlog now (cheap: counters in memory, one index lookup), acked rows not yet
        deleted left out."""
        db = self._require_open()
        samples, readings, body_bytes = (
            self._counters.samples,
            self._counters.readings,
            self._counters.body_bytes,
        )
        with self._errors("stats"):
            if self._pending_acks:
                held = json.dumps(sorted(self._pending_acks))
                n, held_readings, held_bytes = db.execute(
                    "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(length(body)), 0)"
                    " FROM sample WHERE seq IN (SELECT value FROM json_each(?))",
                    (held,),
                ).fetchone()
                samples -= int(n)
                readings -= int(held_readings)
                body_bytes -= int(held_bytes)
                oldest = _oldest_unsent_time(db, held)
                row = db.execute(
                    "SELECT line FROM sample WHERE seq NOT IN (SELECT value FROM json_each(?))"
                    " ORDER BY seq LIMIT 1",
                    (held,),
                ).fetchone()
                first = None if row is None else float(row[0])
            else:
                oldest = _oldest_unsent_time(db)
                first = first_line(db)
        c = self._counters
        return BufferStats(
            backlog_samples=samples,
            backlog_readings=readings,
            backlog_bytes=body_bytes + samples * ROW_OVERHEAD,
            oldest_unsent_time=oldest,
            oldest_unsent_age_s=age(self._timeline.now(), first),
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


def _oldest_unsent_time(db: sqlite3.Connection, held: str | None = None) -> float | None:
    """The oldest synced sample's time, else the first row's; ``held``: a JSON list of seqs
    to leave out (acked, not deleted yet)."""
    # Unsynced times are not comparable with synced ones; they count only when alone.
    if held is None:
        row = db.execute("SELECT min(time) FROM sample WHERE clock_synced = 1").fetchone()
        if row[0] is None:
            row = db.execute("SELECT time FROM sample ORDER BY seq LIMIT 1").fetchone()
    else:
        not_held = "seq NOT IN (SELECT value FROM json_each(?))"
        row = db.execute(
            f"SELECT time FROM sample WHERE clock_synced = 1 AND {not_held} ORDER BY time LIMIT 1",
            (held,),
        ).fetchone()
        if row is None:
            row = db.execute(
                f"SELECT time FROM sample WHERE {not_held} ORDER BY seq LIMIT 1", (held,)
            ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


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
        application_id = pragma_int(db, "application_id")
        if application_id != APPLICATION_ID:
            raise BufferError(
                f"{path} is not a citygate buffer (application_id {application_id:#x})"
            )
        db.execute("BEGIN")  # one snapshot for every figure
        c = read_counters(db)
        if c is None:
            raise BufferError(f"buffer {path}: the meta row is missing")
        # The agent's timeline now, resumed from its last commit as the agent itself would.
        line_now = resume_line(read_clock_record(db), timebase)
        stats = BufferStats(
            backlog_samples=c.samples,
            backlog_readings=c.readings,
            backlog_bytes=c.body_bytes + c.samples * ROW_OVERHEAD,
            oldest_unsent_time=_oldest_unsent_time(db),
            oldest_unsent_age_s=age(line_now, first_line(db)),
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
