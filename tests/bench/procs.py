"""What the kernel says about a process (/proc), and the scratch directories of a run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "var" / "bench"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far, in seconds (threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces: the fields after it start behind the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` figure of /proc/PID/status (``VmHWM``, ``VmRSS``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def mib(kib: int) -> float:
    """KiB → MiB, rounded for a report."""
    return round(kib / 1024, 1)


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (``ext4``, ``tmpfs``, …), from /proc/mounts."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        mount = parts[1]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, parts[2]
    return kind


@contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A fresh directory under ``var/bench/`` (real disk, not tmpfs), removed afterwards."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=BENCH_DIR))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages: other work on the machine skews figures."""
    return os.getloadavg()
