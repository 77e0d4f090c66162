"""What the store-and-forward fault tests share (issue 3, points 3–8 and 10).

* :data:`counting` — a driver whose every sample carries its poll number (``count``) and which
  stops producing after ``limit`` samples, so a test knows exactly how many samples were taken.
  :func:`plugin_env` registers it (and ``tests.support.synthetic``) the way a plugin is found:
  an entry point in a ``.dist-info`` on ``PYTHONPATH``; the real ``citygate run`` and
  ``citygate status`` then load it. Nothing of the agent is patched.
* :func:`write_config`, :func:`status` — a gateway.toml with these devices and a buffer
  section; ``citygate status --json``.
* :class:`Ledger` — what a subscriber received, keyed by ``seq``, with the checks every fault
  test makes: no seq for two different samples, no gap.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from citygate.drivers.api import DeviceContext, Field, Measurement
from tests.support.broker import Subscriber
from tests.support.processes import ROOT, run_cli

GATEWAY = "gw-e2e"


class CountingDriver:
    """Sample n carries ``count = n``; after ``limit`` samples (0: never) it reads nothing."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.limit = int(options["limit"])
        self.names = [f"value_{i}" for i in range(int(options["values"]) - 1)]
        self.count = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def poll(self) -> Sequence[Measurement]:
        await asyncio.sleep(0)  # a real driver's poll awaits I/O: yield to the loop likewise
        if self.limit and self.count >= self.limit:
            return []
        self.count += 1
        n = float(self.count)
        return [Measurement("count", n, "W")] + [
            Measurement(name, n + i * 0.5, "W") for i, name in enumerate(self.names)
        ]


class CountingFactory:
    """The ``counting`` driver (tests only)."""

    name = "counting"
    version = "0"
    default_interval = 0.05
    fields: Mapping[str, Field] = {
        "limit": Field("int", default=0, minimum=0),
        "values": Field("int", default=3, minimum=1, maximum=10_000),
    }

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> Mapping[str, Any]:
        return dict(options)

    def create(self, config: Any, context: DeviceContext) -> CountingDriver:
        return CountingDriver(config)


counting = CountingFactory()


def plugin_env(tmp_path: Path) -> dict[str, str]:
    """Environment under which ``citygate`` finds the ``counting`` and ``synthetic`` drivers."""
    site = tmp_path / "plugins"
    info = site / "citygate_fault_drivers-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: citygate-fault-drivers\nVersion: 0\n"
    )
    (info / "entry_points.txt").write_text(
        "[citygate.drivers]\n"
        "counting = tests.faults.store_harness:counting\n"
        "synthetic = tests.support.synthetic:factory\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def counting_devices(
    count: int, *, interval: str = "20ms", limit: int = 0, values: int = 3, enabled: bool = True
) -> list[dict[str, object]]:
    return [
        {
            "id": f"meter-{i}",
            "driver": "counting",
            "interval": interval,
            "limit": limit,
            "values": values,
            "enabled": enabled,
        }
        for i in range(1, count + 1)
    ]


def write_config(
    path: Path,
    *,
    broker_port: int,
    data_dir: Path,
    devices: list[dict[str, object]],
    buffer: Mapping[str, str] | None = None,
    mqtt: Mapping[str, object] | None = None,
) -> Path:
    """A gateway.toml: these devices, ``[buffer]`` keys (strings), extra ``[mqtt]`` keys."""
    lines = [
        "[gateway]",
        f'id = "{GATEWAY}"',
        f'data_dir = "{data_dir}"',
        'log_level = "info"',
        "",
        "[mqtt]",
        f'url = "mqtt://127.0.0.1:{broker_port}"',
        'linger = "50ms"',
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in (mqtt or {}).items()]
    lines += ["", "[buffer]"]
    lines += [f'{k} = "{v}"' for k, v in (buffer or {}).items()]
    lines.append("")
    for device in devices:
        lines.append("[[device]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in device.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def status(config: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """``citygate status --json`` (works while the agent runs)."""
    done = run_cli("status", "-c", str(config), "--json", env=dict(env))
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def last_metrics(sub: Subscriber) -> dict[str, Any]:
    metrics = sub.snapshot(f"{GATEWAY}/metrics")
    assert metrics, "no metrics message seen"
    last: dict[str, Any] = json.loads(metrics[-1].payload)
    return last


@dataclass(frozen=True, slots=True)
class Received:
    """One sample as the subscriber saw it."""

    seq: int
    device: str
    bt: float
    count: float | None  # the counting driver's poll number
    clock: str | None


class Ledger:
    """Every sample a subscriber received, by seq (duplicates merged: delivery is at least once)."""

    def __init__(self, sub: Subscriber) -> None:
        self.by_seq: dict[int, Received] = {}
        self.conflicts: list[tuple[Received, Received]] = []
        self.order_by_device: dict[str, list[int]] = {}  # first arrival of each seq
        for record in sub.data_records():  # every record carries its sample's seq and bt
            if record.get("seq") is None or record.get("bt") is None:
                continue
            seq = int(record["seq"])
            sample = Received(
                seq,
                str(record["topic"]).split("/")[-2],
                float(record["bt"]),
                float(record["v"]) if record.get("n") == "count" else None,
                record.get("clock"),
            )
            known = self.by_seq.get(seq)
            if known is None:
                self.by_seq[seq] = sample
                self.order_by_device.setdefault(sample.device, []).append(seq)
            elif (known.device, known.bt) != (sample.device, sample.bt) or (
                None not in (known.count, sample.count) and known.count != sample.count
            ):
                self.conflicts.append((known, sample))
            elif known.count is None and sample.count is not None:
                self.by_seq[seq] = sample

    @property
    def seqs(self) -> list[int]:
        return sorted(self.by_seq)

    def gaps(self, first: int = 1) -> list[int]:
        """Seqs from ``first`` to the highest received that were never received."""
        if not self.by_seq:
            return []
        return sorted(set(range(first, max(self.by_seq) + 1)) - set(self.by_seq))

    def counts(self, device: str) -> list[float]:
        return sorted(
            r.count for r in self.by_seq.values() if r.device == device and r.count is not None
        )


def vm_hwm_bytes(pid: int) -> int:
    """A process's peak resident set size (``VmHWM`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def is_root() -> bool:
    return os.geteuid() == 0


def run(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """A system command (mount, umount) that must succeed."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done
