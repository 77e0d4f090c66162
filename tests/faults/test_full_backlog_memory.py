"""Issue 3.8: the backlog lives on disk, not in RAM.

`citygate run` drains a pre-filled buffer of 10,000 and of 120,000 samples to a real broker;
its peak resident set (VmHWM, read from /proc before it stops) must not grow with the backlog
by more than a few MB. (`make bench` measures the 1,000,000-sample case.)
"""

from __future__ import annotations

import time
from pathlib import Path

from citygate.buffer import Buffer, NewSample
from citygate.config import BufferSettings
from tests.faults.store_harness import (
    counting_devices,
    plugin_env,
    status,
    vm_hwm_bytes,
    write_config,
)
from tests.support.broker import Mosquitto
from tests.support.processes import AgentProcess

READINGS = 3
BODY = "},{".join(f'"n":"value_{i}","u":"W","v":{230.5 + i}' for i in range(READINGS))
TOLERANCE = 4 * 1024 * 1024


def prefill(path: Path, samples: int) -> None:
    buffer = Buffer(path, BufferSettings())
    buffer.open()
    try:
        now = time.time()
        for start in range(0, samples, 5000):
            batch = [
                NewSample(f"meter-{i % 4 + 1}", now, True, READINGS, BODY)
                for i in range(start, min(samples, start + 5000))
            ]
            buffer.append(batch)
    finally:
        buffer.close()


def drain_peak_rss(tmp_path: Path, broker: Mosquitto, samples: int) -> int:
    env = plugin_env(tmp_path)
    data_dir = tmp_path / f"var-{samples}"
    prefill(data_dir / "buffer.sqlite3", samples)
    config = write_config(
        tmp_path / f"gateway-{samples}.toml",
        broker_port=broker.port,
        data_dir=data_dir,
        devices=counting_devices(4, enabled=False),
    )
    agent = AgentProcess(config, env)
    try:
        agent.wait_for_log("running")
        for _ in range(600):
            if status(config, env)["backlog_samples"] == 0:
                break
        else:
            raise AssertionError(f"backlog of {samples} not drained\n{agent.log}")
        peak = vm_hwm_bytes(agent.process.pid)
    finally:
        assert agent.stop() == 0, agent.log
    return peak


def test_peak_memory_does_not_grow_with_the_backlog(tmp_path: Path, broker: Mosquitto) -> None:
    small = drain_peak_rss(tmp_path, broker, 10_000)
    large = drain_peak_rss(tmp_path, broker, 120_000)
    print(f"\npeak RSS {small} B with 10k, {large} B with 120k")
    assert large - small < TOLERANCE, f"peak RSS {small} B with 10k, {large} B with 120k"
