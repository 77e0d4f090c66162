"""The bench helpers measure the real path (hub, drivers, decoders)."""

from __future__ import annotations

import io

from citygate.drivers.ble.advert import from_line
from citygate.drivers.ble.bench import bench_ble
from citygate_sim.ble import BleSimulator

from .bench_part import sensors


def test_bench_ble_decodes_every_advert_of_100_sensors() -> None:
    specs = sensors()
    keys = {s.address: s.bindkey for s in specs if s.bindkey is not None}
    stream = io.StringIO()
    BleSimulator(specs, seed=1, start=1_764_000_000.0).write_capture(stream, 3)
    adverts = [from_line(line) for line in stream.getvalue().splitlines()]
    assert len({a.address for a in adverts}) == 100
    assert bench_ble(adverts, keys) > 0
    assert bench_ble(adverts[:0], keys) == 0
