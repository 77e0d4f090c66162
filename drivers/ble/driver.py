"""The ``ble`` driver: one push driver per sensor, fed by a shared scanner hub.

A device's driver listens to its address on the runtime's :class:`ScannerHub`
(``DeviceContext.hub``, built by the factory's ``hub`` hook) or, when run alone
(``citygate read`` without ``[ble]``) or by a runtime that has none, on a private hub of its own
that scans the default adapter. It decodes every advert, keeps the latest value
of each quantity and emits them at most once per ``interval`` (the first at
once); one-off events (a button press) are emitted once. A device with no
decodable advert for 3 × interval raises :class:`DeviceSilent`; the scanner's
own trouble is named in that error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from citygate.drivers.api import (
    BleSettings,
    DeviceContext,
    DriverFactory,
    Emit,
    Field,
    Measurement,
    PushDriver,
    ScanCommand,
    SilentDevice,
    TransportError,
    __version__,
)
from citygate.drivers.ble import config
from citygate.drivers.ble.advert import Advert
from citygate.drivers.ble.config import BleDeviceConfig
from citygate.drivers.ble.decode import AdvertDecoder
from citygate.drivers.ble.replay import ReplaySource
from citygate.drivers.ble.scanner import BleakSource, ScannerGaveUp, ScannerHub

__all__ = ["SILENT_AFTER_INTERVALS", "BleDriver", "BleFactory", "DeviceSilent", "factory"]

SILENT_AFTER_INTERVALS: Final = 3


class DeviceSilent(SilentDevice):
    """No decodable advert from a push device for 3 × its interval."""


def private_hub() -> ScannerHub:
    """A hub on the default adapter, passive: for a driver that runs alone."""
    return ScannerHub(lambda: BleakSource("hci0", "passive"), name="hci0")


class BleDriver:
    """One BLE sensor (a :class:`~citygate.drivers.api.PushDriver`)."""

    def __init__(
        self,
        settings: BleDeviceConfig,
        context: DeviceContext,
        *,
        hub: ScannerHub | None = None,
        make_hub: Callable[[], ScannerHub] = private_hub,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.device_id = context.device_id
        self.interval = context.interval
        self.hub = hub
        self._make_hub = make_hub
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self.decoder = AdvertDecoder(settings.format, settings.bindkey)
        self._latest: dict[str, Measurement] = {}
        self._events: list[Measurement] = []
        self._pending = False
        self._last_emit: float | None = None
        self._last_decoded: float | None = None
        self._listening_since = 0.0
        self.adverts_heard = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def run(self, emit: Emit) -> None:
        """Emit this sensor's values until cancelled; raise TransportError when silent."""
        if self.hub is not None:
            await self._listen(self.hub, emit)
            return
        hub = self._make_hub()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(hub.run(), name=f"{self.device_id}:ble-scanner")
                await self._listen(hub, emit)
        except* ScannerGaveUp as gave_up:
            raise TransportError(str(gave_up.exceptions[0])) from None
        except* TransportError as failed:
            raise failed.exceptions[0] from None

    async def _listen(self, hub: ScannerHub, emit: Emit) -> None:
        tick = min(1.0, self.interval / 4)
        self._listening_since = self._clock()

        def on_advert(advert: Advert) -> None:
            self._take(advert, emit)

        with hub.subscribe(self.settings.address, on_advert):
            cached = hub.latest(self.settings.address)
            fresh_for = SILENT_AFTER_INTERVALS * self.interval
            if cached is not None and self._wall_clock() - cached.time < fresh_for:
                self._take(cached, emit)
            while True:
                await self._sleep(tick)
                self._tick(hub, emit)

    def _take(self, advert: Advert, emit: Emit) -> None:
        self.adverts_heard += 1
        decoded = self.decoder.decode(advert)
        if decoded is None:
            return
        now = self._clock()
        self._last_decoded = now
        for measurement in decoded.measurements:
            self._latest[measurement.name] = measurement
        self._events.extend(decoded.events)
        self._pending = True
        if self._last_emit is None or now - self._last_emit >= self.interval:
            self._flush(emit, now)

    def _flush(self, emit: Emit, now: float) -> None:
        emit([*self._latest.values(), *self._events])
        self._events.clear()
        self._pending = False
        self._last_emit = now

    def _tick(self, hub: ScannerHub, emit: Emit) -> None:
        now = self._clock()
        if hub.gave_up:
            raise TransportError(f"BLE adapter {hub.name}: {hub.problem}")
        if self._pending and self._last_emit is not None and now - self._last_emit >= self.interval:
            self._flush(emit, now)
        reference = max(self._last_decoded or self._listening_since, self._listening_since)
        silent_for = now - reference
        if silent_for >= SILENT_AFTER_INTERVALS * self.interval:
            raise DeviceSilent(self._silence_message(hub, silent_for))

    def _silence_message(self, hub: ScannerHub, silent_for: float) -> str:
        text = f"no advert for {silent_for:.0f} s"
        if self.adverts_heard and self.decoder.last_error is not None:
            text = f"no decodable advert for {silent_for:.0f} s ({self.decoder.last_error})"
        if hub.problem is not None:
            text += f"; BLE {hub.name}: {hub.problem}"
        return text


class BleFactory:
    """Entry point ``citygate.drivers: ble``."""

    name = "ble"
    version = __version__
    default_interval = config.DEFAULT_INTERVAL
    fields: Mapping[str, Field] = config.FIELDS

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> Any:
        return config.configure(options, context)

    def hub(self, settings: BleSettings) -> ScannerHub:
        """The scanner hub of the ``[ble]`` adapter (the ``hub`` hook), run by the
        runtime and handed to every BLE device in ``DeviceContext.hub``."""
        adapter, replay, loop = settings.adapter, settings.replay, settings.replay_loop
        if replay is not None:
            return ScannerHub(lambda: ReplaySource(replay, loop), name=adapter)
        mode: Literal["passive", "active"] = "active" if settings.mode == "active" else "passive"
        return ScannerHub(lambda: BleakSource(adapter, mode), name=adapter)

    def create(self, driver_config: Any, context: DeviceContext) -> PushDriver:
        hub = context.hub
        return BleDriver(driver_config, context, hub=hub if isinstance(hub, ScannerHub) else None)

    @property
    def scan(self) -> ScanCommand:
        """``citygate scan ble``: the sensors heard, their values, config snippets."""
        # Imported when asked: only `citygate scan` needs it.
        from citygate.drivers.ble.scan import command  # noqa: PLC0415

        return command


factory = BleFactory()
"""The entry point ``citygate.drivers: ble``."""

if TYPE_CHECKING:
    _: DriverFactory = factory
