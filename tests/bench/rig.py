"""The rig of the end-to-end parts: Mosquitto, ``citygate-sim`` with generic meters, and
a ``citygate run`` config that polls them."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import AgentProcess

METERS = 20
VALUES = 100
INTERVAL_S = 0.1
OFFERED_PER_S = METERS * VALUES / INTERVAL_S

AGENT_ENV = {"CITYGATE_CLOCK": "synced"}  # samples carry plain `bt`, as on a gateway with NTP
METRICS_INTERVAL_S = 1.0


def generic_profile(path: Path, values: int = VALUES) -> Path:
    """A profile for the simulator's ``generic<N>``: N float32 input registers from 0."""
    lines = [
        "[profile]",
        f'name = "bench-generic{values}"',
        'manufacturer = "citygate-sim"',
        f'model = "generic{values}"',
        f'description = "{values} float32 input registers from address 0"',
        'source = "citygate_sim GenericMeter"',
        "",
    ]
    for i in range(values):
        lines += [
            "[[registers]]",
            f'name = "value_{i}"',
            f"address = {2 * i}",
            'table = "input"',
            'type = "float32"',
            'unit = "W"',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def meter_ids(meters: int = METERS) -> list[str]:
    return [f"meter-{unit:02d}" for unit in range(1, meters + 1)]


def gateway_config(
    path: Path,
    *,
    broker_port: int,
    sim_port: int,
    data_dir: Path,
    profile: Path,
    linger: str | None = None,
    durability: str | None = None,
    meters: int = METERS,
    interval: str = "100ms",
) -> Path:
    """A gateway.toml: ``meters`` Modbus TCP devices, units 1.., on the simulator.

    ``linger`` and ``durability`` None keep the defaults (200 ms, normal)."""
    lines = [
        "[gateway]",
        'id = "gw-bench"',
        f'data_dir = "{data_dir}"',
        "",
        "[mqtt]",
        f'url = "mqtt://127.0.0.1:{broker_port}"',
    ]
    if linger is not None:
        lines.append(f'linger = "{linger}"')
    lines.append("")
    if durability is not None:
        lines += ["[buffer]", f'durability = "{durability}"', ""]
    for unit, device_id in enumerate(meter_ids(meters), start=1):
        lines += [
            "[[device]]",
            f'id = "{device_id}"',
            'driver = "modbus"',
            'host = "127.0.0.1"',
            f"port = {sim_port}",
            f"unit = {unit}",
            f'profile = "{profile}"',
            f'interval = "{interval}"',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


@dataclass(slots=True)
class Spawned:
    """An agent process and the wall-clock moment it was spawned."""

    agent: AgentProcess
    spawned_at: float

    @property
    def pid(self) -> int:
        return self.agent.process.pid


def spawn_agent(config: Path) -> Spawned:
    """``citygate run -c config`` with the bench's environment."""
    at = time.time()
    return Spawned(AgentProcess(config, env=AGENT_ENV, metrics_interval=METRICS_INTERVAL_S), at)


def stop_agent(spawned: Spawned, timeout: float = 30.0) -> int | None:
    """SIGTERM and wait; the exit status, or None if it had to be killed (a hang: the
    agent's own shutdown is bounded well under ``timeout``)."""
    try:
        return spawned.agent.stop(timeout)
    except subprocess.TimeoutExpired:
        spawned.agent.kill()
        return None
    except BaseException:
        spawned.agent.kill()
        raise


def wait_for_line(spawned: Spawned, text: str, timeout: float) -> float:
    """Wait for a log line holding ``text``; the wall-clock moment it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in spawned.agent.lines):
            return time.time()
        if spawned.agent.process.poll() is not None:
            break
        time.sleep(0.01)
    raise TimeoutError(f"agent log line {text!r} not seen; log:\n{spawned.agent.log[-3000:]}")
