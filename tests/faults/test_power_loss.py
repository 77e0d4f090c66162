"""Issue 3.4: the power-loss model of the buffer, measured on torn snapshots.

A writer thread appends batches without pause. At random moments the test copies the
buffer's files as a power cut would leave them: the seq side file, then the ``-wal``, then the
main file, with the WAL cut at a random byte and random junk after the cut (a torn sector). A
copy no disk could hold is taken again: one during which a checkpoint changed the main file (a
checkpoint fsyncs the WAL before it writes the main file) or the WAL restarted (SQLite fsyncs
a restarted WAL's header before the frames after it). What may be cut:

* ``durability = "full"``: the WAL is fsynced at every commit, so only what was written after
  the last commit returned can be missing: the cut falls between the WAL's size at that
  commit and its size now;
* ``"normal"``: commits are not fsynced; the WAL is fsynced only by a checkpoint, so anything
  written since may be missing: the cut falls anywhere after what the last checkpoint copied
  into the main file (until the WAL is reused, that part is on disk twice).

Each snapshot must open as a healthy buffer (never moved aside as corrupt), hold a gap-free
prefix of the seqs (transactions are atomic and the WAL is replayed in order), and a new
sample must get a seq above every seq committed before the cut (the side file is fsynced
before a seq is used, so a seq is never handed out twice even when rows are lost). With
"full" every committed sample is there; with "normal" the test measures how many were lost.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from citygate.buffer import PAGE_SIZE, Buffer, NewSample
from citygate.clock import SystemTimebase
from citygate.config import BufferSettings

READINGS = 10
WAL_HEADER = 32
WAL_FRAME_HEADER = 24
# Old rows are dropped to make room, as acks would delete them: the file stays small.
SETTINGS = {d: BufferSettings(durability=d, max_size=1 << 20) for d in ("full", "normal")}
BODY = "},{".join(f'"n":"power_{i}","u":"W","v":{i * 1.25}' for i in range(READINGS))


class AfterPowerCut(SystemTimebase):
    """The machine's clocks, but a new boot: the power came back."""

    def boot_id(self) -> str:
        return "after-the-power-cut"


@dataclass(frozen=True, slots=True)
class Committed:
    seq: int  # the highest seq whose append returned
    wal_size: int  # the WAL file's size right after that append


class Writer(threading.Thread):
    """Appends batches of 1–20 samples until stopped; publishes what has committed."""

    def __init__(self, path: Path, durability: str, seed: int) -> None:
        super().__init__(name="writer", daemon=True)
        self.buffer = Buffer(path, SETTINGS[durability])
        self.wal = Path(f"{path}-wal")
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.committed = Committed(0, 0)
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.buffer.open()
            try:
                self.ready.set()
                while not self.stopping.is_set():
                    batch = [
                        NewSample(f"meter-{i % 3}", time.time(), True, READINGS, BODY)
                        for i in range(self.rng.randint(1, 20))
                    ]
                    seqs = self.buffer.append(batch).seqs
                    assert None not in seqs
                    size = self.wal.stat().st_size
                    with self.lock:
                        self.committed = Committed(max(s for s in seqs if s is not None), size)
            finally:
                self.buffer.close()
        except BaseException as e:  # reported by the test
            self.error = e
            self.ready.set()


def _checkpointed_wal_bytes(source: Path) -> int:
    """How much of the WAL a checkpoint has fsynced (before it writes the main file): the
    wal-index (``-shm``, native order) holds ``nBackfill`` at offset 96 and
    ``nBackfillAttempted`` at 128, set once the WAL is synced. A power cut cannot take it back."""
    with open(f"{source}-shm", "rb") as shm:
        header = shm.read(132)
    (backfilled,) = struct.unpack_from("=I", header, 96)
    (attempted,) = struct.unpack_from("=I", header, 128)
    frames = max(backfilled, attempted)
    return 0 if frames == 0 else WAL_HEADER + frames * (WAL_FRAME_HEADER + PAGE_SIZE)


def torn_snapshot(
    source: Path, target: Path, durability: str, committed: Committed, rng: random.Random
) -> tuple[int, int]:
    """Copy the buffer files as a power cut could leave them; returns the WAL's cut offset
    and the lowest offset it could have been cut at."""
    target.parent.mkdir(parents=True)
    hwm = source.with_name(source.name + ".seq-hwm")
    for _ in range(1000):
        main_before = source.read_bytes()
        synced_wal = _checkpointed_wal_bytes(source)
        shutil.copyfile(hwm, target.with_name(target.name + ".seq-hwm"))
        wal = Path(f"{source}-wal").read_bytes()
        header_after = Path(f"{source}-wal").read_bytes()[:WAL_HEADER]
        main = source.read_bytes()
        # A checkpoint ran meanwhile (it fsyncs the WAL before it writes the main file), or
        # the WAL restarted during the copy (SQLite fsyncs the new header before any frame
        # after it): no disk can hold what was copied. Take another.
        if main == main_before and wal[:WAL_HEADER] == header_after:
            break
    else:
        raise AssertionError("the main file changed during every copy")
    low = committed.wal_size if durability == "full" else synced_wal
    low = min(low, len(wal))
    cut = rng.randint(low, len(wal))
    junk = rng.randbytes(rng.randint(0, 4096)) if cut < len(wal) else b""
    Path(f"{target}-wal").write_bytes(wal[:cut] + junk)
    target.write_bytes(main)
    return cut, low


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_torn_snapshots_open_healthy_and_lose_only_what_the_mode_allows(
    tmp_path: Path, durability: str
) -> None:
    torn_snapshots(tmp_path, durability, snapshots=15)


