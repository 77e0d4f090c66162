"""The ``ble`` part of ``make bench`` (register it in tests/bench/__main__.py PARTS).

100 simulated sensors (pvvx, ATC, Ruuvi, BTHome, encrypted BTHome; 20 of each)
advertising once a second: adverts decoded per second through the hub and one
driver per sensor, and the CPU share while they advertise in real time.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from citygate.drivers.ble.advert import from_line
from citygate_sim.ble import DEMO_BINDKEY, BleSimulator, SensorSpec
from tests.bench.report import PartResult
from tests.drivers.ble.bench import bench_ble, cpu_share

SENSORS = 100


def sensors(count: int = SENSORS) -> list[SensorSpec]:
    """``count`` sensors of every kind, one advert a second each."""
    kinds = ("pvvx", "atc", "ruuvi", "bthome", "bthome-encrypted")
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        address = f"A4:C1:38:{i >> 8:02X}:{i & 0xFF:02X}:B7"
        key = DEMO_BINDKEY if kind == "bthome-encrypted" else None
        out.append(SensorSpec(address, kind.split("-")[0], 1.0, bindkey=key))
    return out


def run(quick: bool) -> PartResult:
    result = PartResult("ble")
    specs = sensors()
    keys = {s.address: s.bindkey for s in specs if s.bindkey is not None}
    stream = io.StringIO()
    BleSimulator(specs, seed=1, start=1_764_000_000.0).write_capture(stream, 60)
    text = stream.getvalue()
    adverts = [from_line(line) for line in text.splitlines()]
    rate = bench_ble(adverts, keys)
    result.add("adverts decoded through the driver", rate, "adverts/s", at_least=1000)
    with tempfile.TemporaryDirectory() as scratch:
        capture = Path(scratch) / "100-sensors.jsonl"
        capture.write_text(text, encoding="utf-8")
        seconds = 5.0 if quick else 30.0
        share, decoded = cpu_share(capture, seconds, keys)
    result.add(
        f"CPU, {SENSORS} sensors advertising every second",
        100 * share,
        "% of one core",
        at_most=5,
        note=f"{decoded} adverts decoded in {seconds:g} s, replayed from a capture (JSON parsing"
        " included, BlueZ/D-Bus not)",
    )
    result.details.update({"adverts": len(adverts), "decoded_in_real_time": decoded})
    return result
