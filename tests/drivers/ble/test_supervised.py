"""A BLE device under the runtime's DeviceSupervisor: samples flow, silence shows
in the status, the next advert brings the device back; and the real bleak
backend on a machine without D-Bus ends in a clear, fatal error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from citygate.drivers.api import DeviceContext
from citygate.drivers.ble.bthome import BTHOME_UUID
from citygate.drivers.ble.config import BleDeviceConfig
from citygate.drivers.ble.driver import BleDriver
from citygate.drivers.ble.scanner import BleakSource, ScannerGaveUp, ScannerHub, power_cycle_adapter
from citygate.model import Sample
from citygate.status import Counters, DeviceStatus, StatusBoard
from citygate.supervise import DeviceSupervisor

from .radio import FakeClock, ManualClock, Radio, settle

SENSOR = "A4:C1:38:8D:18:B2"
PLAIN = {BTHOME_UUID: bytes.fromhex("4002CA0903BF13")}


class Supervised:
    """One BLE device, its driver and the runtime's supervisor on a fake radio."""

    def __init__(self) -> None:
        self.radio, self.clock = Radio(), ManualClock()
        radio, clock = self.radio, self.clock
        self.hub = ScannerHub(
            lambda: BleakSource("hci0", backend=radio.backend(), wall_clock=clock),
            power_cycle=None,
            clock=clock,
            sleep=clock.sleep,
        )
        context = DeviceContext("env-1", 60.0, Path("."))
        self.board, counters = StatusBoard(["env-1"]), Counters()
        self.samples: list[Sample] = []

        async def submit(sample: Sample) -> None:
            self.samples.append(sample)

        self.supervisor = DeviceSupervisor(
            "env-1",
            60.0,
            lambda: BleDriver(
                BleDeviceConfig(SENSOR, "auto"),
                context,
                hub=self.hub,
                clock=clock,
                sleep=clock.sleep,
                wall_clock=clock,
            ),
            submit,
            self.board,
            counters,
            lambda: True,
            clock=clock,
            sleep=clock.sleep,
        )

    @property
    def status(self) -> DeviceStatus:
        return self.board.devices["env-1"]

    async def advance_until(self, state: str, seconds: int) -> None:
        for _ in range(seconds):
            if self.status.state == state:
                return
            await self.clock.advance(1)
        assert self.status.state == state


@contextlib.asynccontextmanager
async def supervised() -> AsyncIterator[Supervised]:
    rig = Supervised()
    tasks = [asyncio.create_task(rig.hub.run()), asyncio.create_task(rig.supervisor.run())]
    await settle()
    try:
        yield rig
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_silence_offline_and_back_online_under_the_supervisor() -> None:
    async with supervised() as rig:
        rig.radio.advertise(SENSOR, service_data=PLAIN)
        await settle()
        assert [r.name for r in rig.samples[0].readings] == ["temperature", "humidity", "rssi"]
        assert rig.status.state == "online"
        # Offline once 3 intervals pass without an advert.
        await rig.advance_until("offline", 3 * 60 + 5)
        rig.radio.advertise(SENSOR, service_data={BTHOME_UUID: bytes.fromhex("4002CF09")})
        await rig.advance_until("online", 400)  # the supervisor's retry wait
        assert rig.samples[-1].readings[0].value == 25.11


async def test_the_status_names_the_silence() -> None:
    async with supervised() as rig:
        rig.radio.advertise(SENSOR, service_data=PLAIN)
        await rig.clock.advance(180)
        assert rig.status.error == "no advert for 180 s"


@pytest.mark.skipif(
    Path("/run/dbus/system_bus_socket").exists(), reason="needs a machine without D-Bus"
)
async def test_real_bleak_without_dbus_escalates_then_gives_up() -> None:
    """bleak's own BlueZ backend raises a plain FileNotFoundError here."""
    clock = FakeClock()
    hub = ScannerHub(
        lambda: BleakSource("hci0"), power_cycle=power_cycle_adapter, clock=clock, sleep=clock.sleep
    )
    with pytest.raises(ScannerGaveUp, match="D-Bus is not available"):
        await hub.run()
    assert hub.failures_total == 12 and hub.power_cycles_total == 0  # power cycles failed too
