"""Issue 3 figures 7 and 9: draining a backlog while polling goes on, and the agent's
RSS with a 1,000,000-reading backlog against an empty buffer."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citygate.app import BUFFER_FILE
from citygate.buffer import Buffer, BufferStats, NewSample, open_readonly_stats
from citygate.config import BufferSettings
from tests.bench import rig
from tests.bench.buffer import meter_body
from tests.bench.counter import ReadingCounter, metrics_delta, readings
from tests.bench.procs import mib, scratch, status_kib
from tests.bench.report import PartResult
from tests.support.broker import Mosquitto, free_port
from tests.support.processes import SimProcess

DRAIN_TARGET = 20_000.0  # readings/s
RSS_DELTA_TARGET_MIB = 10.0
DRAINED_READINGS = 5_000  # backlog at or below this counts as drained (≈ 0.25 s of polling)
PREFILL_SAMPLES = 10_000  # × 100 readings = 1,000,000


@dataclass(frozen=True, slots=True)
class Point:
    at: float
    stats: BufferStats


def run(quick: bool) -> PartResult:
    result = PartResult("backlog")
    with scratch("backlog") as workdir:
        sim = SimProcess(dict.fromkeys(range(1, rig.METERS + 1), f"generic{rig.VALUES}"))
        try:
            profile = rig.generic_profile(workdir / f"generic{rig.VALUES}.toml")
            drain = drain_rate(workdir, sim, profile, 100_000 if quick else 250_000)
            rss = backlog_rss(workdir, sim, profile, settle_max_s=8 if quick else 15)
        finally:
            sim.stop()
    result.details["drain"] = drain
    result.details["rss"] = rss
    result.add(
        "backlog drain rate while polling (net)",
        drain["net_drain_readings_per_s"],
        "readings/s",
        at_least=DRAIN_TARGET,
        note=(
            f"{drain['backlog_readings_received']:,} backlog readings drained in "
            f"{drain['drain_s']} s after the agent reconnected "
            f"({drain['reconnect_after_broker_up_s']} s after the broker came back: backoff), "
            f"while polling {drain['polled_readings_per_s']:,} readings/s "
            f"(polls skipped {drain['polls_skipped_during_drain']})"
        ),
    )
    result.add(
        "polling during the drain",
        drain["polled_readings_per_s"],
        "readings/s",
        note="live samples queue behind the backlog (per device, seq order)",
    )
    result.add("agent RSS, empty buffer", rss["empty"]["vm_rss_mib"], "MiB")
    result.add("agent RSS, 1,000,000-reading backlog", rss["full"]["vm_rss_mib"], "MiB")
    result.add(
        "RSS growth from the backlog",
        rss["delta_mib"],
        "MiB",
        at_most=RSS_DELTA_TARGET_MIB,
        note=(
            f"VmHWM {rss['empty']['vm_hwm_mib']} → {rss['full']['vm_hwm_mib']} MiB; broker down, "
            f"20 meters polled; settled after {rss['empty']['settle_s']} / "
            f"{rss['full']['settle_s']} s"
        ),
    )
    return result


# ---------------------------------------------------------------------------- figure 7


def drain_rate(workdir: Path, sim: SimProcess, profile: Path, backlog: int) -> dict[str, Any]:
    """Stop the broker until ``backlog`` readings are buffered, start it, time the drain.

    The drain runs from the agent's "connected again" log line to the arrival at the
    subscriber of the last sample buffered before it (the subscriber is back on the broker
    well before the agent: the agent's reconnect backoff is seconds by then)."""
    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    data_dir = workdir / "drain"
    config = rig.gateway_config(
        workdir / "drain.toml",
        broker_port=broker.port,
        sim_port=sim.port,
        data_dir=data_dir,
        profile=profile,
    )
    db = data_dir / BUFFER_FILE
    counter = ReadingCounter(broker.port).start()
    spawned = rig.spawn_agent(config)
    try:
        counter.wait(lambda: counter.first_arrival() is not None, 30, "first data message")
        time.sleep(2)  # part of the scenario: 2 s of live traffic before the outage
        broker.stop()
        down_at = time.time()
        filled = _until(db, lambda s: s.backlog_readings >= backlog, 90, step=0.2)
        broker.start()
        up_at = time.time()
        reconnected_at = rig.wait_for_line(spawned, "connected again", timeout=90)
        subscribed_first = counter.subscribed.is_set()
        at_reconnect = _stats(db)
        drained = _until(db, lambda s: s.backlog_readings <= DRAINED_READINGS, 120, step=0.05)
        time.sleep(1.5)  # the last messages reach the subscriber; a metrics message follows
        history = counter.metrics()
        arrivals = counter.arrivals()
    finally:
        code = rig.stop_agent(spawned)
        counter.stop()
        broker.stop()
    # Samples buffered before the agent was back: seq below next_seq at that moment (a few
    # may have been sent already when the stats were read: the subscriber's count rules).
    first_live_seq = at_reconnect.stats.next_seq
    backlog_arrivals = [a for a in arrivals if a.at >= up_at and a.seq < first_live_seq]
    if not backlog_arrivals:
        raise RuntimeError("no backlog sample reached the subscriber after the broker came back")
    drained_at = max(a.at for a in backlog_arrivals)
    drain_s = drained_at - reconnected_at
    backlog_readings = readings(backlog_arrivals)
    live = readings(
        a for a in arrivals if a.seq >= first_live_seq and reconnected_at <= a.at <= drained_at
    )
    skipped = metrics_delta(history, reconnected_at + 0.1, drained_at + 1.5, "polls_skipped")
    return {
        "target_backlog_readings": backlog,
        "outage_s": round(up_at - down_at, 1),
        "backlog_readings_when_broker_up": filled.stats.backlog_readings,
        "reconnect_after_broker_up_s": round(reconnected_at - up_at, 2),
        "subscriber_back_before_agent": subscribed_first,
        "backlog_readings_at_reconnect": at_reconnect.stats.backlog_readings,
        "backlog_readings_received": backlog_readings,
        "drain_s": round(drain_s, 3),
        "net_drain_readings_per_s": round(backlog_readings / drain_s),
        "gross_publish_readings_per_s": round((backlog_readings + live) / drain_s),
        "live_readings_during_drain": live,
        # Over the drain as the buffer saw it (stats read every 50 ms: rough for a short drain).
        "polled_readings_per_s": round(
            (drained.stats.next_seq - at_reconnect.stats.next_seq)
            * rig.VALUES
            / max(drained.at - at_reconnect.at, 0.05)
        ),
        "polls_skipped_during_drain": skipped,
        "duplicates": counter.duplicates,
        "exit_status": code,
    }


def _stats(db: Path) -> Point:
    return Point(time.time(), open_readonly_stats(db)[0])


def _until(db: Path, done: Any, timeout: float, step: float) -> Point:
    deadline = time.monotonic() + timeout
    while True:
        point = _stats(db) if db.exists() else None
        if point is not None and done(point.stats):
            return point
        if time.monotonic() > deadline:
            raise TimeoutError(f"buffer {db}: condition not met in {timeout:g} s ({point})")
        time.sleep(step)


# ---------------------------------------------------------------------------- figure 9


def prefill(data_dir: Path, samples: int) -> None:
    """``samples`` × 100 readings in the buffer file, through the Buffer API."""
    rng = random.Random(9)
    bodies = [meter_body(rig.VALUES, rng) for _ in range(64)]
    devices = rig.meter_ids()
    buffer = Buffer(data_dir / BUFFER_FILE, BufferSettings())
    buffer.open()
    try:
        now = time.time() - samples * rig.INTERVAL_S / rig.METERS
        for start in range(0, samples, 500):
            buffer.append(
                [
                    NewSample(
                        devices[i % len(devices)],
                        now + i * rig.INTERVAL_S / rig.METERS,
                        True,
                        rig.VALUES,
                        bodies[i % len(bodies)],
                    )
                    for i in range(start, min(samples, start + 500))
                ]
            )
    finally:
        buffer.close()


def backlog_rss(
    workdir: Path, sim: SimProcess, profile: Path, settle_max_s: float
) -> dict[str, Any]:
    """RSS of the agent (broker down) on an empty buffer and on a 1M-reading backlog."""
    nobody = free_port()  # no broker listens here
    out: dict[str, Any] = {}
    for name, samples in (("empty", 0), ("full", PREFILL_SAMPLES)):
        data_dir = workdir / f"rss-{name}"
        data_dir.mkdir()
        if samples:
            prefill(data_dir, samples)
        config = rig.gateway_config(
            workdir / f"rss-{name}.toml",
            broker_port=nobody,
            sim_port=sim.port,
            data_dir=data_dir,
            profile=profile,
        )
        spawned = rig.spawn_agent(config)
        try:
            rig.wait_for_line(spawned, "running:", timeout=60)
            settle_s, rss = _settle(spawned.pid, settle_max_s)
            hwm = status_kib(spawned.pid, "VmHWM")
            backlog = open_readonly_stats(data_dir / BUFFER_FILE)[0].backlog_readings
        finally:
            code = rig.stop_agent(spawned)
        out[name] = {
            "exit_status": code,
            "prefilled_readings": samples * rig.VALUES,
            "backlog_readings_when_read": backlog,
            "vm_rss_mib": mib(rss),
            "vm_hwm_mib": mib(hwm),
            "settle_s": settle_s,
        }
    out["delta_mib"] = round(out["full"]["vm_rss_mib"] - out["empty"]["vm_rss_mib"], 1)
    return out


def _settle(pid: int, max_s: float) -> tuple[float, int]:
    """Sample VmRSS every 0.5 s until 2 s of samples lie within 512 KiB (at least 3 s)."""
    started = time.monotonic()
    samples: list[int] = []
    while True:
        samples.append(status_kib(pid, "VmRSS"))
        elapsed = time.monotonic() - started
        recent = samples[-5:]
        if elapsed >= 3 and len(recent) == 5 and max(recent) - min(recent) <= 512:
            break
        if elapsed >= max_s:
            break
        time.sleep(0.5)
    return round(elapsed, 1), samples[-1]
