"""Issue 16: what the buffer stores and writes to storage per sample and per reading, measured
(the figures behind agent/sizing.py and ``citygate check``'s sizing lines).

The real :class:`~citygate.buffer.Buffer` on the real disk (``var/bench``, its file system is
reported) runs the agent's cycle, one sample per commit as a gateway polling meters every few
seconds does: broker up, each sample is appended, fetched and acknowledged (the ack folded
into the next append's commit, as the publisher does); broker down, appended only. Samples
are realistic: an Eastron SDM630's 84 readings (names and units of
config/profiles/eastron-sdm630.toml, float32 values near plausible levels, counters that
grow) and a BLE sensor's 6; a two-point linear fit gives bytes per sample + per reading.

Written bytes are ``/proc/self/io`` ``write_bytes`` − ``cancelled_write_bytes``: pages this
process dirtied in the page cache, counted when dirtied (at the block layer: 0 on tmpfs). A
page dirtied again before it was written back is counted once, so the run emulates the
kernel's writeback (``dirty_expire_centisecs``, 30 s) with an fsync of the files every
:data:`WRITEBACK_EVERY` samples, a small gateway's samples in 30 s; without it a fast run
would fold many commits into one page write that a real, slow gateway makes separately.
The file system's journal (jbd2, another thread) is not counted.

Stored bytes: what ``max_size`` counts (``BufferStats.backlog_bytes``) and the growth of the
file's pages in use, broker down. ``expire`` (once a minute in the agent) is measured alone.

``python -m tests.bench sdwear`` prints measured vs the constants of agent/sizing.py.
"""

from __future__ import annotations

import os
import random
import sqlite3
import struct
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from citygate import sizing
from citygate.buffer import ACK_FOLD_S, PAGE_SIZE, Buffer, NewSample
from citygate.config import BufferSettings
from citygate.drivers._floats import shortest_float32
from citygate.drivers._units import canonical
from citygate.model import Reading
from citygate.senml import encode_body
from tests.bench.procs import ROOT, filesystem_of, scratch
from tests.bench.report import PartResult

SENSOR, METER = 6, 84  # readings per sample of the two kinds
WRITEBACK_EVERY = 5  # samples per emulated writeback: ~10 samples/min, 30 s dirty expiry
WARMUP = 40  # samples before measuring: the file's first pages, the seq side file
PROFILE = ROOT / "config" / "profiles" / "eastron-sdm630.toml"

# (name prefix, level, spread) of the meter's readings; the first match wins.
_LEVELS = (
    ("voltage_thd", 2.5, 1.0),
    ("current_thd", 12.0, 6.0),
    ("voltage_l1_l2", 400.0, 5.0),
    ("voltage_l2_l3", 400.0, 5.0),
    ("voltage_l3_l1", 400.0, 5.0),
    ("voltage_ll", 400.0, 5.0),
    ("voltage", 230.0, 3.0),
    ("current_n", 1.5, 1.0),
    ("current", 8.0, 4.0),
    ("demand_current", 9.0, 3.0),
    ("power_factor", 0.93, 0.05),
    ("phase_angle", 20.0, 8.0),
    ("frequency", 50.0, 0.05),
    ("reactive_power", 300.0, 150.0),
    ("demand", 2000.0, 800.0),
    ("", 1800.0, 900.0),  # powers
)


def _float32(x: float) -> float:
    return shortest_float32(float(struct.unpack("<f", struct.pack("<f", x))[0]))


def _meter_registers() -> list[tuple[str, str | None]]:
    profile = tomllib.loads(PROFILE.read_text())
    found = []
    for register in profile["registers"]:
        unit = register.get("unit")
        found.append((register["name"], None if unit is None else canonical(unit)[0]))
    return found


