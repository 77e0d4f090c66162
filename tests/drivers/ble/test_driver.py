"""The ble driver on a scanner hub fed through bleak's backend interface.

Time is a :class:`ManualClock`: the test moves it; nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from citygate.drivers.api import DeviceContext, Measurement, PushDriver, TransportError
from citygate.drivers.ble.bthome import BTHOME_UUID
from citygate.drivers.ble.config import BleDeviceConfig
from citygate.drivers.ble.driver import BleDriver, DeviceSilent, factory
from citygate.drivers.ble.pvvx import ENVIRONMENT_UUID
from citygate.drivers.ble.scanner import BleakSource, ScannerHub

from .radio import ManualClock, Radio, settle

SENSOR = "A4:C1:38:8D:18:B2"
SPEC_MAC = "54:48:E6:8F:80:A5"
SPEC_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


def context(interval: float = 60.0) -> DeviceContext:
    return DeviceContext(device_id="env-1", interval=interval, config_dir=Path("."))


def make_hub(radio: Radio, clock: ManualClock, **kwargs: object) -> ScannerHub:
    return ScannerHub(
        lambda: BleakSource("hci0", "passive", backend=radio.backend()),
        power_cycle=None,
        clock=clock,
        sleep=clock.sleep,
        **kwargs,  # type: ignore[arg-type]
    )


def driver_on(
    hub: ScannerHub, clock: ManualClock, settings: BleDeviceConfig, interval: float = 60.0
) -> BleDriver:
    return BleDriver(settings, context(interval), hub=hub, clock=clock, sleep=clock.sleep)


class Emitted:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.samples: list[tuple[float, dict[str, object]]] = []

    def __call__(self, measurements: Sequence[Measurement]) -> None:
        self.samples.append((self.clock.now, {m.name: m.value for m in measurements}))

    @property
    def values(self) -> list[dict[str, object]]:
        return [v for _, v in self.samples]


@contextlib.asynccontextmanager
async def running(coroutine: object) -> AsyncIterator[asyncio.Task[None]]:
    task: asyncio.Task[None] = asyncio.create_task(coroutine)  # type: ignore[arg-type]
    await settle()
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def bthome(payload: str) -> dict[str, bytes]:
    return {BTHOME_UUID: bytes.fromhex(payload)}


async def test_latest_values_once_per_interval_then_offline_when_silent() -> None:
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    driver = driver_on(hub, clock, BleDeviceConfig(SENSOR, "auto"))
    assert isinstance(driver, PushDriver)
    emitted = Emitted(clock)
    async with running(hub.run()), running(driver.run(emitted)) as driver_task:
        assert radio.running
        radio.advertise(SENSOR, rssi=-70, service_data=bthome("4002CA0903BF13"))
        assert emitted.values == [{"temperature": 25.06, "humidity": 50.55, "rssi": -70}]
        await clock.advance(20)
        radio.advertise(SENSOR, rssi=-71, service_data=bthome("4002CF09"))
        radio.advertise(SENSOR, rssi=-72, service_data=bthome("403A01"))
        await clock.advance(39)
        assert len(emitted.samples) == 1  # held until the interval has passed
        await clock.advance(1)
        assert emitted.values[1] == {
            "temperature": 25.11, "humidity": 50.55, "rssi": -72, "button": "press",
        }  # fmt: skip
        await clock.advance(60)
        assert len(emitted.samples) == 2  # nothing new heard: nothing published
        radio.advertise(SENSOR, rssi=-73, service_data=bthome("4002D009"))
        assert emitted.values[2] == {"temperature": 25.12, "humidity": 50.55, "rssi": -73}
        assert "button" not in emitted.values[2]  # an event is sent once
        await clock.advance(179)
        assert not driver_task.done()
        await clock.advance(1)
        with pytest.raises(DeviceSilent, match=r"no advert for 180 s"):
            await driver_task


async def test_encrypted_sensor_replays_and_a_wrong_key() -> None:
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    right = driver_on(hub, clock, BleDeviceConfig(SPEC_MAC, "bthome", SPEC_KEY), 10)
    wrong_key = bytes.fromhex("814aac74c4f17b6c1581e1ab87816b99")
    wrong = driver_on(hub, clock, BleDeviceConfig(SPEC_MAC, "bthome", wrong_key), 10)
    good, bad = Emitted(clock), Emitted(clock)
    async with running(hub.run()), running(right.run(good)), running(wrong.run(bad)) as wrong_task:
        encrypted = bthome("41E445F3C9962B332211006C7C4519")
        radio.advertise(SPEC_MAC, service_data=encrypted)
        await clock.advance(10)
        radio.advertise(SPEC_MAC, service_data=encrypted)  # replayed: dropped
        await clock.advance(10)
        assert good.values == [{"temperature": 25.06, "humidity": 50.55, "rssi": -60}]
        assert right.decoder.filter.replays_dropped == 1
        assert bad.samples == []
        await clock.advance(10)
        with pytest.raises(DeviceSilent, match=r"no decodable advert for 30 s \(.*bindkey\)"):
            await wrong_task


async def test_silence_names_the_scanner_problem() -> None:
    radio, clock = Radio(), ManualClock()
    radio.start_errors = [FileNotFoundError(2, "No such file or directory")] * 1000
    hub = make_hub(radio, clock, restarts=1000, backoff_cap=5.0)
    driver = driver_on(hub, clock, BleDeviceConfig(SENSOR, "auto"), 10)
    async with running(hub.run()), running(driver.run(Emitted(clock))) as driver_task:
        await clock.advance(30)
        with pytest.raises(DeviceSilent, match="BLE hci0: scanner failed: D-Bus is not available"):
            await driver_task


async def test_private_hub_when_the_runtime_has_none() -> None:
    """``citygate read`` and a runtime without a hub: the driver scans on its own."""
    radio, clock = Radio(), ManualClock()
    driver = BleDriver(
        BleDeviceConfig(SENSOR, "pvvx"),
        context(),
        make_hub=lambda: make_hub(radio, clock),
        clock=clock,
        sleep=clock.sleep,
    )
    emitted = Emitted(clock)
    async with driver, running(driver.run(emitted)):
        custom = bytes.fromhex("B2188D38C1A4A9066911B60B58F70D")
        radio.advertise(SENSOR, service_data={ENVIRONMENT_UUID: custom})
        assert emitted.values[0]["temperature"] == 17.05
    await settle()
    assert radio.running == [] and radio.stops == 1  # the private scanner is stopped


async def test_private_hub_that_gives_up_is_a_transport_error() -> None:
    radio, clock = Radio(), ManualClock()
    radio.start_errors = [FileNotFoundError(2, "No such file or directory")] * 100
    driver = BleDriver(
        BleDeviceConfig(SENSOR, "auto"),
        context(3600),
        make_hub=lambda: make_hub(radio, clock),
        clock=clock,
        sleep=clock.sleep,
    )
    async with running(driver.run(Emitted(clock))) as task:
        await clock.advance(3600)
        with pytest.raises(TransportError, match=r"hci0.*(gave up|could not be restarted)"):
            await task


async def test_reopened_driver_starts_from_an_advert_heard_meanwhile() -> None:
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    config = BleDeviceConfig(SENSOR, "auto")
    first = driver_on(hub, clock, config)
    async with running(hub.run()):
        async with running(first.run(Emitted(clock))) as task:
            await clock.advance(180)
            with pytest.raises(DeviceSilent):
                await task
        radio.advertise(SENSOR, service_data=bthome("4002CA09"))  # while no driver listens
        emitted = Emitted(clock)
        async with running(driver_on(hub, clock, config).run(emitted)):
            assert emitted.values == [{"temperature": 25.06, "rssi": -60}]


def test_factory_builds_a_push_driver_and_validates() -> None:
    settings = factory.configure({"address": SENSOR.lower(), "format": "auto"}, context())
    driver = factory.create(settings, context())
    assert isinstance(driver, BleDriver) and isinstance(driver, PushDriver)
    assert driver.hub is None  # no hub in the context yet: a private one at run time
