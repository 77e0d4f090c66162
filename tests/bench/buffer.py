"""Issue 3 figure 8: buffered samples/s and readings/s with durability normal and full,
and syncs per sample, from :func:`bench_buffer` on the real disk; then the fsyncs the running
agent makes per sample (strace, 20 meters), where strace exists.

``python -m tests.bench.buffer [--readings N ...]`` prints :func:`bench_buffer`'s figures
alone, as JSON lines (how ``ROW_OVERHEAD`` in agent/buffer/store.py was measured).

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
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from citygate.app import BUFFER_FILE
from citygate.buffer import PAGE_SIZE, Buffer, NewSample, open_readonly_stats
from citygate.config import BufferSettings
from citygate.model import Reading
from citygate.senml import encode_body
from tests.bench import rig
from tests.bench.procs import filesystem_of, scratch
from tests.bench.report import PartResult
from tests.support.broker import Mosquitto
from tests.support.processes import SimProcess

READINGS_PER_SAMPLE = 100
TARGETS = {"normal": 50_000.0, "full": 5_000.0}  # readings/s
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


def run(quick: bool) -> PartResult:
    result = PartResult("buffer")
    # (durability, samples, samples per commit): the writer commits what is queued, from one
    # sample (a quiet gateway) up to 500; batch 1 is the worst case for `full`.
    cases = [
        ("normal", 5_000 if quick else 20_000, 50),
        ("full", 2_000 if quick else 5_000, 50),
        ("full", 500 if quick else 1_000, 1),
    ]
    with scratch("buffer") as workdir:
        result.details["filesystem"] = filesystem_of(workdir)
        for durability, samples, batch in cases:
            path = workdir / f"bench-{durability}-{batch}.sqlite3"
            figures: dict[str, Any] = bench_buffer(
                path, durability, samples, READINGS_PER_SAMPLE, batch=batch
            )
            result.details[f"{durability}_batch{batch}"] = figures
            label = f"{durability}, {batch}/commit"
            result.add(
                f"buffer append readings/s, {label}",
                figures["append_readings_per_s"],
                "readings/s",
                at_least=TARGETS[durability],
                note=(
                    f"{figures['append_samples_per_s']:,} samples/s, "
                    f"{figures['commits_per_sample']} commits/sample, "
                    f"~{figures['fsyncs_per_sample_estimated']} fsyncs/sample (estimated), "
                    f"{figures['block_write_bytes_per_sample']} B written/sample"
                ),
            )
            result.add(
                f"buffer append samples/s, {label}", figures["append_samples_per_s"], "samples/s"
            )
            result.add(
                f"buffer fsyncs per sample (est.), {label}",
                figures["fsyncs_per_sample_estimated"],
                "fsyncs",
            )
        strace = shutil.which("strace")
        if strace is None:
            result.details["agent_fsyncs"] = "strace not installed: not measured"
        else:
            measured = agent_fsyncs(workdir, strace, window_s=4 if quick else 5)
            result.details["agent_fsyncs"] = measured
            for durability, figures in measured.items():
                result.add(
                    f"agent fsyncs per sample (strace), {durability}",
                    figures["fsyncs_per_sample"],
                    "fsyncs",
                    note=(
                        f"{figures['fsyncs']} fsync/fdatasync for {figures['samples']} samples "
                        f"in {figures['window_s']} s, 20 meters at 10 Hz"
                    ),
                )
    if result.details["filesystem"] in ("tmpfs", "ramfs"):
        result.figures[0].note += " (WARNING: var/bench is on tmpfs: figures are not the disk's)"
    return result


def agent_fsyncs(workdir: Path, strace: str, window_s: float) -> dict[str, Any]:
    """fsync + fdatasync calls of ``citygate run`` (all threads) per buffered sample, with
    durability normal and full, while it polls 20 meters into a live broker."""
    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    sim = SimProcess(dict.fromkeys(range(1, rig.METERS + 1), f"generic{rig.VALUES}"))
    out: dict[str, Any] = {}
    try:
        profile = rig.generic_profile(workdir / f"generic{rig.VALUES}.toml")
        for durability in ("normal", "full"):
            data_dir = workdir / f"agent-{durability}"
            config = rig.gateway_config(
                workdir / f"agent-{durability}.toml",
                broker_port=broker.port,
                sim_port=sim.port,
                data_dir=data_dir,
                profile=profile,
                durability=durability,
            )
            spawned = rig.spawn_agent(config)
            try:
                rig.wait_for_line(spawned, "connected", timeout=30)
                time.sleep(2)
                out[durability] = _count_fsyncs(
                    strace, spawned.pid, data_dir / BUFFER_FILE, window_s
                )
            finally:
                rig.stop_agent(spawned)
    finally:
        sim.stop()
        broker.stop()
    return out


def _count_fsyncs(strace: str, pid: int, db: Path, window_s: float) -> dict[str, Any]:
    summary = db.parent / "strace.txt"
    command = [strace, "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", "-o", str(summary)]
    before = open_readonly_stats(db)[0].next_seq
    t0 = time.monotonic()
    tracer = subprocess.Popen(
        [*command, "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        time.sleep(window_s)
    finally:
        tracer.send_signal(signal.SIGINT)  # detach; strace writes the summary
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(5)
    after = open_readonly_stats(db)[0].next_seq
    elapsed = time.monotonic() - t0
    calls = 0
    for line in summary.read_text().splitlines():
        fields = line.split()
        if fields and fields[-1] in ("fsync", "fdatasync"):
            # "% time, seconds, usecs/call, calls, [errors,] syscall"
            calls += int(fields[3])
    samples = after - before
    return {
        "window_s": round(elapsed, 2),
        "samples": samples,
        "fsyncs": calls,
        "fsyncs_per_sample": round(calls / samples, 3) if samples else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Print :func:`bench_buffer`'s figures for normal and full durability as JSON lines."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.buffer", description="figures of bench_buffer, as JSON lines"
    )
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
