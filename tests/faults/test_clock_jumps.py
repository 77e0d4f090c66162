"""Issue 3.7: wall-clock jumps never reorder, renumber or drop samples; unsynced samples say so.

The buffer judges ages on its timeline (agent/buffer/timeline.py, "Ages"); these tests drive it with
injected clocks (wall, boot clock, boot id, NTP state), then end to end with `citygate run`
whose wall clock is shifted by an offset file (tests/support/seamed_agent.py, the Agent's
``timebase`` seam).
"""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from citygate.buffer import SCHEMA_VERSION, Buffer, NewSample, open_readonly_stats
from citygate.config import BufferSettings
from tests.faults.store_harness import Ledger, counting_devices, plugin_env, status, write_config
from tests.support.broker import Mosquitto, Subscriber, free_port
from tests.support.processes import AgentProcess
from tests.support.seamed_agent import OffsetTimebase

T0 = 1_764_079_200.0
DAY = 86400.0
MAX_AGE = 30 * DAY


class Clocks:
    """Injected clocks: :meth:`advance` is time passing; setting ``wall`` alone is a jump."""

    def __init__(self, wall: float = T0, boot: float = 500.0, boot_id: str = "boot-1") -> None:
        self.wall_now = wall
        self.boot_now = boot
        self.boot_name = boot_id
        self.ntp = True

    def advance(self, seconds: float) -> None:
        self.wall_now += seconds
        self.boot_now += seconds

    def reboot(self, downtime: float, boot_id: str) -> None:
        self.wall_now += downtime
        self.boot_now = 20.0
        self.boot_name = boot_id

    def wall(self) -> float:
        return self.wall_now

    def since_boot(self) -> float:
        return self.boot_now

    def boot_id(self) -> str:
        return self.boot_name

    def synced(self) -> bool:
        return self.ntp


@contextmanager
def opened(path: Path, clocks: Clocks) -> Iterator[Buffer]:
    buffer = Buffer(path, BufferSettings(max_age=MAX_AGE), timebase=clocks)
    buffer.open()
    try:
        yield buffer
    finally:
        buffer.close()


def take(buffer: Buffer, clocks: Clocks, n: int = 3, device: str = "meter-1") -> list[int]:
    """Append n samples stamped with the wall clock now (as the supervisor stamps them)."""
    samples = [
        NewSample(device, clocks.wall(), clocks.synced(), 1, f'"n":"count","u":"W","v":{i}')
        for i in range(n)
    ]
    seqs = buffer.append(samples).seqs
    assert None not in seqs
    return [s for s in seqs if s is not None]


def rows(buffer: Buffer) -> list[tuple[int, float]]:
    return [(r.seq, r.time) for r in buffer.fetch(0, 10**9, 10**6)]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "buffer.sqlite3"


@pytest.mark.parametrize("jump", [40 * DAY, -40 * DAY, -(T0 - 3600)])
def test_a_wall_clock_jump_while_running_keeps_order_numbers_and_samples(
    db_path: Path, jump: float
) -> None:
    clocks = Clocks()
    with opened(db_path, clocks) as b:
        before = take(b, clocks)
        clocks.advance(10)
        clocks.wall_now += jump
        clocks.advance(10)
        after = take(b, clocks)
        assert after == list(range(before[-1] + 1, before[-1] + 4))  # numbering goes on
        assert b.expire() == 0  # nothing is older than max_age for having been stamped so
        assert [seq for seq, _ in rows(b)] == before + after  # sent in seq order, as taken
        assert b.stats().oldest_unsent_age_s == 20
        stats, _ = open_readonly_stats(db_path, timebase=clocks)
        assert stats.oldest_unsent_age_s == 20
        # Real time, on the boot clock, still ages them.
        clocks.advance(MAX_AGE - 15)
        assert b.expire() == 3
        clocks.advance(20)
        assert b.expire() == 3
        assert b.stats().dropped_samples == 6


def test_unsynced_samples_step_to_synced_without_expiring(db_path: Path) -> None:
    clocks = Clocks(wall=1000.0)  # a gateway without RTC boots in 1970
    clocks.ntp = False
    with opened(db_path, clocks) as b:
        early = take(b, clocks)
        clocks.advance(60)
        clocks.wall_now = T0  # NTP answers: the clock steps forward by 56 years
        clocks.ntp = True
        late = take(b, clocks)
        assert b.expire() == 0
        stored = b.fetch(0, 10**9)
        assert [r.seq for r in stored] == early + late
        assert [r.clock_synced for r in stored] == [False] * 3 + [True] * 3
        assert b.stats().oldest_unsent_age_s == 60


def test_restart_on_the_same_boot_ages_by_the_boot_clock_whatever_the_wall_did(
    db_path: Path,
) -> None:
    clocks = Clocks()
    with opened(db_path, clocks) as b:
        first = take(b, clocks)
    clocks.advance(100)
    clocks.wall_now += 40 * DAY  # set forward while the agent was stopped
    with opened(db_path, clocks) as b:
        assert b.expire() == 0
        assert b.stats().oldest_unsent_age_s == 100
        second = take(b, clocks)
    clocks.advance(100)
    clocks.wall_now -= 80 * DAY  # and back
    with opened(db_path, clocks) as b:
        assert b.stats().oldest_unsent_age_s == 200
        assert b.expire() == 0
        assert [seq for seq, _ in rows(b)] == first + second


