"""Capture and replay (config.md [ble] replay): timing, loop, bad lines, and the
same decoding as live adverts, through the hub and the driver."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from citygate.drivers.api import BleSettings, DeviceContext, Measurement
from citygate.drivers.ble.advert import Advert, from_line
from citygate.drivers.ble.config import BleDeviceConfig
from citygate.drivers.ble.driver import BleDriver, factory
from citygate.drivers.ble.replay import CaptureWriter, ReplaySource
from citygate.drivers.ble.scanner import ScannerHub
from citygate_sim.ble import DEMO_SENSORS, BleSimulator

from .radio import FakeClock, ManualClock, settle

LINES = [
    '{"t": 100.0, "address": "A4:C1:38:8D:18:B2", "rssi": -60, '
    '"service_data": {"0000fcd2-0000-1000-8000-00805f9b34fb": "4002ca0903bf13"}}',
    "garbage",
    '{"t": 102.5, "address": "A4:C1:38:8D:18:B2", "rssi": -61, '
    '"service_data": {"0000fcd2-0000-1000-8000-00805f9b34fb": "4002cf09"}}',
    "",
    '{"t": 103.0, "address": "A4:C1:38:00:00:01"}',
]


def capture(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "site.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def test_relative_timing_first_at_once_bad_lines_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(start=0.0)
    source = ReplaySource(capture(tmp_path, LINES), sleep=clock.sleep, wall_clock=clock)
    heard: list[Advert] = []
    started: list[bool] = []
    await source.run(heard.append, lambda: started.append(True))
    assert started == [True]
    assert [a.time for a in heard] == [0.0, 2.5, 3.0]  # replay moments, not capture times
    assert clock.slept == [2.5, 0.5]
    assert heard[1].service_data == {
        "0000fcd2-0000-1000-8000-00805f9b34fb": bytes.fromhex("4002cf09")
    }
    assert source.bad_lines == 1 and source.replayed == 3
    assert "site.jsonl:2: skipped: not JSON" in caplog.text


async def test_loop_starts_again(tmp_path: Path) -> None:
    clock = FakeClock(start=0.0)
    source = ReplaySource(capture(tmp_path, LINES), loop=True, sleep=clock.sleep, wall_clock=clock)
    heard: list[Advert] = []

    def deliver(advert: Advert) -> None:
        heard.append(advert)
        if len(heard) == 7:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await source.run(deliver, lambda: None)
    assert [a.time for a in heard] == [0.0, 2.5, 3.0, 3.0, 5.5, 6.0, 6.0]


async def test_an_empty_capture_does_not_spin(tmp_path: Path) -> None:
    source = ReplaySource(capture(tmp_path, ["nothing"]), loop=True, sleep=FakeClock().sleep)
    await source.run(lambda advert: None, lambda: None)
    assert source.replayed == 0 and source.bad_lines == 1


async def test_a_missing_capture_is_a_scanner_failure(tmp_path: Path) -> None:
    clock = FakeClock()
    hub = ScannerHub(
        lambda: ReplaySource(tmp_path / "missing.jsonl"), restarts=2, clock=clock, sleep=clock.sleep
    )
    with pytest.raises(Exception, match=r"could not be restarted.*No such file"):
        await hub.run()
    assert hub.power_cycles_total == 0  # no adapter to power-cycle for a file


def test_capture_writer_writes_what_replay_reads() -> None:
    stream = io.StringIO()
    writer = CaptureWriter(stream)
    advert = Advert(
        "A4:C1:38:8D:18:B2", 12.5, -70, "x", {"0000fcd2-0000-1000-8000-00805f9b34fb": b"\x40"}
    )
    writer(advert)
    writer(advert)
    assert writer.written == 2
    assert [from_line(line) for line in stream.getvalue().splitlines()] == [advert, advert]


async def test_simulated_site_through_hub_and_drivers(tmp_path: Path) -> None:
    """Five simulated sensors (one encrypted) replayed into one hub, one driver each."""
    path = tmp_path / "site.jsonl"
    with path.open("w", encoding="utf-8") as stream:
        BleSimulator(seed=1, start=1_764_000_000.0).write_capture(stream, 120)
    clock = ManualClock()
    hub = ScannerHub(lambda: ReplaySource(path, sleep=clock.sleep), clock=clock, sleep=clock.sleep)
    emitted: dict[str, list[Sequence[Measurement]]] = {s.address: [] for s in DEMO_SENSORS}
    drivers = [
        BleDriver(
            BleDeviceConfig(s.address, "auto", s.bindkey),
            DeviceContext(f"env-{i}", 30.0, Path(".")),
            hub=hub,
            clock=clock,
            sleep=clock.sleep,
        )
        for i, s in enumerate(DEMO_SENSORS)
    ]
    tasks = [asyncio.create_task(d.run(emitted[d.settings.address].append)) for d in drivers]
    hub_task = asyncio.create_task(hub.run())
    await settle()
    for _ in range(121):
        await clock.advance(1)
    assert hub_task.done() and hub.problem == "the capture ended"
    for task in tasks:
        assert not task.done()
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for spec in DEMO_SENSORS:
        samples = emitted[spec.address]
        assert 4 <= len(samples) <= 5, spec  # one at once, then one per 30 s
        names = {m.name for m in samples[-1]}
        assert {"temperature", "humidity", "rssi"} <= names
    ruuvi = emitted["C8:25:2D:8E:4A:11"][-1]
    assert {m.name for m in ruuvi} >= {"pressure", "acceleration_z", "measurement_sequence"}
    encrypted = next(s for s in DEMO_SENSORS if s.bindkey is not None)
    assert drivers[DEMO_SENSORS.index(encrypted)].decoder.decode_errors == 0
    assert json.loads(path.read_text().splitlines()[0])["t"] >= 1_764_000_000.0


async def test_the_factory_hub_replays_a_capture_for_every_device(tmp_path: Path) -> None:
    """What the runtime will do with [ble] replay: one hub, handed to each device."""
    path = capture(tmp_path, [line for line in LINES if line.startswith("{")][:1])
    hub = factory.hub(BleSettings(replay=path))
    heard: list[Advert] = []
    with hub.subscribe("A4:C1:38:8D:18:B2", heard.append):
        await hub.run()
    assert len(heard) == 1 and hub.problem == "the capture ended"
