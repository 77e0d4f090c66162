"""Figures for ``make bench``: adverts decoded per second through the driver, and
the CPU share of many sensors advertising in real time.

Both run the production path: a :class:`ScannerHub` routing adverts by address
to one :class:`BleDriver` per sensor, which decodes and keeps latest values.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from citygate.drivers.api import DeviceContext, Measurement
from citygate.drivers.ble.advert import Advert, CaptureError, from_line
from citygate.drivers.ble.config import BleDeviceConfig
from citygate.drivers.ble.driver import BleDriver
from citygate.drivers.ble.replay import ReplaySource
from citygate.drivers.ble.scanner import AdvertListener, AdvertSource, ScannerHub

__all__ = ["bench_ble", "cpu_share"]


class _ListSource:
    radio = False

    def __init__(self, adverts: Sequence[Advert]) -> None:
        self._adverts = adverts

    async def run(self, deliver: AdvertListener, started: Callable[[], None]) -> None:
        started()
        for advert in self._adverts:
            deliver(advert)


async def _forever(_seconds: float) -> None:
    await asyncio.Event().wait()  # drivers never tick: only the advert path is measured


def _drivers(
    hub: ScannerHub,
    addresses: Sequence[str],
    bindkeys: Mapping[str, bytes],
    interval: float,
    **kw: object,
) -> list[BleDriver]:
    return [
        BleDriver(
            BleDeviceConfig(address, "auto", bindkeys.get(address)),
            DeviceContext(f"ble-{i}", interval, Path(".")),
            hub=hub,
            **kw,  # type: ignore[arg-type]
        )
        for i, address in enumerate(addresses)
    ]


async def _run(
    make_source: Callable[[], AdvertSource],
    addresses: Sequence[str],
    bindkeys: Mapping[str, bytes],
    seconds: float | None,
    **driver_options: object,
) -> tuple[list[BleDriver], float, float, int]:
    hub = ScannerHub(make_source, power_cycle=None, restarts=0)
    drivers = _drivers(hub, addresses, bindkeys, 60.0, **driver_options)
    samples = 0

    def emit(measurements: Sequence[Measurement]) -> None:
        nonlocal samples
        samples += 1

    tasks = [asyncio.create_task(d.run(emit)) for d in drivers]
    await asyncio.sleep(0)
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await hub.run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return drivers, wall, cpu, samples


def _decoded(drivers: Sequence[BleDriver]) -> int:
    return sum(d.adverts_heard - d.decoder.decode_errors - d.decoder.duplicates for d in drivers)


def bench_ble(adverts: Sequence[Advert], bindkeys: Mapping[str, bytes] | None = None) -> float:
    """Adverts decoded per second (as fast as they can be fed) through hub and drivers."""
    addresses = sorted({a.address for a in adverts})
    drivers, wall, _, _ = asyncio.run(
        _run(lambda: _ListSource(adverts), addresses, bindkeys or {}, None, sleep=_forever)
    )
    return _decoded(drivers) / wall if wall > 0 else float("inf")


def cpu_share(
    capture: Path, seconds: float, bindkeys: Mapping[str, bytes] | None = None
) -> tuple[float, int]:
    """Replay ``capture`` in real time through one driver per address for ``seconds``:
    (CPU time / wall time, adverts decoded). 1.0 = one core fully busy."""
    addresses: set[str] = set()
    with capture.open(encoding="utf-8") as lines:
        for line in lines:
            with contextlib.suppress(CaptureError):
                addresses.add(from_line(line).address)
    drivers, wall, cpu, _ = asyncio.run(
        _run(lambda: ReplaySource(capture, loop=True), sorted(addresses), bindkeys or {}, seconds)
    )
    return cpu / wall, _decoded(drivers)
