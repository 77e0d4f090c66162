"""The buffer's contract, run against both durability modes (see agent/buffer/)."""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from citygate.buffer import (
    ROW_OVERHEAD,
    AppendResult,
    AsyncBuffer,
    Buffer,
    BufferError,
    NewSample,
    StoredSample,
    open_readonly_stats,
)
from citygate.config import BufferSettings

T0 = 1_764_079_200.0


class Clock:
    """Injected clocks (citygate.clock.Timebase): ``now`` is the wall clock, ``boot`` the boot
    clock; :meth:`advance` moves both, as time passing does; setting ``now`` alone is a jump."""

    def __init__(self, now: float = T0, boot: float = 1000.0, boot_id: str = "boot-1") -> None:
        self.now = now
        self.boot = boot
        self.boot_name = boot_id
        self.is_synced = True

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.boot += seconds

    def wall(self) -> float:
        return self.now

    def since_boot(self) -> float:
        return self.boot

    def boot_id(self) -> str:
        return self.boot_name

    def synced(self) -> bool:
        return self.is_synced


def body(readings: int, salt: int = 0) -> str:
    """A SenML body as citygate.senml writes it: records joined, outer braces left off."""
    return "},{".join(f'"n":"power_{i}","u":"W","v":{salt * 0.25 + i}' for i in range(readings))


def new(
    device: str = "meter-1",
    t: float = T0,
    readings: int = 3,
    salt: int = 0,
    synced: bool = True,
) -> NewSample:
    return NewSample(device, t, synced, readings, body(readings, salt))


