"""Folded acks (agent/buffer/store.py, "Folded acks"): an acknowledged row's delete rides on the
next transaction instead of a commit of its own; meanwhile the row is invisible to fetch and
stats, and nothing is lost or counted twice."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from citygate.buffer import ACK_FOLD_MAX, ACK_FOLD_S, ROW_OVERHEAD
from citygate.config import BufferSettings
from tests.unit.test_buffer import T0, Clock, everything, new, opened, stored


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "buffer.sqlite3"


@pytest.fixture
def cost(tmp_path: Path) -> int:
    """What one ``new()`` sample costs against max_size (bodies differ a little by salt)."""
    with opened(tmp_path / "cost" / "buffer.sqlite3", BufferSettings()) as b:
        b.append([new()])
        return b.stats().backlog_bytes


def rows_in_file(path: Path) -> list[int]:
    """The seqs committed to the file, seen by another connection (as after a crash)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return [int(seq) for (seq,) in db.execute("SELECT seq FROM sample ORDER BY seq")]
    finally:
        db.close()


def commits(path: Path) -> int:
    """Frames in the WAL: grows with every commit (and is reset by a checkpoint)."""
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_a_folded_ack_is_deleted_by_the_next_append(db_path: Path) -> None:
    with opened(db_path, BufferSettings()) as b:
        seqs = stored(b.append([new(salt=1, readings=2), new(salt=2, readings=5)]))
        wal_before = commits(db_path)
        b.ack(seqs[:1], fold=True)
        assert commits(db_path) == wal_before  # no commit of its own
        assert rows_in_file(db_path) == seqs  # still in the file: a crash now sends it again
        assert [r.seq for r in everything(b)] == seqs[1:]  # not fetched again
        (third,) = stored(b.append([new(salt=3)]))
        assert rows_in_file(db_path) == [seqs[1], third]  # gone with the append's commit
        stats = b.stats()
        assert (stats.backlog_samples, stats.backlog_readings) == (2, 8)


def test_stats_leave_folded_acks_out(db_path: Path) -> None:
    clock = Clock()
    with opened(db_path, BufferSettings(), clock) as b:
        seqs = stored(b.append([new(t=T0 + 1, readings=2, salt=1)]))
        clock.advance(5)
        later = stored(b.append([new(t=T0 + 9, readings=4, salt=2)]))
        full = b.stats()
        clock.advance(3)
        b.ack(seqs, fold=True)
        stats = b.stats()
        assert (stats.backlog_samples, stats.backlog_readings) == (1, 4)
        assert stats.oldest_unsent_time == T0 + 9
        assert stats.oldest_unsent_age_s == 3.0  # the second row's age, not the first's
        assert stats.backlog_bytes < full.backlog_bytes
        b.ack(later, fold=True)
        empty = b.stats()
        assert (empty.backlog_samples, empty.backlog_readings, empty.backlog_bytes) == (0, 0, 0)
        assert empty.oldest_unsent_time is None
        assert empty.oldest_unsent_age_s is None
        assert empty.next_seq == full.next_seq
    with opened(db_path, BufferSettings(), clock) as b:  # the close wrote the deletes
        assert b.stats().backlog_samples == 0
        assert rows_in_file(db_path) == []


def test_stats_with_folded_acks_equal_stats_after_the_delete(db_path: Path) -> None:
    with opened(db_path, BufferSettings()) as b:
        seqs = stored(b.append([new(salt=i, readings=i + 1) for i in range(6)]))
        b.ack(seqs[::2], fold=True)
        folded = b.stats()
        b.ack([])  # nothing: still folded
        b.ack(seqs[1:2])  # an immediate ack writes the folded ones too
        assert rows_in_file(db_path) == seqs[3::2]
        after = b.stats()
    assert folded.backlog_samples == after.backlog_samples + 1
    assert folded.backlog_readings == after.backlog_readings + 2
    assert folded.backlog_bytes > after.backlog_bytes >= ROW_OVERHEAD


