"""Issue 2 figure 6: the pipeline's ceiling on one core.

The agent runs with synthetic devices (no Modbus) in a child process pinned to one CPU;
Mosquitto and the counting subscriber (this process) run on the other CPUs. The figure
is what reaches the subscriber while the devices offer far more than the agent can take
(1,000,000 readings/s); lower offered rates show what it sustains when not overrun.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.counter import ReadingCounter, metrics_at, readings
from tests.bench.procs import ROOT, cpu_seconds, mib, scratch, status_kib
from tests.bench.report import PartResult
from tests.support.broker import Mosquitto

CEILING_TARGET = 50_000.0
VALUES = 100
INTERVAL_S = 0.01
OVERLOAD_DEVICES = 100  # 100 × 100 / 0.01 s = 1,000,000 readings/s offered
AGENT_CPU = 0


def run(quick: bool, profile: Path | None = None) -> PartResult:
    result = PartResult("pipeline")
    levels = [40, OVERLOAD_DEVICES] if quick else [20, 40, OVERLOAD_DEVICES]
    warmup_s, window_s = (2.0, 4.0) if quick else (3.0, 8.0)
    runs: list[dict[str, Any]] = []
    with scratch("pipeline") as workdir:
        broker = Mosquitto(workdir / "mosquitto")
        broker.start()
        own_affinity = os.sched_getaffinity(0)
        counter: ReadingCounter | None = None
        try:
            pinned = _pin_others(broker)
            counter = ReadingCounter(broker.port).start()
            for devices in levels:
                runs.append(
                    measure(
                        workdir / f"devices-{devices}",
                        broker,
                        counter,
                        devices,
                        pinned=pinned,
                        warmup_s=warmup_s,
                        window_s=window_s,
                        profile=profile if devices == OVERLOAD_DEVICES else None,
                    )
                )
        finally:
            if counter is not None:
                counter.stop()
            broker.stop()
            os.sched_setaffinity(0, own_affinity)
    result.details["runs"] = runs
    overload = runs[-1]
    result.add(
        "pipeline ceiling, one core, overloaded",
        overload["delivered_readings_per_s"],
        "readings/s",
        at_least=CEILING_TARGET,
        note=(
            f"offered {overload['offered_readings_per_s']:,.0f}/s by {OVERLOAD_DEVICES} synthetic "
            f"devices: the agent read {overload['agent_read_readings_per_s']:,}/s, published "
            f"{overload['agent_published_readings_per_s']:,}/s, backlog grew to "
            f"{overload['backlog_samples_at_end']:,} samples; "
            f"{overload['agent_cpu_share']:.0%} of its core"
            + ("" if pinned else "; NOT pinned: fewer than 2 CPUs")
        ),
    )
    best = max(runs, key=lambda r: r["delivered_readings_per_s"])
    result.add(
        "pipeline, one core, best of the offered rates",
        best["delivered_readings_per_s"],
        "readings/s",
        at_least=CEILING_TARGET,
        note="delivered/offered readings/s: "
        + ", ".join(
            f"{r['delivered_readings_per_s']:,}/{r['offered_readings_per_s']:,.0f}" for r in runs
        )
        + f"; {best['cpu_us_per_reading']} µs CPU per reading at the best",
    )
    return result


def _pin_others(broker: Mosquitto) -> bool:
    """Keep Mosquitto and this process (the subscriber) off the agent's CPU."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2 or AGENT_CPU not in cpus:
        return False
    others = cpus - {AGENT_CPU}
    assert broker.process is not None
    os.sched_setaffinity(broker.process.pid, others)
    os.sched_setaffinity(0, others)  # threads started from now on inherit it
    return True


def measure(
    data_dir: Path,
    broker: Mosquitto,
    counter: ReadingCounter,
    devices: int,
    *,
    pinned: bool,
    warmup_s: float,
    window_s: float,
    profile: Path | None,
) -> dict[str, Any]:
    """One child agent with ``devices`` synthetic devices: delivered readings/s over a window."""
    counter.reset()
    data_dir.mkdir()
    log_path = data_dir / "agent.log"
    command = [
        sys.executable,
        "-m",
        "tests.bench.ceiling_agent",
        "--data-dir",
        str(data_dir),
        "--broker-port",
        str(broker.port),
        "--devices",
        str(devices),
        "--values",
        str(VALUES),
        "--interval",
        str(INTERVAL_S),
    ]
    if pinned:
        command += ["--cpu", str(AGENT_CPU)]
    if profile is not None:
        command += ["--profile", str(profile)]
    with log_path.open("wb") as log_file:
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env={**os.environ, "CITYGATE_CLOCK": "synced"},
        )
    try:
        counter.wait(lambda: counter.first_arrival() is not None, 30, "first data message")
        time.sleep(warmup_s)
        t0 = time.time()
        cpu0 = cpu_seconds(child.pid)
        time.sleep(window_s)
        t1 = time.time()
        cpu1 = cpu_seconds(child.pid)
        hwm = status_kib(child.pid, "VmHWM")
        time.sleep(0.2)  # the window is read up to t1 + 0.2 s: metrics_at(history, t1 + 0.2)
        history = counter.metrics()
    except BaseException as exc:
        raise RuntimeError(f"{exc}; agent log:\n{_tail(log_path)}") from exc
    finally:
        _stop(child)
    window = t1 - t0
    arrived = readings(a for a in counter.arrivals() if t0 <= a.at < t1)
    m0, m1 = metrics_at(history, t0), metrics_at(history, t1 + 0.2)
    read_per_s = published_per_s = None
    if m0 is not None and m1 is not None and m1.at > m0.at:
        span = m1.values["ts"] - m0.values["ts"]
        read_per_s = round((m1.values["readings_read"] - m0.values["readings_read"]) / span)
        published_per_s = round(
            (m1.values["readings_published"] - m0.values["readings_published"]) / span
        )
    return {
        "devices": devices,
        "values_per_device": VALUES,
        "interval_s": INTERVAL_S,
        "offered_readings_per_s": devices * VALUES / INTERVAL_S,
        "window_s": round(window, 2),
        "delivered_readings_per_s": round(arrived / window),
        "agent_read_readings_per_s": read_per_s,
        "agent_published_readings_per_s": published_per_s,
        "backlog_samples_at_end": None if m1 is None else m1.values["backlog_samples"],
        "polls_skipped_at_end": None if m1 is None else m1.values["polls_skipped"],
        "agent_cpu_share": round((cpu1 - cpu0) / window, 3),
        "cpu_us_per_reading": round((cpu1 - cpu0) / arrived * 1e6, 2) if arrived else None,
        "vm_hwm_mib": mib(hwm),
        "duplicates": counter.duplicates,
        "exit_status": child.returncode,
        "agent_warnings": [
            line for line in _tail(log_path).splitlines() if "WARNING" in line or "ERROR" in line
        ][-10:],
    }


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(10)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""