@pytest.fixture(params=["normal", "full"])
def durability(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "buffer.sqlite3"


@contextmanager
def opened(path: Path, settings: BufferSettings, clock: Clock | None = None) -> Iterator[Buffer]:
    buffer = Buffer(path, settings, timebase=clock or Clock())
    buffer.open()
    try:
        yield buffer
    finally:
        buffer.close()


def stored(result: AppendResult) -> list[int]:
    """The seqs of an append that was expected to take every sample."""
    seqs = [s for s in result.seqs if s is not None]
    assert len(seqs) == len(result.seqs), f"samples were dropped: {result}"
    return seqs


def everything(buffer: Buffer) -> list[StoredSample]:
    return buffer.fetch(0, max_readings=10**9, max_samples=10**6)


@pytest.fixture(scope="session")
def cost(tmp_path_factory: pytest.TempPathFactory) -> int:
    """What one ``new()`` sample costs against max_size, as the buffer itself accounts it."""
    with opened(tmp_path_factory.mktemp("cost") / "buffer.sqlite3", BufferSettings()) as b:
        b.append([new()])
        return b.stats().backlog_bytes


# ---------------------------------------------------------------------- seq and order


def test_seq_grows_across_reopen_and_after_the_backlog_drained(
    db_path: Path, durability: str
) -> None:
    settings = BufferSettings(durability=durability)
    with opened(db_path, settings) as b:
        first = stored(b.append([new(salt=i) for i in range(5)]))
        assert first == sorted(first)
        assert len(set(first)) == 5
        b.ack(first)
        assert b.stats().backlog_samples == 0
    # Without the side file, the empty buffer itself must remember where seq stood.
    db_path.with_name(db_path.name + ".seq-hwm").unlink()
    with opened(db_path, settings) as b:
        (second,) = stored(b.append([new(salt=9)]))
        assert second > max(first)
        assert b.stats().next_seq == second + 1


def test_fetch_is_in_seq_order_after_the_cursor_and_round_trips_the_sample(
    db_path: Path, durability: str
) -> None:
    odd = NewSample(
        "bus-stop-12",
        T0 + 0.512,
        False,
        2,
        '"n":"name","vs":"Plaça Major ☃"},{"n":"t","u":"Cel","v":-4.5',
    )
    with opened(db_path, BufferSettings(durability=durability)) as b:
        seqs = stored(b.append([new("a", T0, 1), odd, new("b", T0 + 2, 4)]))
        rows = everything(b)
        assert [r.seq for r in rows] == seqs
        assert rows[1] == StoredSample(seqs[1], odd.device_id, odd.time, False, 2, odd.body)
        assert [r.seq for r in b.fetch(rows[0].seq, 100)] == seqs[1:]
        assert b.fetch(rows[-1].seq, 100) == []


def test_fetch_stops_before_max_readings_but_returns_at_least_one(
    db_path: Path, durability: str
) -> None:
    with opened(db_path, BufferSettings(durability=durability)) as b:
        seqs = stored(b.append([new(readings=n, salt=n) for n in (3, 4, 5, 2)]))
        assert [r.seq for r in b.fetch(0, 7)] == seqs[:2]
        assert [r.seq for r in b.fetch(0, 6)] == seqs[:1]
        assert [r.seq for r in b.fetch(0, 1)] == seqs[:1]  # larger than max_readings, still sent
        assert [r.seq for r in b.fetch(0, 100, max_samples=3)] == seqs[:3]
        assert [r.readings for r in b.fetch(0, 100)] == [3, 4, 5, 2]
        with pytest.raises(ValueError, match="max_samples"):
            b.fetch(0, 100, max_samples=0)


def test_ack_deletes_only_the_acked_rows(db_path: Path, durability: str) -> None:
    with opened(db_path, BufferSettings(durability=durability)) as b:
        seqs = stored(b.append([new(salt=i) for i in range(6)]))
        b.ack([seqs[1], seqs[3], seqs[3], 10**9])  # a duplicate and an unknown seq are ignored
        assert [r.seq for r in everything(b)] == [seqs[0], seqs[2], seqs[4], seqs[5]]
        assert b.stats().backlog_samples == 4
        assert b.stats().backlog_readings == 12
        b.ack([])
        assert b.stats().backlog_samples == 4
        with pytest.raises(TypeError):
            b.ack(["1"])  # type: ignore[list-item]


def test_unacked_rows_survive_reopen(db_path: Path, durability: str) -> None:
    settings = BufferSettings(durability=durability)
    with opened(db_path, settings) as b:
        b.append([new(salt=i, readings=i + 1) for i in range(4)])
        b.ack([everything(b)[0].seq])
        before, stats_before = everything(b), b.stats()
    with opened(db_path, settings) as b:
        assert everything(b) == before
        assert b.stats() == stats_before


# ---------------------------------------------------------------------- limits


def test_drop_oldest_deletes_exactly_the_oldest_and_counts_them(
    db_path: Path, durability: str, cost: int
) -> None:
    settings = BufferSettings(durability=durability, max_size=10 * cost, when_full="drop_oldest")
    offered: list[int] = []
    dropped_reported = 0
    with opened(db_path, settings) as b:
        for _ in range(7):
            result = b.append([new() for _ in range(3)])  # equal bodies: equal costs
            assert all(s is not None for s in result.seqs)  # drop_oldest always takes the new ones
            offered += [s for s in result.seqs if s is not None]
            dropped_reported += result.dropped
            assert b.stats().backlog_bytes <= settings.max_size
        present = [r.seq for r in everything(b)]
        assert present == offered[-10:]
        assert dropped_reported == len(offered) - len(present) == 11
        assert b.stats().dropped_samples == 11
    with opened(db_path, settings) as b:
        assert b.stats().dropped_samples == 11


def test_drop_newest_refuses_what_does_not_fit_and_counts_it(
    db_path: Path, durability: str, cost: int
) -> None:
    settings = BufferSettings(durability=durability, max_size=10 * cost, when_full="drop_newest")
    with opened(db_path, settings) as b:
        results = [b.append([new() for _ in range(4)]) for _ in range(4)]
        seqs = [s for r in results for s in r.seqs]
        assert [s is not None for s in seqs] == [True] * 10 + [False] * 6
        assert sum(r.dropped for r in results) == 6
        assert [r.seq for r in everything(b)] == seqs[:10]
        # Room again after an ack: new samples are taken, above every seq used before.
        b.ack([r.seq for r in everything(b)][:1])
        (after,) = stored(b.append([new()]))
        assert after > max(s for s in seqs if s is not None)
        assert b.stats().dropped_samples == 6
    with opened(db_path, settings) as b:
        assert b.stats().dropped_samples == 6


def test_a_batch_larger_than_the_buffer_keeps_its_newest_samples(
    db_path: Path, durability: str, cost: int
) -> None:
    settings = BufferSettings(durability=durability, max_size=3 * cost)
    with opened(db_path, settings) as b:
        old = b.append([new()]).seqs
        result = b.append([new() for _ in range(5)])
        assert result.seqs[:2] == [None, None]
        assert result.dropped == 3  # two of the batch and the old row
        assert [r.seq for r in everything(b)] == result.seqs[2:]
        assert old[0] not in result.seqs


@pytest.mark.parametrize("when_full", ["drop_oldest", "drop_newest"])
def test_a_sample_larger_than_max_size_is_dropped_alone(
    db_path: Path, cost: int, when_full: str
) -> None:
    with opened(db_path, BufferSettings(max_size=2 * cost, when_full=when_full)) as b:
        result = b.append([new(), new(readings=2000, salt=2), new()])
        assert result.seqs[0] is not None
        assert result.seqs[1] is None
        assert result.seqs[2] is not None
        assert result.dropped == 1
        assert b.stats().backlog_bytes == 2 * cost


def test_a_sample_exactly_max_size_fits(db_path: Path, cost: int) -> None:
    with opened(db_path, BufferSettings(max_size=cost)) as b:
        assert b.append([new()]).seqs[0] is not None
        assert b.stats().backlog_bytes == cost


def test_expire_drops_samples_buffered_longer_than_max_age(db_path: Path, durability: str) -> None:
    clock = Clock(T0)
    settings = BufferSettings(durability=durability, max_age=60.0)
    with opened(db_path, settings, clock) as b:
        first = stored(b.append([new(salt=1)]))
        clock.advance(30)
        # Age is time spent in the buffer: neither a sample's own time nor its sync state count.
        second = stored(b.append([new(t=T0 - 10**6, salt=2), new(t=12.0, synced=False, salt=3)]))
        clock.advance(20)
        third = stored(b.append([new(salt=4)]))
        assert b.expire() == 0
        clock.advance(11)
        assert b.expire() == 1
        assert [r.seq for r in everything(b)] == second + third
        clock.advance(30)
        assert b.expire() == 2
        assert [r.seq for r in everything(b)] == third
        assert b.expire() == 0
        assert b.stats().dropped_samples == 3
    assert first
    with opened(db_path, settings, clock) as b:
        assert b.stats().dropped_samples == 3


def test_free_pages_are_given_back_after_a_large_backlog_drains(db_path: Path) -> None:
    with opened(db_path, BufferSettings()) as b:
        for batch in range(40):  # a few MiB, then all acked
            b.append([new(readings=300, salt=batch * 50 + i) for i in range(50)])
        size_full = _pages(b)
        b.ack(r.seq for r in everything(b))
        b.expire()
        assert _pages(b) < size_full / 2


def _pages(buffer: Buffer) -> int:
    db = sqlite3.connect(buffer.path)
    try:
        return int(db.execute("PRAGMA page_count").fetchone()[0])
    finally:
        db.close()


# ---------------------------------------------------------------------- stats and statuses


def test_stats_follow_the_backlog(db_path: Path, durability: str) -> None:
    with opened(db_path, BufferSettings(durability=durability)) as b:
        empty = b.stats()
        assert (empty.backlog_samples, empty.backlog_readings, empty.backlog_bytes) == (0, 0, 0)
        assert empty.oldest_unsent_time is None
        b.append([new(t=T0 + 5, readings=2, salt=1), new(t=T0 + 1, readings=7, salt=2)])
        stats = b.stats()
        assert (stats.backlog_samples, stats.backlog_readings) == (2, 9)
        assert stats.oldest_unsent_time == T0 + 1
        assert stats.backlog_bytes == _bytes_in_file(db_path) + 2 * ROW_OVERHEAD
        b.ack(r.seq for r in everything(b))
        b.append([new(t=42.0, synced=False)])
        assert b.stats().oldest_unsent_time == 42.0  # only unsynced samples: the first one's time


def _bytes_in_file(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT total(length(body)) FROM sample").fetchone()[0])
    finally:
        db.close()


def test_add_dropped_is_counted_and_persisted(db_path: Path, durability: str) -> None:
    settings = BufferSettings(durability=durability)
    with opened(db_path, settings) as b:
        b.add_dropped(4)
        b.add_dropped(0)
        assert b.stats().dropped_samples == 4
        with pytest.raises(ValueError, match="negative"):
            b.add_dropped(-1)
    with opened(db_path, settings) as b:
        assert b.stats().dropped_samples == 4


def test_device_statuses_persist_and_read_only_stats_see_them(
    db_path: Path, durability: str
) -> None:
    settings = BufferSettings(durability=durability)
    clock = Clock()
    with opened(db_path, settings, clock) as b:
        b.save_device_status("meter-1", '{"state": "online"}')
        b.save_device_status("meter-2", '{"state": "offline"}')
        b.save_device_status("meter-1", '{"state": "offline"}')
        b.append([new()])
        # While the buffer is open (the agent runs): a consistent read-only view.
        clock.advance(7)
        stats, statuses = open_readonly_stats(db_path, timebase=clock)
        assert stats == b.stats()
        assert stats.oldest_unsent_age_s == 7
        assert statuses == {"meter-1": '{"state": "offline"}', "meter-2": '{"state": "offline"}'}
    with opened(db_path, settings) as b:
        assert b.device_statuses() == statuses
    files = sorted(p.name for p in db_path.parent.iterdir())
    assert open_readonly_stats(db_path)[1] == statuses
    assert sorted(p.name for p in db_path.parent.iterdir()) == files  # created no -wal/-shm


def test_read_only_stats_of_a_missing_or_foreign_file_raise(tmp_path: Path) -> None:
    with pytest.raises(BufferError, match="no buffer"):
        open_readonly_stats(tmp_path / "nothing.sqlite3")
    foreign = tmp_path / "foreign.sqlite3"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(BufferError, match="not a citygate buffer"):
        open_readonly_stats(foreign)


# ---------------------------------------------------------------------- bad input and misuse


def test_invalid_samples_are_dropped_counted_and_logged(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = new(salt=1)
    bad = [
        replace(good, time=math.nan),
        replace(good, readings=0),
        replace(good, body=""),
        replace(good, device_id=""),
        replace(good, body='"n":"x","vs":"\udc80"'),  # a lone surrogate: not encodable
    ]
    with (
        opened(db_path, BufferSettings()) as b,
        caplog.at_level(logging.WARNING, "citygate.buffer"),
    ):
        result = b.append([good, *bad])
        assert result.seqs[0] is not None
        assert result.seqs[1:] == [None] * 5
        assert result.dropped == 5
        assert b.stats().dropped_samples == 5
        assert [r.body for r in everything(b)] == [good.body]
    assert "dropped 5 invalid samples" in caplog.text


def test_a_second_open_of_the_same_file_is_refused(db_path: Path) -> None:
    with opened(db_path, BufferSettings()):
        other = Buffer(db_path, BufferSettings())
        with pytest.raises(BufferError, match="in use by another process"):
            other.open()
    with opened(db_path, BufferSettings()):  # the lock went with the first buffer
        pass


def test_calls_on_a_closed_buffer_raise(db_path: Path) -> None:
    b = Buffer(db_path, BufferSettings())
    with pytest.raises(BufferError, match="not open"):
        b.append([new()])
    b.open()
    b.close()
    b.close()
    with pytest.raises(BufferError, match="not open"):
        b.stats()


def test_bad_settings_are_rejected(db_path: Path) -> None:
    with pytest.raises(ValueError, match="when_full"):
        Buffer(db_path, BufferSettings(when_full="drop_random"))
    with pytest.raises(ValueError, match="durability"):
        Buffer(db_path, BufferSettings(durability="fast"))


def test_an_unreadable_row_is_dropped_and_counted(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with opened(db_path, BufferSettings()) as b:
        seqs = b.append([new(salt=i) for i in range(3)]).seqs
        tamper = sqlite3.connect(db_path)
        tamper.execute("UPDATE sample SET body = x'00ff' WHERE seq = ?", (seqs[1],))
        tamper.commit()
        tamper.close()
        with caplog.at_level(logging.WARNING, "citygate.buffer"):
            assert [r.seq for r in everything(b)] == [seqs[0], seqs[2]]
        assert "unreadable" in caplog.text
        assert b.stats().dropped_samples == 1
        assert b.stats().backlog_samples == 2


def test_counters_that_disagree_with_the_rows_are_repaired_at_open(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with opened(db_path, BufferSettings()) as b:
        b.append([new(salt=i) for i in range(3)])
        expected = b.stats()
    tamper = sqlite3.connect(db_path)
    tamper.execute("UPDATE meta SET backlog_samples = 99, backlog_readings = 1, next_seq = 2")
    tamper.commit()
    tamper.close()
    with (
        caplog.at_level(logging.WARNING, "citygate.buffer"),
        opened(db_path, BufferSettings()) as b,
    ):
        assert b.stats() == expected
    assert "did not match" in caplog.text


# ---------------------------------------------------------------------- corrupt files


def _corrupt_with_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 200)


def _replace_with_foreign_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE readings (t REAL, v REAL)")
    db.execute("INSERT INTO readings VALUES (1, 2)")
    db.commit()
    db.close()


def _claim_newer_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()


def _overwrite_pages(path: Path) -> None:
    """Keep the header page, trash the b-tree pages: 'database disk image is malformed'."""
    data = bytearray(path.read_bytes())
    assert len(data) > 3 * 4096
    for i in range(4096, len(data)):
        data[i] = (i * 7 + 13) % 251
    path.write_bytes(bytes(data))


def _trash_schema_page(path: Path) -> None:
    """Keep the 100-byte file header, trash the rest of page 1 (the schema's b-tree)."""
    data = bytearray(path.read_bytes())
    data[100:4096] = bytes((i * 31 + 7) % 256 for i in range(100, 4096))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_corrupt_with_garbage, "not an SQLite database"),
        (_replace_with_foreign_db, "not a citygate buffer"),
        (_claim_newer_schema, "newer citygate"),
        (_overwrite_pages, "quick_check"),
        (_trash_schema_page, "malformed"),
    ],
)
def test_a_corrupt_or_foreign_file_is_moved_aside_and_seq_continues(
    db_path: Path, durability: str, caplog: pytest.LogCaptureFixture, damage: object, reason: str
) -> None:
    settings = BufferSettings(durability=durability)
    clock = Clock(T0)
    with opened(db_path, settings, clock) as b:
        used = stored(b.append([new(salt=i, readings=50) for i in range(30)]))
    assert callable(damage)
    damage(db_path)
    damaged = db_path.read_bytes()
    with caplog.at_level(logging.WARNING, "citygate.buffer"), opened(db_path, settings, clock) as b:
        assert everything(b) == []
        (fresh,) = stored(b.append([new()]))
        assert fresh > max(used)
    aside = db_path.with_name("buffer.sqlite3.corrupt-20251125T140000Z")
    assert aside.read_bytes() == damaged
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert aside.name in warnings[0].getMessage()
    assert reason in warnings[0].getMessage()


def test_moving_aside_twice_in_one_second_keeps_both_files(db_path: Path) -> None:
    clock = Clock(T0)
    for _ in range(2):
        with opened(db_path, BufferSettings(), clock):
            pass
        _corrupt_with_garbage(db_path)
    with opened(db_path, BufferSettings(), clock):
        pass
    names = sorted(p.name for p in db_path.parent.glob("*.corrupt-*"))
    assert names == [
        "buffer.sqlite3.corrupt-20251125T140000Z",
        "buffer.sqlite3.corrupt-20251125T140000Z.1",
    ]


def test_seq_continues_when_the_buffer_file_is_lost(db_path: Path) -> None:
    with opened(db_path, BufferSettings()) as b:
        used = stored(b.append([new(salt=i) for i in range(3)]))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    with opened(db_path, BufferSettings()) as b:
        assert stored(b.append([new()]))[0] > max(used)


def test_a_lost_or_garbled_side_file_is_rewritten_from_the_buffer(db_path: Path) -> None:
    hwm = db_path.with_name(db_path.name + ".seq-hwm")
    with opened(db_path, BufferSettings()) as b:
        b.append([new()])
    hwm.write_text("garbage")
    with opened(db_path, BufferSettings()) as b:
        next_seq = b.stats().next_seq
        assert int(hwm.read_text()) > next_seq
    # A clean close shrinks the reservation to next_seq: still above every seq handed out.
    assert int(hwm.read_text()) == next_seq
    hwm.unlink()
    with opened(db_path, BufferSettings()):
        assert int(hwm.read_text()) > next_seq


# ---------------------------------------------------------------------- hostile data_dir


VICTIM_TEXT = b"root:x:0:0:a file the agent must never write\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside data_dir that a planted symlink points at."""
    path = tmp_path / "victim"
    path.write_bytes(VICTIM_TEXT)
    return path


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask of a shell where someone runs the agent by hand."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_022")
def test_files_and_directory_are_private_whatever_the_umask(db_path: Path) -> None:
    with opened(db_path, BufferSettings()) as b:
        b.append([new()])
        modes = {p.name: p.stat().st_mode & 0o777 for p in db_path.parent.iterdir()}
    assert db_path.parent.stat().st_mode & 0o777 == 0o700
    assert set(modes) >= {"buffer.sqlite3", "buffer.sqlite3.lock", "buffer.sqlite3.seq-hwm"}
    assert "buffer.sqlite3-wal" in modes  # SQLite's own: the mode of the buffer file
    assert modes == dict.fromkeys(modes, 0o600)