class SampleMaker:
    """Realistic sample bodies: an SDM630's or a BLE sensor's readings, moving a little."""

    def __init__(self, seed: int = 1842) -> None:
        self._rng = random.Random(seed)
        self._meter = _meter_registers()
        self._energy = 12_345.6

    def readings(self, count: int) -> list[Reading]:
        """One sample's readings: ``count`` == 6 is a sensor, else the meter's first ``count``."""
        rng = self._rng
        if count == SENSOR:
            return [
                Reading("temperature", "Cel", round(rng.uniform(14.0, 26.0), 2)),
                Reading("humidity", "%RH", round(rng.uniform(35.0, 70.0), 2)),
                Reading("battery", "%", rng.randint(60, 100)),
                Reading("battery_voltage", "V", round(rng.uniform(2.8, 3.1), 3)),
                Reading("counter", "count", rng.randint(0, 255)),
                Reading("rssi", "dBm", rng.randint(-95, -55)),
            ]
        self._energy += rng.uniform(0.0, 0.05)
        out = []
        for name, unit in self._meter[:count]:
            if "energy" in name:
                value = self._energy * (0.3 if "reactive" in name else 1.0)
            else:
                level, spread = next((lv, sp) for p, lv, sp in _LEVELS if name.startswith(p))
                value = level + rng.uniform(-spread, spread)
            out.append(Reading(name, unit, _float32(value)))
        return out

    def sample(self, device: str, t: float, count: int) -> NewSample:
        """A sample as the pipeline hands it to the buffer."""
        return NewSample(device, t, True, count, encode_body(self.readings(count)))


def _proc_io() -> dict[str, int]:
    lines = Path("/proc/self/io").read_text().splitlines()
    return {k: int(v) for k, v in (line.split(": ") for line in lines)}


def _written() -> int:
    io = _proc_io()
    return io["write_bytes"] - io["cancelled_write_bytes"]


