"""Throughput of the SQLite buffer, for ``make bench`` (and ``python -m citygate.bench_buffer``).

Syncs per sample: SQLite offers no fsync counter and the stdlib cannot hook one (no VFS
shims), so the figure is derived from what WAL mode documents and what the run measured:
``synchronous=FULL`` fsyncs the WAL once per commit, ``NORMAL`` never on commit; a
checkpoint fsyncs the WAL and then the database file (two), and runs once per
``wal_autocheckpoint`` pages written. Pages written come from the bytes this process wrote
(``/proc/self/io`` ``wchar``: every page goes out as a WAL frame and again as its checkpoint
copy); commits are counted exactly (one per append). ``write_bytes`` (what reached the block
layer) is reported as measured.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import struct
import sys
import time
from pathlib import Path
from typing import Any

from citygate.buffer import PAGE_SIZE, Buffer, NewSample
from citygate.config import BufferSettings
from citygate.model import Reading
from citygate.senml import encode_body

_WAL_FRAME_HEADER = 24
_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default, which the buffer keeps


def _float32(x: float) -> float:
    """The value a meter's float32 register holds: what drivers hand over, digits and all."""
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def meter_body(readings: int, rng: random.Random) -> str:
    """A SenML body like a three-phase meter's: float32 values around plausible levels."""
    kinds = (
        ("voltage_l", "V", 230.0, 3.0),
        ("current_l", "A", 8.0, 4.0),
        ("power_l", "W", 1800.0, 900.0),
    )
    records = []
    for i in range(readings):
        name, unit, level, spread = kinds[i % len(kinds)]
        records.append(Reading(f"{name}{i}", unit, _float32(level + rng.uniform(-spread, spread))))
    return encode_body(records)


def _proc_io() -> dict[str, int]:
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in lines)}


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * 4096


def _used_bytes(path: Path) -> int:
    """Bytes of the database's pages in use (the WAL included: read through SQLite)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        pages = (
            db.execute("PRAGMA page_count").fetchone()[0]
            - db.execute("PRAGMA freelist_count").fetchone()[0]
        )
        return int(pages) * PAGE_SIZE
    finally:
        db.close()


def bench_buffer(
    path: Path, durability: str, samples: int, readings_per_sample: int, *, batch: int = 50
) -> dict[str, Any]:
    """Append ``samples`` in batches of ``batch`` to a new buffer at ``path``, then drain it
    with fetch + ack; returns the figures (see the module docstring for syncs). The files
    stay at ``path`` for the caller to remove."""
    if path.exists():
        raise ValueError(f"{path} exists: the benchmark needs a new file")
    rng = random.Random(1842)
    bodies = [meter_body(readings_per_sample, rng) for _ in range(64)]
    settings = BufferSettings(max_size=1 << 40, durability=durability)
    buffer = Buffer(path, settings)
    buffer.open()
    try:
        io_before = _proc_io()
        commits = 0
        t0 = time.perf_counter()
        for start in range(0, samples, batch):
            n = min(batch, samples - start)
            buffer.append(
                [
                    NewSample(
                        f"meter-{(start + i) % 16}",
                        1.7e9 + start + i,
                        True,
                        readings_per_sample,
                        bodies[(start + i) % 64],
                    )
                    for i in range(n)
                ]
            )
            commits += 1
        append_s = time.perf_counter() - t0
        io_after = _proc_io()
        stats = buffer.stats()
        used_bytes = _used_bytes(path)
        wal_bytes = Path(f"{path}-wal").stat().st_size
        rss_full = _rss_bytes()

        t0 = time.perf_counter()
        cursor = 0
        while rows := buffer.fetch(cursor, 10_000):
            cursor = rows[-1].seq
            buffer.ack(row.seq for row in rows)
        drain_s = time.perf_counter() - t0
        rss_drained = _rss_bytes()
    finally:
        buffer.close()

    readings = samples * readings_per_sample
    wchar = io_after.get("wchar", 0) - io_before.get("wchar", 0)
    # Each page goes out twice: as a WAL frame, then copied into the file by a checkpoint.
    pages_written = wchar / (2 * PAGE_SIZE + _WAL_FRAME_HEADER)
    checkpoints = pages_written / _AUTOCHECKPOINT_PAGES
    syncs = commits * (1 if durability == "full" else 0) + 2 * checkpoints
    return {
        "durability": durability,
        "synchronous": "FULL" if durability == "full" else "NORMAL",
        "samples": samples,
        "readings_per_sample": readings_per_sample,
        "batch": batch,
        "append_samples_per_s": round(samples / append_s),
        "append_readings_per_s": round(readings / append_s),
        "commits_per_sample": round(commits / samples, 4),
        "fsyncs_per_sample_estimated": round(syncs / samples, 4),
        "written_bytes_per_sample": round(wchar / samples) if io_before else None,
        "block_write_bytes_per_sample": (
            round((io_after["write_bytes"] - io_before["write_bytes"]) / samples)
            if io_before
            else None
        ),
        "raw_body_bytes_per_sample": round(sum(len(b.encode()) for b in bodies) / len(bodies)),
        "accounted_bytes_per_sample": round(stats.backlog_bytes / samples),
        "used_file_bytes_per_accounted_byte": round(used_bytes / stats.backlog_bytes, 3),
        "wal_bytes": wal_bytes,
        "drain_readings_per_s": round(readings / drain_s),
        "rss_full_mib": round(rss_full / 2**20, 1),
        "rss_drained_mib": round(rss_drained / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the figures for normal and full durability as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--readings", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--dir", type=Path, default=Path("var/bench"))
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    for durability in ("normal", "full"):
        path = args.dir / f"bench-{durability}-{time.time_ns()}.sqlite3"
        try:
            figures = bench_buffer(path, durability, args.samples, args.readings, batch=args.batch)
        finally:
            for leftover in args.dir.glob(path.name + "*"):
                leftover.unlink()
        print(json.dumps(figures), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