def test_a_symlink_planted_at_the_side_files_temporary_is_not_written_through(
    db_path: Path, victim: Path
) -> None:
    db_path.parent.mkdir(mode=0o700)
    temporary = db_path.with_name(db_path.name + ".seq-hwm.tmp")
    temporary.symlink_to(victim)
    with opened(db_path, BufferSettings()) as b:  # opening writes the side file
        stored(b.append([new()]))
    assert victim.read_bytes() == VICTIM_TEXT
    assert not temporary.is_symlink()
    hwm = db_path.with_name(db_path.name + ".seq-hwm")
    assert not hwm.is_symlink()
    assert int(hwm.read_text()) >= 2


def test_a_symlink_planted_as_the_side_file_is_neither_read_nor_written_through(
    db_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db_path.parent.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("5000000\n")  # read through the link, it would make seq jump to 5000000
    hwm = db_path.with_name(db_path.name + ".seq-hwm")
    hwm.symlink_to(victim)
    with (
        caplog.at_level(logging.WARNING, "citygate.buffer"),
        opened(db_path, BufferSettings()) as b,
    ):
        assert stored(b.append([new()])) == [1]
    assert "is a symbolic link" in caplog.text
    assert victim.read_text() == "5000000\n"
    assert not hwm.is_symlink()


@pytest.mark.parametrize("target_exists", [True, False], ids=["victim", "dangling"])
def test_a_symlink_planted_at_the_lock_is_refused(
    db_path: Path, victim: Path, target_exists: bool
) -> None:
    db_path.parent.mkdir(mode=0o700)
    if not target_exists:
        victim.unlink()
    db_path.with_name(db_path.name + ".lock").symlink_to(victim)
    with pytest.raises(BufferError, match=r"buffer\.sqlite3\.lock: it is a symbolic link"):
        Buffer(db_path, BufferSettings()).open()
    if target_exists:
        assert victim.read_bytes() == VICTIM_TEXT
    else:
        assert not victim.exists()  # O_CREAT through a dangling link would have made it
    assert not db_path.exists()


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
def test_a_symlink_planted_where_sqlite_writes_is_refused(
    db_path: Path, victim: Path, suffix: str
) -> None:
    db_path.parent.mkdir(mode=0o700)
    planted = Path(f"{db_path}{suffix}")
    planted.symlink_to(victim)
    with pytest.raises(BufferError, match="is a symbolic link, which citygate never makes"):
        Buffer(db_path, BufferSettings()).open()
    assert victim.read_bytes() == VICTIM_TEXT
    assert planted.is_symlink()  # left for the administrator to look at


def test_a_data_dir_others_can_write_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.parent.chmod(0o777)
    with pytest.raises(BufferError, match=r"writable by others \(mode 0777\); chmod 700 it"):
        Buffer(db_path, BufferSettings()).open()
    assert list(db_path.parent.iterdir()) == []


# ---------------------------------------------------------------------- disk full


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB file system (tmpfs), so SQLite meets ENOSPC for real."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the disk-full test needs root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(
        # mode=0700: a tmpfs root is 1777 by default, a data_dir the buffer refuses
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(path: Path) -> None:
    """Write ``path`` until the file system is full, to the last 512-byte block."""
    with path.open("wb", buffering=0) as f:
        for chunk in (b"\xa5" * 65536, b"\xa5" * 512):
            with pytest.raises(OSError, match="No space left"):  # noqa: PT012 - until it fails
                while True:
                    f.write(chunk)


def test_a_full_disk_drops_and_counts_then_recovers(
    small_fs: Path, durability: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = small_fs / "buffer.sqlite3"
    settings = BufferSettings(durability=durability, max_size=1 << 30)
    offered = kept = dropped = 0
    with caplog.at_level(logging.INFO, "citygate.buffer"), opened(path, settings) as b:
        first = stored(b.append([new(readings=20, salt=i) for i in range(5)]))
        ballast = small_fs / "ballast"
        _fill(ballast)
        for batch in range(400):  # the WAL may still have room; stop at the first drop
            result = b.append([new(readings=20, salt=batch * 10 + i) for i in range(10)])
            offered += 10
            kept += sum(s is not None for s in result.seqs)
            dropped += result.dropped
            if result.dropped:
                break
        assert dropped == 10, "the disk never filled up"
        assert kept + dropped == offered
        assert b.stats().dropped_samples == dropped
        b.ack(first)
        b.save_device_status("meter-1", '{"state": "online"}')
        b.add_dropped(1)
        assert b.device_statuses() == {"meter-1": '{"state": "online"}'}
        assert "disk full" in caplog.text

        ballast.unlink()
        after = stored(b.append([new(salt=1000 + i) for i in range(3)]))
        assert min(after) > max(first)
        present = {r.seq for r in everything(b)}
        assert present.isdisjoint(first)
        assert len(present) == kept + 3
        assert "writing again" in caplog.text
    with opened(path, settings) as b:
        assert b.stats().dropped_samples == dropped + 1
        assert b.device_statuses() == {"meter-1": '{"state": "online"}'}


def test_a_little_room_after_a_full_disk_is_not_tried(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One episode, one pair of log lines: 64 KiB freed by something else is not "space is
    back" (it would fill again at once); the 1 MiB RESUME_FREE_BYTES is."""
    path = small_fs / "buffer.sqlite3"
    with caplog.at_level(logging.INFO, "citygate.buffer"), opened(path, BufferSettings()) as b:
        ballast = small_fs / "ballast"
        _fill(ballast)
        for batch in range(400):
            if b.append([new(readings=20, salt=batch * 10 + i) for i in range(10)]).dropped:
                break
        else:
            raise AssertionError("the disk never filled up")
        size = ballast.stat().st_size
        os.truncate(ballast, size - 65536)
        result = b.append([new(salt=5000 + i) for i in range(3)])
        assert result.seqs == [None] * 3
        assert result.dropped == 3
        assert "writing again" not in caplog.text
        os.truncate(ballast, 0)
        assert None not in b.append([new(salt=6000 + i) for i in range(3)]).seqs
        assert caplog.text.count("disk full") == 1
        assert caplog.text.count("writing again") == 1


# ---------------------------------------------------------------------- async wrapper


async def test_async_buffer_runs_every_call_on_one_thread_off_the_loop(db_path: Path) -> None:
    threads: set[int] = set()

    class ThreadClock(Clock):
        def since_boot(self) -> float:
            threads.add(threading.get_ident())
            return self.boot

    clock = ThreadClock()
    async with AsyncBuffer(db_path, BufferSettings(max_age=60.0), timebase=clock) as b:
        result = await b.append([new(salt=1), new(salt=2)])
        rows = await b.fetch(0, 100)
        assert [r.seq for r in rows] == result.seqs
        await b.ack(r.seq for r in rows[:1])
        clock.advance(61)
        assert await b.expire() == 1  # the second one was buffered too long
        await b.save_device_status("meter-1", "{}")
        assert await b.device_statuses() == {"meter-1": "{}"}
        await b.add_dropped(2)
        assert (await b.stats()).dropped_samples == 3
        await b.expire()
    assert len(threads) == 1
    assert threading.get_ident() not in threads
    with pytest.raises(BufferError, match="not open"):
        await b.stats()


async def test_async_buffer_call_that_hangs_raises_buffer_error(db_path: Path) -> None:
    release = threading.Event()

    class StuckClock(Clock):
        stuck = False

        def since_boot(self) -> float:
            if self.stuck:
                release.wait(10)
            return self.boot

    clock = StuckClock()
    b = AsyncBuffer(db_path, BufferSettings(), timebase=clock)
    await b.open()
    clock.stuck = True
    b.call_timeout = 0.0  # the call below is stuck on the event: no need to wait for a timer
    try:
        with pytest.raises(BufferError, match="did not finish"):
            await b.expire()
    finally:
        release.set()
        b.call_timeout = 30.0
        await b.close()


async def test_async_buffer_open_failure_leaves_it_closed(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    b = AsyncBuffer(blocker / "buffer.sqlite3", BufferSettings())
    with pytest.raises(BufferError, match="cannot create"):
        await b.open()
    with pytest.raises(BufferError, match="not open"):
        await b.stats()


# ---------------------------------------------------------------------- property


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int]]:
    kinds = st.sampled_from(["append", "append", "append", "ack", "reopen", "fetch"])
    return draw(st.lists(st.tuples(kinds, st.integers(0, 7)), min_size=1, max_size=25))


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=operations(),
    when_full=st.sampled_from(["drop_oldest", "drop_newest"]),
    rows=st.integers(2, 12),
)
def test_property_the_buffer_matches_a_queue_model(
    tmp_path_factory: pytest.TempPathFactory,
    cost: int,
    ops: list[tuple[str, int]],
    when_full: str,
    rows: int,
) -> None:
    """Against a model of a bounded queue: which rows exist, exact drop counts, seq order.
    Every sample below has the same body, so the same cost."""
    path = tmp_path_factory.mktemp("prop") / "buffer.sqlite3"
    settings = BufferSettings(max_size=rows * cost, when_full=when_full)
    model: list[int] = []  # seqs present, oldest first
    highest = 0
    dropped = 0
    b = Buffer(path, settings)
    b.open()
    try:
        for kind, n in ops:
            if kind == "append":
                result = b.append([new() for _ in range(n)])
                taken = [s for s in result.seqs if s is not None]
                assert taken == sorted(taken)
                assert all(s > highest for s in taken)
                highest = max([highest, *taken])
                if when_full == "drop_newest":
                    assert result.seqs == taken + [None] * (n - len(taken))
                    assert len(model) + len(taken) <= rows
                    assert result.dropped == n - len(taken)
                else:
                    assert result.seqs == [None] * (n - len(taken)) + taken
                    keep = max(0, len(model) + len(taken) - rows)
                    assert result.dropped == keep + (n - len(taken))
                    model = model[keep:]
                model += taken
                dropped += result.dropped
            elif kind == "ack" and model:
                gone = model[:: n + 1]
                b.ack(gone)
                model = [s for s in model if s not in gone]
            elif kind == "reopen":
                b.close()
                b = Buffer(path, settings)
                b.open()
            assert [r.seq for r in everything(b)] == model
            stats = b.stats()
            assert stats.backlog_samples == len(model)
            assert stats.backlog_bytes <= settings.max_size
            assert stats.dropped_samples == dropped
            assert stats.next_seq > highest
    finally:
        b.close()