def test_folded_acks_wait_at_most_ack_fold_s(db_path: Path) -> None:
    clock = Clock()
    with opened(db_path, BufferSettings(), clock) as b:
        seqs = stored(b.append([new(salt=i) for i in range(3)]))
        b.ack(seqs[:1], fold=True)
        clock.advance(ACK_FOLD_S - 1)
        b.flush_acks()
        assert rows_in_file(db_path) == seqs  # not due yet
        b.ack(seqs[1:2], fold=True)  # counted from the first one held
        clock.advance(1)
        b.flush_acks()
        assert rows_in_file(db_path) == seqs[2:]
        b.flush_acks()  # nothing held: no transaction
        b.ack(seqs[2:], fold=True)
        clock.advance(ACK_FOLD_S)
        b.ack([], fold=True)  # no seqs: nothing happens, not even the due write
        assert rows_in_file(db_path) == seqs[2:]
        b.flush_acks()
        assert rows_in_file(db_path) == []


def test_a_due_fold_is_written_by_the_next_ack(db_path: Path) -> None:
    clock = Clock()
    with opened(db_path, BufferSettings(), clock) as b:
        seqs = stored(b.append([new(salt=i) for i in range(2)]))
        b.ack(seqs[:1], fold=True)
        clock.advance(ACK_FOLD_S)
        b.ack(seqs[1:], fold=True)
        assert rows_in_file(db_path) == []


def test_at_most_ack_fold_max_wait(db_path: Path) -> None:
    settings = BufferSettings(max_size=1 << 30)
    with opened(db_path, settings) as b:
        seqs: list[int] = []
        for start in range(0, ACK_FOLD_MAX, 512):
            seqs += stored(b.append([new(salt=start + i, readings=1) for i in range(512)]))
        b.ack(seqs[:-1], fold=True)
        assert len(rows_in_file(db_path)) == ACK_FOLD_MAX
        b.ack(seqs[-1:], fold=True)
        assert rows_in_file(db_path) == []


def test_room_made_by_folded_acks_is_there_for_the_next_append(db_path: Path, cost: int) -> None:
    """The delete runs first in the append's transaction: a full buffer takes the new sample
    without dropping anything."""
    settings = BufferSettings(max_size=3 * cost + cost // 2, when_full="drop_newest")
    with opened(db_path, settings) as b:
        seqs = stored(b.append([new(salt=i) for i in range(3)]))
        assert b.append([new(salt=8)]).dropped == 1  # full
        b.ack(seqs[:1], fold=True)
        result = b.append([new(salt=9)])
        assert result.dropped == 0
        assert [r.seq for r in everything(b)] == [*seqs[1:], *stored(result)]
        assert b.stats().dropped_samples == 1


def test_expire_and_drop_oldest_never_count_folded_acks_as_dropped(
    db_path: Path, cost: int
) -> None:
    clock = Clock()
    settings = BufferSettings(max_size=2 * cost + cost // 2, when_full="drop_oldest", max_age=60.0)
    with opened(db_path, settings, clock) as b:
        seqs = stored(b.append([new(salt=i) for i in range(2)]))
        b.ack(seqs[:1], fold=True)
        stored(b.append([new(salt=5)]))  # room from the folded ack, nothing dropped
        assert b.stats().dropped_samples == 0
        b.ack(seqs[1:2], fold=True)
        clock.advance(120)
        assert b.expire() == 1  # only the unacked one was too old
        assert b.stats().dropped_samples == 1


def test_a_crash_with_folded_acks_sends_them_again(db_path: Path) -> None:
    """A process that dies (os._exit, as kill -9) with folded acks: the rows are still in the
    file and fetched again at the next open — duplicates, never a loss."""
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from citygate.buffer import Buffer, NewSample
        from citygate.config import BufferSettings
        b = Buffer(Path({str(db_path)!r}), BufferSettings())
        b.open()
        r = b.append([NewSample("m", 1.0, True, 1, '"n":"x","v":' + str(i)) for i in range(3)])
        b.ack([s for s in r.seqs if s is not None], fold=True)
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    seqs = rows_in_file(db_path)
    assert len(seqs) == 3
    with opened(db_path, BufferSettings()) as again:
        assert [r.seq for r in everything(again)] == seqs
