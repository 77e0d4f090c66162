"""Issue 3 figure 8: buffered samples/s and readings/s with durability normal and full,
and syncs per sample, from :func:`citygate.bench_buffer.bench_buffer` on the real disk; then
the fsyncs the running agent makes per sample (strace, 20 meters), where strace exists."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from citygate.app import BUFFER_FILE
from citygate.bench_buffer import bench_buffer
from citygate.buffer import open_readonly_stats
from tests.bench import rig
from tests.bench.procs import filesystem_of, scratch
from tests.bench.report import PartResult
from tests.support.broker import Mosquitto
from tests.support.processes import SimProcess

READINGS_PER_SAMPLE = 100
TARGETS = {"normal": 50_000.0, "full": 5_000.0}  # readings/s


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