def _writeback(path: Path) -> None:
    """What the kernel's flusher would do now: the buffer's dirty pages go to the disk."""
    for name in (path, Path(f"{path}-wal")):
        try:
            fd = os.open(name, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def used_bytes(path: Path) -> int:
    """Bytes of the buffer file's pages in use (the WAL's included: read through SQLite)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        count = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(count - free) * PAGE_SIZE
    finally:
        db.close()


def fill(path: Path, count: int, readings: int, *, maker: SampleMaker | None = None) -> Buffer:
    """A new open buffer at ``path`` holding ``count`` realistic samples (one per commit)."""
    maker = maker or SampleMaker()
    buffer = Buffer(path, BufferSettings(max_size=1 << 40))
    buffer.open()
    for i in range(count):
        buffer.append([maker.sample(f"meter-{i % 4}", 1.7e9 + 10 * i, readings)])
    return buffer


def wear(
    path: Path, durability: str, readings: int, samples: int, *, broker_up: bool, fold: bool = True
) -> dict[str, float]:
    """Bytes written and stored per sample for one case, in a new buffer at ``path``."""
    maker = SampleMaker()
    buffer = Buffer(path, BufferSettings(max_size=1 << 40, durability=durability))
    buffer.open()
    cursor = 0
    try:

        def one(i: int) -> None:
            nonlocal cursor
            buffer.append([maker.sample(f"meter-{i % 4}", 1.7e9 + 10 * i, readings)])
            if broker_up:
                rows = buffer.fetch(cursor, 500)
                cursor = rows[-1].seq
                buffer.ack((row.seq for row in rows), fold=fold)  # as the publisher
            if (i + 1) % WRITEBACK_EVERY == 0:
                _writeback(path)

        for i in range(WARMUP):
            one(i)
        _writeback(path)
        accounted_before = buffer.stats().backlog_bytes
        used_before = used_bytes(path)
        written_before = _written()
        for i in range(WARMUP, WARMUP + samples):
            one(i)
        _writeback(path)
        written = _written() - written_before
        accounted = buffer.stats().backlog_bytes - accounted_before
        used = used_bytes(path) - used_before
    finally:
        buffer.close()
    return {
        "written_per_sample": written / samples,
        "accounted_per_sample": accounted / samples,
        "file_growth_per_sample": used / samples,
    }


def expire_cost(path: Path, durability: str, calls: int) -> float:
    """Bytes written per ``expire`` call on a buffer holding a small backlog."""
    buffer = fill(path, 20, METER)
    buffer.close()
    buffer = Buffer(path, BufferSettings(max_size=1 << 40, durability=durability))
    buffer.open()
    try:
        _writeback(path)
        before = _written()
        for _ in range(calls):
            buffer.expire()
            _writeback(path)
        return (_written() - before) / calls
    finally:
        buffer.close()


def _fit(small: float, large: float) -> sizing.Cost:
    per_reading = (large - small) / (METER - SENSOR)
    return sizing.Cost(per_sample=small - SENSOR * per_reading, per_reading=per_reading)


def _files(workdir: Path) -> Iterator[Path]:
    n = 0
    while True:
        n += 1
        yield workdir / f"wear-{n}.sqlite3"


def measure(workdir: Path, samples: int) -> dict[str, Any]:
    """Every figure of agent/sizing.py, measured in ``workdir``."""
    paths = _files(workdir)
    out: dict[str, Any] = {"write": {}, "expire": {}, "unfolded": {}}
    stored: dict[int, dict[str, float]] = {}
    for durability in ("normal", "full"):
        for up in (True, False):
            per_size = {}
            for readings in (SENSOR, METER):
                per_size[readings] = wear(next(paths), durability, readings, samples, broker_up=up)
                if not up and durability == "normal":
                    stored[readings] = per_size[readings]
            out["write"][durability, up] = _fit(
                per_size[SENSOR]["written_per_sample"], per_size[METER]["written_per_sample"]
            )
        unfolded = _fit(
            *(
                wear(next(paths), durability, r, samples, broker_up=True, fold=False)[
                    "written_per_sample"
                ]
                for r in (SENSOR, METER)
            )
        )
        folded = out["write"][durability, True].per_sample
        out["unfolded"][durability] = unfolded.per_sample - folded
        out["expire"][durability] = expire_cost(next(paths), durability, 20)
    out["accounted"] = _fit(
        stored[SENSOR]["accounted_per_sample"], stored[METER]["accounted_per_sample"]
    )
    out["file"] = _fit(
        stored[SENSOR]["file_growth_per_sample"], stored[METER]["file_growth_per_sample"]
    )
    return out


def _drift(measured: float, constant: float) -> str:
    if constant == 0:
        return "as agent/sizing.py" if measured == 0 else "agent/sizing.py says 0"
    return f"{(measured - constant) / constant:+.1%} vs agent/sizing.py"


def run(quick: bool) -> PartResult:
    result = PartResult("sdwear")
    with scratch("sdwear") as workdir:
        fs = filesystem_of(workdir)
        result.details["filesystem"] = fs
        result.details["writeback_every_samples"] = WRITEBACK_EVERY
        figures = measure(workdir, 300 if quick else 2000)
    rows: list[tuple[str, sizing.Cost, sizing.Cost]] = [
        ("stored (max_size)", figures["accounted"], sizing.ACCOUNTED_BYTES),
        ("stored (file growth)", figures["file"], sizing.FILE_BYTES),
    ]
    for (durability, up), cost in figures["write"].items():
        label = f"written, {durability}, broker {'up' if up else 'down'}"
        rows.append((label, cost, sizing.WRITE_BYTES[durability, up]))
    for label, measured, constant in rows:
        key = label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        result.details[key] = {"measured": _rounded(measured), "constant": _rounded(constant)}
        for part in ("per_sample", "per_reading"):
            value = getattr(measured, part)
            result.add(
                f"{label}, bytes {part.replace('_', ' ')}",
                round(value, 1),
                "B",
                note=f"{_drift(value, getattr(constant, part))} ({getattr(constant, part):g})",
            )
    per_durability = (
        ("unfolded_ack", f"written per ack not folded (appends over {ACK_FOLD_S:g} s apart)",
         sizing.UNFOLDED_ACK_WRITE_BYTES),
        ("expire", "written per expire call", sizing.EXPIRE_WRITE_BYTES),
    )  # fmt: skip
    for key, label, constants in per_durability:
        for durability, value in figures[key.removesuffix("_ack")].items():
            result.details[f"{key}_{durability}"] = round(value)
            result.add(
                f"{label}, {durability}",
                round(value),
                "B",
                note=f"{_drift(value, constants[durability])}",
            )
    result.figures[0].note += f"; files on {fs}, writeback every {WRITEBACK_EVERY} samples"
    if fs in ("tmpfs", "ramfs"):
        result.error = f"var/bench is on {fs}: write_bytes is 0 there, nothing was measured"
    return result


def _rounded(cost: sizing.Cost) -> dict[str, float]:
    return {"per_sample": round(cost.per_sample, 1), "per_reading": round(cost.per_reading, 2)}
