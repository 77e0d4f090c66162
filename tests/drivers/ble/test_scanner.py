"""The scanner hub through bleak's backend interface: routing, BlueZ errors,
silence, escalation. A fake clock drives backoff and silence."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from bleak.exc import BleakDBusError, BleakError

from citygate.drivers.ble.advert import Advert
from citygate.drivers.ble.bthome import BTHOME_UUID
from citygate.drivers.ble.scanner import PASSIVE_PATTERNS, BleakSource, ScannerGaveUp, ScannerHub

from .radio import FakeClock, Radio

SENSOR = "A4:C1:38:8D:18:B2"
OTHER = "A4:C1:38:00:00:01"
PLAIN = {BTHOME_UUID: bytes.fromhex("4002CA0903BF13")}


class Rig:
    def __init__(self, radio: Radio, clock: FakeClock) -> None:
        self.radio = radio
        self.clock = clock
        self.power_cycled: list[str] = []
        self.power_error: BaseException | None = None

        async def power_cycle(adapter: str) -> None:
            self.power_cycled.append(adapter)
            if self.power_error is not None:
                raise self.power_error

        self.hub = ScannerHub(
            lambda: BleakSource("hci1", "passive", backend=radio.backend()),
            name="hci1",
            power_cycle=power_cycle,
            silence_limit=300.0,
            clock=clock,
            sleep=clock.sleep,
        )


@pytest.fixture
def rig() -> Rig:
    return Rig(Radio(), FakeClock())


async def until(condition: Callable[[], bool], steps: int = 2000) -> None:
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def running(rig: Rig, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(rig.hub.run())
    try:
        await body()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_adverts_are_routed_by_address(rig: Rig) -> None:
    mine: list[Advert] = []
    everything: list[Advert] = []

    async def body() -> None:
        await until(lambda: bool(rig.radio.running))
        rig.radio.advertise(SENSOR.lower(), name="DIY-sensor", service_data=PLAIN)
        rig.radio.advertise(OTHER, rssi=-80)

    with rig.hub.subscribe(SENSOR, mine.append), rig.hub.subscribe(None, everything.append):
        await running(rig, body)
    assert [a.address for a in mine] == [SENSOR]
    assert mine[0].service_data == PLAIN and mine[0].name == "DIY-sensor" and mine[0].rssi == -60
    assert [a.address for a in everything] == [SENSOR, OTHER]
    assert rig.hub.latest(SENSOR) == mine[0]
    assert rig.hub.latest(OTHER) is None  # never subscribed: not kept
    assert rig.radio.modes == ["passive"]
    assert rig.radio.bluez_args == [{"adapter": "hci1", "or_patterns": PASSIVE_PATTERNS}]
    assert rig.radio.stops == 1  # stopped when the hub was cancelled


async def test_active_mode_needs_no_patterns() -> None:
    radio, clock = Radio(), FakeClock()
    backend = radio.backend()
    hub = ScannerHub(
        lambda: BleakSource("hci0", "active", backend=backend), clock=clock, sleep=clock.sleep
    )
    task = asyncio.create_task(hub.run())
    await until(lambda: bool(radio.running))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert radio.modes == ["active"] and radio.bluez_args == [{"adapter": "hci0"}]


@pytest.mark.parametrize(
    "error",
    [
        BleakDBusError("org.bluez.Error.InProgress", ["Operation already in progress"]),
        BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"]),
        BleakError("adapter 'hci1' not found"),
        FileNotFoundError(2, "No such file or directory"),  # no D-Bus socket at all
        EOFError(),  # D-Bus went away under the scanner
    ],
)
async def test_bluez_errors_restart_the_scan_with_backoff(
    rig: Rig, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    rig.radio.start_errors = [error, error]
    got: list[Advert] = []

    async def body() -> None:
        await until(lambda: bool(rig.radio.running))
        rig.radio.advertise(SENSOR, service_data=PLAIN)

    with (
        caplog.at_level(logging.INFO, "citygate.drivers.ble.scanner"),
        rig.hub.subscribe(SENSOR, got.append),
    ):
        await running(rig, body)
    assert rig.radio.starts == 3
    assert len(got) == 1
    assert rig.hub.problem is None and rig.hub.failures_total == 2
    assert rig.power_cycled == []
    backoff = [s for s in rig.clock.slept if s != 30.0]  # 30 s: the silence watchdog's period
    assert 1.0 <= backoff[0] <= 2.0 and 2.0 <= backoff[1] <= 4.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # logged once, not per try
    assert "restarting the scan" in warnings[0].getMessage()
    assert any("adverts arrive again" in r.getMessage() for r in caplog.records)


async def test_escalation_restart_then_power_cycle_then_give_up(rig: Rig) -> None:
    not_ready = BleakDBusError("org.bluez.Error.NotReady", ["Resource Not Ready"])
    rig.radio.start_errors = [not_ready] * 100
    with pytest.raises(ScannerGaveUp, match=r"hci1.*NotReady"):
        await rig.hub.run()
    # 3 restarts, a power cycle, 3 restarts, a power cycle, 3 restarts, give up.
    assert rig.power_cycled == ["hci1", "hci1"]
    assert rig.radio.starts == 12  # each step follows a failed start: 4 + 4 + 4
    assert rig.hub.gave_up and rig.hub.problem is not None and "gave up" in rig.hub.problem


async def test_a_failing_power_cycle_is_survived_then_given_up(rig: Rig) -> None:
    rig.radio.start_errors = [BleakError("adapter 'hci1' not found")] * 100
    rig.power_error = FileNotFoundError(2, "No such file or directory")
    with pytest.raises(ScannerGaveUp):
        await rig.hub.run()
    assert len(rig.power_cycled) == 2


async def test_silent_adapter_is_restarted_then_recovers(rig: Rig) -> None:
    """bluetoothd restarted under us: the scanner runs but hears nothing."""
    got: list[Advert] = []

    async def body() -> None:
        await until(lambda: rig.radio.starts == 1 and bool(rig.radio.running))
        rig.radio.advertise(SENSOR, service_data=PLAIN)
        silent_from = rig.clock.now
        # Nothing more is heard; the watchdog (fake time) restarts the scan.
        await until(lambda: rig.radio.starts == 2 and bool(rig.radio.running), steps=20000)
        assert rig.clock.now - silent_from >= 300.0
        assert rig.hub.problem is not None and "no advert for 300 s" in rig.hub.problem
        rig.radio.advertise(SENSOR, service_data=PLAIN)

    with rig.hub.subscribe(SENSOR, got.append):
        await running(rig, body)
    assert len(got) == 2
    assert rig.hub.problem is None
    assert rig.power_cycled == []


async def test_silence_without_listeners_is_not_a_failure(rig: Rig) -> None:
    async def body() -> None:
        await until(lambda: bool(rig.radio.running))
        start = rig.clock.now
        await until(lambda: rig.clock.now - start > 3000, steps=20000)

    await running(rig, body)
    assert rig.radio.starts == 1 and rig.hub.failures_total == 0


async def test_silence_escalates_to_giving_up(rig: Rig) -> None:
    with (
        rig.hub.subscribe(SENSOR, lambda advert: None),
        pytest.raises(ScannerGaveUp, match="no advert"),
    ):
        await asyncio.wait_for(rig.hub.run(), timeout=10)
    assert rig.power_cycled == ["hci1", "hci1"]


async def test_a_failing_listener_does_not_stop_the_others(rig: Rig) -> None:
    got: list[Advert] = []

    def broken(advert: Advert) -> None:
        raise RuntimeError("a driver bug")

    async def body() -> None:
        await until(lambda: bool(rig.radio.running))
        rig.radio.advertise(SENSOR, service_data=PLAIN)
        rig.radio.advertise(SENSOR, service_data=PLAIN)

    with rig.hub.subscribe(SENSOR, broken), rig.hub.subscribe(SENSOR, got.append):
        await running(rig, body)
    assert len(got) == 2 and rig.hub.listener_errors == 2
    assert rig.radio.starts == 1
