"""Issue 2 figures 1-5: `citygate run` polling 20 simulated meters into a real Mosquitto.

20 meters × 100 float32 values every 0.1 s (20,000 readings/s offered); the simulator
and the agent are separate processes, the counting subscriber a thread of this one.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench import rig
from tests.bench.counter import ReadingCounter, metrics_delta, percentile, readings
from tests.bench.procs import ROOT, cpu_seconds, mib, scratch, status_kib
from tests.bench.report import PartResult
from tests.support.broker import Mosquitto
from tests.support.processes import SimProcess

CPU_US_TARGET = 10.0
HWM_MIB_TARGET = 45.0
STARTUP_S_TARGET = 0.5
SHORT_LINGER = "20ms"
FAST_INTERVAL = "25ms"  # the same meters four times as often: 80,000 readings/s offered
LOOP_LAG_MS_TARGET = 100.0  # the poll interval: a stall this long makes every device skip a poll
# Light load (issue 13): 400 readings/s with the default linger; poll start -> broker.
LIGHT_METERS = 2
LIGHT_VALUES = 20
LIGHT_INTERVAL_S = 0.1
LIGHT_OFFERED_PER_S = LIGHT_METERS * LIGHT_VALUES / LIGHT_INTERVAL_S
LIGHT_P50_MS_TARGET = 15.0
LIGHT_P99_MS_TARGET = 40.0


@dataclass(frozen=True, slots=True)
class Timing:
    warmup_s: float
    window_s: float


def run(quick: bool) -> PartResult:
    result = PartResult("e2e")
    result.details["imports"] = import_times(runs=3 if quick else 5)
    with scratch("e2e") as workdir:
        broker = Mosquitto(workdir / "mosquitto")
        broker.start()
        sim: SimProcess | None = None
        counter: ReadingCounter | None = None
        try:
            sim = SimProcess(dict.fromkeys(range(1, rig.METERS + 1), f"generic{rig.VALUES}"))
            counter = ReadingCounter(broker.port).start()
            profile = rig.generic_profile(workdir / f"generic{rig.VALUES}.toml")

            def config(name: str, linger: str | None) -> Path:
                return rig.gateway_config(
                    workdir / f"{name}.toml",
                    broker_port=broker.port,
                    sim_port=sim.port,
                    data_dir=workdir / name,
                    profile=profile,
                    linger=linger,
                )

            default = measure(
                config("default-linger", None),
                counter,
                sim,
                Timing(3, 6) if quick else Timing(5, 20),
            )
            short = measure(
                config("short-linger", SHORT_LINGER),
                counter,
                sim,
                Timing(3, 5) if quick else Timing(3, 10),
            )
            fast = measure(
                rig.gateway_config(
                    workdir / "fast.toml",
                    broker_port=broker.port,
                    sim_port=sim.port,
                    data_dir=workdir / "fast",
                    profile=profile,
                    interval=FAST_INTERVAL,
                ),
                counter,
                sim,
                Timing(3, 5) if quick else Timing(4, 15),
            )
            light = measure_light(
                rig.gateway_config(
                    workdir / "light.toml",
                    broker_port=broker.port,
                    sim_port=sim.port,
                    data_dir=workdir / "light",
                    profile=rig.generic_profile(
                        workdir / f"generic{LIGHT_VALUES}.toml", values=LIGHT_VALUES
                    ),
                    meters=LIGHT_METERS,
                    interval=f"{LIGHT_INTERVAL_S * 1000:g}ms",
                ),
                counter,
                Timing(2, 5) if quick else Timing(3, 20),
            )
            startups = [
                startup(config(f"start-{i}", None), counter) for i in range(3 if quick else 5)
            ]
        finally:
            if counter is not None:
                counter.stop()
            if sim is not None:
                sim.stop()
            broker.stop()

    result.details["default_linger_200ms"] = default
    result.details[f"linger_{SHORT_LINGER}"] = short
    result.details["startup_runs"] = startups
    result.details["light_load"] = light

    offered = default["offered_readings_per_s"]
    delivered = default["delivered_readings_per_s"]
    all_delivered = (
        default["delivered_samples"] >= default["offered_samples"] - rig.METERS
        and default["polls_skipped_in_window"] == 0
    )
    result.add(
        "readings/s delivered end to end",
        delivered,
        "readings/s",
        target=f"all offered ({offered:,.0f}/s)",
        note=(
            f"offered {default['offered_samples']} samples / delivered "
            f"{default['delivered_samples']} in {default['window_s']} s, polls skipped "
            f"{default['polls_skipped_in_window']}, duplicates {default['duplicates']}"
        ),
    ).ok = all_delivered
    worst_lag = [r["loop_lag_max_ms"] for r in (default, short)]
    result.add(
        "worst event-loop lag under 20,000 readings/s",
        max((x for x in worst_lag if x is not None), default=None),
        "ms",
        at_most=LOOP_LAG_MS_TARGET,
        note=(
            f"metrics loop_lag_max_ms over both windows: default linger {worst_lag[0]} ms, "
            f"linger {SHORT_LINGER} {worst_lag[1]} ms; polls skipped "
            f"{default['polls_skipped_in_window']} + {short['polls_skipped_in_window']}"
        ),
    )
    result.add("agent CPU per reading", default["cpu_us_per_reading"], "µs", at_most=CPU_US_TARGET)
    result.add(
        "agent CPU per reading, interval 25 ms (80,000 readings/s offered)",
        fast["cpu_us_per_reading"],
        "µs",
        note=(
            f"delivered {fast['delivered_readings_per_s']:,} readings/s, polls skipped "
            f"{fast['polls_skipped_in_window']}, worst loop lag {fast['loop_lag_max_ms']} ms"
        ),
    )
    result.details["interval_25ms"] = fast
    result.add("agent peak RSS (VmHWM)", default["vm_hwm_mib"], "MiB", at_most=HWM_MIB_TARGET)
    for label, run_figures in (
        ("linger 200ms (default)", default),
        (f"linger {SHORT_LINGER}", short),
    ):
        result.add(f"poll-to-broker latency p50, {label}", run_figures["latency_p50_ms"], "ms")
        result.add(f"poll-to-broker latency p99, {label}", run_figures["latency_p99_ms"], "ms")
    light_label = f"{LIGHT_OFFERED_PER_S:,.0f} readings/s, default config"
    for name, key, target in (
        ("p50", "latency_p50_ms", LIGHT_P50_MS_TARGET),
        ("p99", "latency_p99_ms", LIGHT_P99_MS_TARGET),
    ):
        result.add(
            f"poll-to-broker latency {name}, {light_label}",
            light[key],
            "ms",
            at_most=target,
            note=(
                f"{light['samples']} samples of {LIGHT_METERS} meters × {LIGHT_VALUES} values "
                f"every {LIGHT_INTERVAL_S:g} s; {light['messages']} data messages"
            )
            if name == "p50"
            else "",
        )
    warnings: dict[str, int] = default["log_warnings"]
    result.add(
        "agent warning log lines per minute",
        default["warning_lines_per_min"],
        "lines/min",
        note=(
            "most frequent: " + "; ".join(f"{n} × {text!r}" for text, n in _top(warnings, 3))
            if warnings
            else ""
        ),
    )
    first = [s["first_data_s"] for s in startups]
    result.add(
        "start-up to first published reading (median)",
        round(statistics.median(first), 3),
        "s",
        at_most=STARTUP_S_TARGET,
        note=(
            f"{len(first)} runs: {', '.join(f'{s:.3f}' for s in first)} s; 'running' logged after "
            f"{statistics.median(s['running_logged_s'] for s in startups):.3f} s (median)"
        ),
    )
    runs = [*startups, default, short]
    hung = sum(1 for r in runs if r["exit_status"] is None)
    result.add(
        "agents that did not stop within 30 s of SIGTERM",
        hung,
        f"of {len(runs)}",
        at_most=0,
        target="0",
        note="killed; see details.startup_runs[].log_tail" if hung else "",
    )
    imports = result.details["imports"]
    result.add("python start-up (python -c pass)", imports["python_s"], "s")
    result.add("import citygate.cli", imports["agent_cli_s"], "s")
    result.add(
        "import of the run path (cli, app, modbus driver)",
        imports["run_path_s"],
        "s",
        note="largest imports (cumulative): "
        + ", ".join(f"{name} {ms:.0f} ms" for name, ms in imports["largest_imports_ms"][:6]),
    )
    return result


def measure(
    config: Path, counter: ReadingCounter, sim: SimProcess, timing: Timing
) -> dict[str, Any]:
    """One agent run: warm up, then throughput, CPU, RSS and latency over a fixed window."""
    counter.reset()
    spawned = rig.spawn_agent(config)
    try:
        counter.wait(lambda: counter.first_arrival() is not None, 30, "first data message")
        time.sleep(timing.warmup_s)
        t0 = time.time()
        cpu0, sim_cpu0 = cpu_seconds(spawned.pid), cpu_seconds(sim.process.pid)
        time.sleep(timing.window_s)
        t1 = time.time()
        cpu1, sim_cpu1 = cpu_seconds(spawned.pid), cpu_seconds(sim.process.pid)
        hwm = status_kib(spawned.pid, "VmHWM")
        rss = status_kib(spawned.pid, "VmRSS")
        time.sleep(1.5)  # what was read inside the window reaches the subscriber
        history = counter.metrics()
    finally:
        code = rig.stop_agent(spawned)
    ran_s = time.time() - spawned.spawned_at
    warnings = _warnings(spawned.agent.lines)
    window = t1 - t0
    arrivals = counter.arrivals()
    in_window = [a for a in arrivals if t0 <= a.bt < t1]
    delivered = readings(in_window)
    latencies = [a.at - a.bt for a in in_window]
    skipped = metrics_delta(history, t0, t1, "polls_skipped")
    # Each metrics message carries the worst lag of the period before it (start-up excluded).
    lags = [m.values.get("loop_lag_max_ms") for m in history if t0 < m.at <= t1 + 1.5]
    run_lags = [m.values.get("loop_lag_max_ms") for m in history]
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {
        "config": config.name,
        "window_s": round(window, 2),
        "offered_samples": round(rig.METERS * window / rig.INTERVAL_S),
        "offered_readings_per_s": rig.OFFERED_PER_S,
        "delivered_samples": len(in_window),
        "delivered_readings": delivered,
        "delivered_readings_per_s": round(delivered / window),
        "arrived_readings_per_s": round(readings(a for a in arrivals if t0 <= a.at < t1) / window),
        "duplicates": counter.duplicates,
        "polls_skipped_in_window": skipped,
        "polls_skipped_total": None if not history else history[-1].values["polls_skipped"],
        "loop_lag_max_ms": max((x for x in lags if x is not None), default=None),
        "loop_lag_max_ms_whole_run": max((x for x in run_lags if x is not None), default=None),
        "cpu_s": round(cpu1 - cpu0, 2),
        "cpu_us_per_reading": round((cpu1 - cpu0) / delivered * 1e6, 2) if delivered else None,
        "cpu_share_of_one_core": round((cpu1 - cpu0) / window, 3),
        "simulator_cpu_share_of_one_core": round((sim_cpu1 - sim_cpu0) / window, 3),
        "vm_hwm_mib": mib(hwm),
        "vm_rss_mib": mib(rss),
        "latency_p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "latency_p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "latency_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "exit_status": code,
        "warning_lines_per_min": round(sum(warnings.values()) / ran_s * 60),
        "log_warnings": warnings,
    }


def measure_light(config: Path, counter: ReadingCounter, timing: Timing) -> dict[str, Any]:
    """Latency at light load: every sample, poll start (its ``bt``) to arrival at the broker's
    subscriber, over a window after a warm-up."""
    _quiet(counter)
    counter.reset()
    spawned = rig.spawn_agent(config)
    try:
        counter.wait(lambda: counter.first_arrival() is not None, 30, "first data message")
        time.sleep(timing.warmup_s)
        t0 = time.time()
        time.sleep(timing.window_s)
        t1 = time.time()
        time.sleep(1.0)
    finally:
        rig.stop_agent(spawned)
    in_window = [a for a in counter.arrivals() if t0 <= a.bt < t1]
    latencies = [a.at - a.bt for a in in_window]
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {
        "config": config.name,
        "samples": len(in_window),
        "messages": len({a.at for a in in_window}),
        "latency_p50_ms": None if p50 is None else round(p50 * 1000, 1),
        "latency_p99_ms": None if p99 is None else round(p99 * 1000, 1),
        "latency_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
    }


def startup(config: Path, counter: ReadingCounter) -> dict[str, Any]:
    """Spawn → first data message at the subscriber (broker and simulator already up)."""
    _quiet(counter)
    counter.reset()
    spawned = rig.spawn_agent(config)
    running_at: float | None = None
    try:
        deadline = time.monotonic() + 30
        while counter.first_arrival() is None:
            if running_at is None and any("running:" in line for line in spawned.agent.lines):
                running_at = time.time()
            if time.monotonic() > deadline or spawned.agent.process.poll() is not None:
                raise RuntimeError(f"no data message after start; log:\n{spawned.agent.log}")
            time.sleep(0.002)
        first = counter.first_arrival()
        assert first is not None
    finally:
        stopping_at = time.time()
        code = rig.stop_agent(spawned)
    return {
        "first_data_s": round(first - spawned.spawned_at, 3),
        "running_logged_s": round((running_at or first) - spawned.spawned_at, 3),
        "stop_s": None if code is None else round(time.time() - stopping_at, 2),
        "exit_status": code,
        "log_tail": spawned.agent.log[-1500:] if code != 0 else "",
    }


def _top(counts: dict[str, int], n: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: -item[1])[:n]


def _quiet(counter: ReadingCounter) -> None:
    """Wait until messages from an agent that just stopped no longer arrive."""
    last = -1
    while counter.messages != last:
        last = counter.messages
        time.sleep(0.3)


def _warnings(lines: list[str]) -> dict[str, int]:
    """Warning and error log lines by text (timestamps cut), with how often each came."""
    counts: dict[str, int] = {}
    for line in lines:
        for level in ("WARNING", "ERROR"):
            if f" {level} " in f" {line} ":
                text = line.split(level, 1)[1].strip()
                counts[text] = counts.get(text, 0) + 1
    return counts


def import_times(runs: int) -> dict[str, Any]:
    """Wall time of a bare interpreter and of the agent's imports, medians of ``runs``."""

    def wall(code: str) -> float:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times), 3)

    run_path = "import citygate.cli, citygate.app, citygate.drivers.modbus.driver"
    trace = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", run_path],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    return {
        "python_s": wall("pass"),
        "agent_cli_s": wall("import citygate.cli"),
        "run_path_s": wall(run_path),
        "largest_imports_ms": largest_imports(trace),
    }


def largest_imports(trace: str) -> list[tuple[str, float]]:
    """Import cost from a ``-X importtime`` trace, in ms, the largest first: self times
    summed per top-level package, and per module for our own packages."""
    cost: dict[str, float] = {}
    for line in trace.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        head, _, name = line.split("|")
        name = name.strip()
        root = name.split(".")[0]
        key = name if root in ("agent", "drivers") else root
        cost[key] = cost.get(key, 0.0) + int(head.removeprefix("import time:")) / 1000
    return sorted(((k, round(v, 1)) for k, v in cost.items()), key=lambda item: -item[1])[:12]