@pytest.mark.parametrize(
    ("wall_step", "synced_after", "expected_age"),
    [
        (3600.0, True, 3600.0),  # both clocks synced: the downtime counts
        (-3600.0, True, 0.0),  # a wall clock set back never makes time run backwards
        (40 * DAY, False, 0.0),  # unsynced after the reboot: downtime unknown, counts as 0
    ],
)
def test_after_a_reboot_the_downtime_counts_only_when_both_wall_clocks_were_synced(
    db_path: Path, wall_step: float, synced_after: bool, expected_age: float
) -> None:
    clocks = Clocks()
    with opened(db_path, clocks) as b:
        take(b, clocks)
    clocks.reboot(wall_step, "boot-2")
    clocks.ntp = synced_after
    with opened(db_path, clocks) as b:
        assert b.stats().oldest_unsent_age_s == expected_age
        assert b.expire() == 0


def test_a_version_1_buffer_is_upgraded_and_keeps_its_samples(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.executescript(
        """
        PRAGMA page_size = 4096;
        PRAGMA auto_vacuum = INCREMENTAL;
        PRAGMA journal_mode = WAL;
        CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), next_seq INTEGER NOT NULL,
            dropped_samples INTEGER NOT NULL, backlog_samples INTEGER NOT NULL,
            backlog_readings INTEGER NOT NULL, backlog_body_bytes INTEGER NOT NULL);
        CREATE TABLE sample (seq INTEGER PRIMARY KEY, time REAL NOT NULL,
            clock_synced INTEGER NOT NULL, readings INTEGER NOT NULL, device_id TEXT NOT NULL,
            body BLOB NOT NULL);
        CREATE INDEX sample_synced_time ON sample (time) WHERE clock_synced = 1;
        CREATE TABLE device_status (device_id TEXT PRIMARY KEY, status TEXT NOT NULL)
            WITHOUT ROWID;
        PRAGMA application_id = 1128756322;
        PRAGMA user_version = 1;
        """
    )
    body = zlib.compress(b'"n":"count","u":"W","v":1')
    db.execute("INSERT INTO sample VALUES (7, ?, 1, 1, 'meter-1', ?)", (T0 - 100, body))
    db.execute("INSERT INTO sample VALUES (8, 12.0, 0, 1, 'meter-1', ?)", (body,))
    db.execute("INSERT INTO meta VALUES (1, 9, 2, 2, 2, ?)", (2 * len(body),))
    db.close()
    clocks = Clocks()
    with opened(db_path, clocks) as b:
        assert [seq for seq, _ in rows(b)] == [7, 8]
        assert b.stats().dropped_samples == 2
        assert take(b, clocks, 1) == [9]
    check = sqlite3.connect(db_path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()


def test_end_to_end_clock_jumps_and_unsynced_samples(tmp_path: Path) -> None:
    """`citygate run` restarted across wall-clock jumps of +40 and -80 days, first unsynced."""
    offset_file = tmp_path / "clock-offset"
    offset_file.write_text("0")
    base_env = plugin_env(tmp_path)
    port = free_port()  # the broker is down until the last run
    data_dir = tmp_path / "var"
    limit = 20
    devices = counting_devices(2, interval="5ms", limit=limit)
    config = write_config(
        tmp_path / "gateway.toml", broker_port=port, data_dir=data_dir, devices=devices
    )

    backlog = 0
    for offset, clock in (("0", "unsynced"), (str(40 * DAY), "synced"), (str(-40 * DAY), "synced")):
        offset_file.write_text(offset)
        env = {**base_env, "CITYGATE_CLOCK": clock}
        agent = AgentProcess(config, env, clock_offset_file=offset_file)
        backlog += 2 * limit
        try:
            agent.wait_for_log("running")
            for _ in range(300):
                report = status(config, env)
                if report["backlog_samples"] == backlog:
                    break
            else:
                raise AssertionError(f"{report}\n{agent.log}")
        finally:
            assert agent.stop() == 0, agent.log
        assert report["dropped_samples"] == 0, agent.log  # the +40 days expired nothing
        assert "older than buffer.max_age" not in agent.log

    broker = Mosquitto(tmp_path / "mosquitto", port=port)
    broker.start()
    sub = Subscriber(port).start()
    for entry in devices:
        entry["enabled"] = False
    write_config(config, broker_port=port, data_dir=data_dir, devices=devices)
    drainer = AgentProcess(config, base_env, clock_offset_file=offset_file)
    try:
        sub.wait_for(lambda: len(Ledger(sub).by_seq) >= backlog, timeout=30)
    finally:
        assert drainer.stop() == 0, drainer.log
        sub.stop()
        broker.stop()
    ledger = Ledger(sub)
    assert ledger.conflicts == []
    assert ledger.seqs == list(range(1, backlog + 1))
    for device in ("meter-1", "meter-2"):
        assert ledger.order_by_device[device] == sorted(ledger.order_by_device[device])
    clocks = [ledger.by_seq[seq].clock for seq in ledger.seqs]
    assert clocks[: 2 * limit] == ["unsynced"] * (2 * limit)
    assert clocks[2 * limit :] == [None] * (backlog - 2 * limit)
    raw = [json.loads(m.payload) for m in sub.snapshot("/data")]
    assert all("clock" not in r or r["clock"] == "unsynced" for pack in raw for r in pack)


def test_the_offset_file_shifts_the_wall_clock_and_only_it(tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    timebase = OffsetTimebase(offset)
    assert abs(timebase.wall() - time.time()) < 60  # no file yet: no offset
    offset.write_text(str(40 * DAY))
    boot = timebase.since_boot()
    assert abs(timebase.wall() - time.time() - 40 * DAY) < 60
    assert timebase.since_boot() - boot < 60  # the boot clock does not jump
    offset.write_text("not a number")
    assert abs(timebase.wall() - time.time()) < 60
    assert timebase.boot_id() == timebase.boot_id() != ""
