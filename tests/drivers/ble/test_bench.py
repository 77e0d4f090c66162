"""The bench helpers measure the real path (hub, drivers, decoders)."""

from __future__ import annotations

import io

from citygate.drivers.ble.advert import from_line
from citygate_sim.ble import BleSimulator
from tests.drivers.ble.bench import bench_ble

from .bench_part import sensors


def test_bench_ble_decodes_every_advert_of_100_sensors() -> None:
    specs = sensors()
    keys = {s.address: s.bindkey for s in specs if s.bindkey is not None}
    stream = io.StringIO()
    BleSimulator(specs, seed=1, start=1_764_000_000.0).write_capture(stream, 3)
    adverts = [from_line(line) for line in stream.getvalue().splitlines()]
    assert len({a.address for a in adverts}) == 100
    encrypted = sum(a.address in keys for a in adverts)
    assert encrypted == 20 * 3  # 20 encrypted sensors, 3 s of one advert a second

    import itertools
    import math
    import time
    import types
    from unittest import mock

    from tests.drivers.ble import bench

    # The real figure is adverts decoded over the wall time of the run, which lies inside
    # the time the call took: at least every advert over that time, and finite.
    started = time.perf_counter()
    rate = bench_ble(adverts, keys)
    took = time.perf_counter() - started
    assert math.isfinite(rate)
    assert rate * took >= len(adverts)

    # With a clock that moves 1 s per reading the run lasts exactly 1 s, so the figure is
    # the count decoded: every advert once, never an undecodable one.
    ticks = itertools.count()
    clock = types.SimpleNamespace(
        perf_counter=lambda: float(next(ticks)), process_time=time.process_time
    )
    with mock.patch.object(bench, "time", clock):
        assert bench_ble(adverts, keys) == len(adverts)
        assert bench_ble(adverts, {}) == len(adverts) - encrypted  # no key: not decoded
        assert bench_ble(adverts[:0], keys) == 0