@pytest.mark.soak
@pytest.mark.parametrize("durability", ["full", "normal"])
def test_400_torn_snapshots(tmp_path: Path, durability: str) -> None:
    torn_snapshots(tmp_path, durability, snapshots=400)


def torn_snapshots(tmp_path: Path, durability: str, snapshots: int) -> None:
    """Take ``snapshots`` torn copies while a writer runs; check and measure each."""
    seed = int(os.environ.get("CITYGATE_FAULT_SEED", time.time_ns() % 2**32))
    why = f"CITYGATE_FAULT_SEED={seed}"
    rng = random.Random(seed)
    path = tmp_path / "live" / "buffer.sqlite3"
    writer = Writer(path, durability, seed)
    writer.start()
    assert writer.ready.wait(30)
    losses: list[int] = []
    try:
        for n in range(snapshots):
            assert writer.error is None, writer.error
            while writer.committed.seq == 0 or rng.random() < 0.5:
                time.sleep(rng.uniform(0.0, 0.01))  # a random moment mid-write
            with writer.lock:
                committed = writer.committed
            target = tmp_path / f"snapshot-{n}" / "buffer.sqlite3"
            cut, low = torn_snapshot(path, target, durability, committed, rng)

            snapshot = Buffer(
                target,
                SETTINGS[durability],
                timebase=AfterPowerCut(),
            )
            snapshot.open()
            try:
                seqs = [s.seq for s in snapshot.fetch(0, 10**9, 10**7)]
                new = NewSample("meter-x", time.time(), True, 1, '"v":1')
                (fresh,) = snapshot.append([new]).seqs
            finally:
                snapshot.close()
            where = f"snapshot {n}, WAL cut at {cut} (>= {low}), committed {committed}; {why}"
            assert not list(target.parent.glob("*.corrupt-*")), where
            assert seqs == list(range(seqs[0], seqs[-1] + 1)) if seqs else True, where  # no holes
            assert fresh is not None
            assert fresh > committed.seq, where  # seq never repeats
            last = seqs[-1] if seqs else 0
            if durability == "full":
                assert last >= committed.seq, where
            losses.append(max(0, committed.seq - last))
            shutil.rmtree(target.parent)
    finally:
        writer.stopping.set()
        writer.join(30)
    assert writer.error is None, writer.error
    print(
        f"\n{durability}: {len(losses)} torn snapshots; committed samples lost: "
        f"max {max(losses)}, mean {sum(losses) / len(losses):.0f}, "
        f"none lost in {losses.count(0)}"
    )


class Boot(SystemTimebase):
    """The machine's clocks under a boot id the test chooses."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def boot_id(self) -> str:
        return self.name


def _copy_files(source: Path, target: Path) -> None:
    """The files as they are on disk right now (what a power cut leaves, at best)."""
    target.parent.mkdir(parents=True)
    for suffix in ("", "-wal", ".seq-hwm"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")


@pytest.mark.parametrize("clean_close", [True, False])
def test_after_a_reboot_seq_skips_what_a_power_cut_may_have_taken_unless_closed_cleanly(
    tmp_path: Path, clean_close: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "citygate.buffer")
    settings = BufferSettings(durability="normal")
    path = tmp_path / "live" / "buffer.sqlite3"
    before = Buffer(path, settings, timebase=Boot("boot-1"))
    before.open()
    try:
        used = before.append([NewSample("meter-1", time.time(), True, 1, '"v":1')] * 5).seqs
        if clean_close:
            before.close()
        copy = tmp_path / "after" / "buffer.sqlite3"
        _copy_files(path, copy)  # still open (not clean): the power went off mid-run
    finally:
        before.close()
    same_boot = tmp_path / "same" / "buffer.sqlite3"
    _copy_files(copy, same_boot)

    for target, boot, jumps in ((copy, "boot-2", not clean_close), (same_boot, "boot-1", False)):
        after = Buffer(target, settings, timebase=Boot(boot))
        after.open()
        try:
            (fresh,) = after.append([NewSample("meter-1", time.time(), True, 1, '"v":2')]).seqs
        finally:
            after.close()
        assert fresh is not None
        assert all(s is not None and fresh > s for s in used)
        if jumps:  # above the fsynced reservation: every seq that may have been published
            assert fresh > max(s for s in used if s is not None) + 1000
        else:
            assert fresh == max(s for s in used if s is not None) + 1
    reboot_lines = [r for r in caplog.records if "first start since a reboot" in r.getMessage()]
    assert len(reboot_lines) == (0 if clean_close else 1)
