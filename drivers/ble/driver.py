"""The ``ble`` driver: one push driver per sensor, fed by a shared scanner hub.

A device's driver listens to its address on the runtime's :class:`ScannerHub`
(``DeviceContext.hub``, built by the factory's ``hub`` hook) or, when run alone
(``citygate read`` without ``[ble]``) or by a runtime that has none, on a private hub of its own
that scans the default adapter. It decodes every advert, keeps the latest value
of each quantity and emits them at most once per ``interval`` (the first at
once); one-off events (a button press) are emitted once. A device with no
decodable advert for 3 × interval raises :class:`DeviceSilent`; the scanner's
own trouble is named in that error.

Hostile air. A device with a ``bindkey`` refuses every unencrypted advert from
its address (counted: ``rejected_adverts``). At most :data:`EVENTS_PER_INTERVAL`
events are published per interval; the excess is dropped (``dropped_events``).
Both are logged once per episode: when the first one comes, and when none came
for :data:`EPISODE_QUIET_S` (or one interval, if longer), with the episode's
count. The counts (and replayed encrypted adverts, ``replayed_adverts``) are the
driver's status facts; they and the episodes live in a :class:`Tally` that the
factory keeps per device id, so they count since the agent started, across the
restarts of the device's driver.

Replay protection outlives the driver: the last encryption counter accepted
is kept in ``DeviceContext.state`` (with the device's address and a fingerprint
of its key, so that another sensor or key under the same id starts afresh).
It is saved when it changed, at most every :data:`SAVE_EVERY_S` seconds, and
when the driver stops. The window this leaves: after a crash or power loss, the
adverts the sensor sent in the last :data:`SAVE_EVERY_S` seconds before it can
each be replayed once (until the sensor's next advert moves the counter on). A
sensor whose counter restarted (a reset that lost it) stays refused as a replay
until it passes the saved counter: delete ``<data_dir>/state/<device id>`` with
the agent stopped to accept it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from citygate.drivers.api import (
    BleSettings,
    DeviceContext,
    DeviceState,
    DriverFactory,
    Emit,
    Episode,
    Field,
    Measurement,
    PushDriver,
    PushSchedule,
    ScanCommand,
    SilentDevice,
    TransportError,
    __version__,
)
from citygate.drivers.ble import config
from citygate.drivers.ble.advert import Advert
from citygate.drivers.ble.config import BleDeviceConfig
from citygate.drivers.ble.decode import AdvertDecoder, detect
from citygate.drivers.ble.replay import ReplaySource
from citygate.drivers.ble.scanner import BleakSource, ScannerGaveUp, ScannerHub

__all__ = [
    "EPISODE_QUIET_S",
    "EVENTS_PER_INTERVAL",
    "SAVE_EVERY_S",
    "SILENT_AFTER_INTERVALS",
    "BleDriver",
    "BleFactory",
    "DeviceSilent",
    "Tally",
    "factory",
]

log = logging.getLogger(__name__)

SILENT_AFTER_INTERVALS: Final = 3
EVENTS_PER_INTERVAL: Final = 32
"""Most events (button presses, …) one device publishes per interval; the rest are dropped."""
SAVE_EVERY_S: Final = 10.0
"""Least time between two saves of a device's replay state."""
EPISODE_QUIET_S: Final = 60.0
"""A run of refused adverts or dropped events ends after this long without one."""
_STATE_VERSION: Final = 1


class DeviceSilent(SilentDevice):
    """No decodable advert from a push device for 3 × its interval."""


class Tally:
    """What one device's drivers refused and dropped, kept across driver restarts."""

    __slots__ = ("dropped_events", "drops", "refusals", "rejected_adverts", "replayed_adverts")

    def __init__(self) -> None:
        self.rejected_adverts = 0
        self.replayed_adverts = 0
        self.dropped_events = 0
        self.refusals = Episode(EPISODE_QUIET_S)
        self.drops = Episode(EPISODE_QUIET_S)


def _key_fingerprint(bindkey: bytes) -> str:
    """Tells keys apart in a state file without keeping anything that helps guess one."""
    return hashlib.sha256(b"citygate ble state\0" + bindkey).hexdigest()[:16]


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
        tally: Tally | None = None,
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
        self.schedule = PushSchedule(self.interval, silent_after=SILENT_AFTER_INTERVALS)
        self._events: list[Measurement] = []
        self._names_warned = False
        self.adverts_heard = 0
        self.tally = Tally() if tally is None else tally
        quiet = max(EPISODE_QUIET_S, self.interval)
        self.tally.refusals.quiet = self.tally.drops.quiet = quiet
        # Replay protection that outlives the driver (encrypted sensors only).
        self._state: DeviceState | None = context.state if settings.bindkey is not None else None
        self._restored = False
        self._saved_counter: int | None = None
        self._last_save: float | None = None

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
        self._restore()
        try:
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
        finally:
            self._save(force=True)

    def status_facts(self) -> Mapping[str, Any]:
        """The device's hostile-air counts (a :class:`~citygate.drivers.api.ReportsStatus`)."""
        tally = self.tally
        return {
            "rejected_adverts": tally.rejected_adverts,
            "replayed_adverts": tally.replayed_adverts,
            "dropped_events": tally.dropped_events,
        }

    # ------------------------------------------------------------------ replay state

    def _state_bytes(self, counter: int) -> bytes:
        assert self.settings.bindkey is not None
        record = {
            "v": _STATE_VERSION,
            "address": self.settings.address,
            "key": _key_fingerprint(self.settings.bindkey),
            "counter": counter,
        }
        return json.dumps(record, separators=(",", ":")).encode()

    def _restore(self) -> None:
        """Start from the last counter saved for this sensor and key (once per driver)."""
        if self._restored or self._state is None:
            return
        self._restored = True
        data = self._state.load()
        if not data:
            return
        counter = self._parse_state(data)
        if counter is None:
            self._state.save(b"")  # told once: the next driver finds nothing to complain about
            return
        self._saved_counter = counter
        if self.decoder.filter.last_counter is None:
            self.decoder.filter.last_counter = counter

    def _parse_state(self, data: bytes) -> int | None:
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            record = None
        if not isinstance(record, dict) or record.get("v") != _STATE_VERSION:
            log.warning("%s: saved replay state unreadable; starting without it", self.device_id)
            return None
        assert self.settings.bindkey is not None
        counter = record.get("counter")
        if (
            record.get("address") != self.settings.address
            or record.get("key") != _key_fingerprint(self.settings.bindkey)
            or not isinstance(counter, int)
            or isinstance(counter, bool)
            or not 0 <= counter < 2**32
        ):
            # Another sensor or key under this id (or a counter out of range): start afresh.
            log.info("%s: saved replay state is for another sensor or key; ignored", self.device_id)
            return None
        return counter

    def _save(self, now: float | None = None, *, force: bool = False) -> None:
        """Save the last accepted counter if it changed: at most every SAVE_EVERY_S, or now
        (``force``, when the driver stops)."""
        counter = self.decoder.filter.last_counter
        if self._state is None or counter is None or counter == self._saved_counter:
            return
        if not force:
            if now is None:
                now = self._clock()
            if self._last_save is not None and now - self._last_save < SAVE_EVERY_S:
                return
            self._last_save = now
        self._state.save(self._state_bytes(counter))
        self._saved_counter = counter

    async def _listen(self, hub: ScannerHub, emit: Emit) -> None:
        schedule = self.schedule
        schedule.listening(self._clock())

        def on_advert(advert: Advert) -> None:
            self._take(advert, emit)

        with hub.subscribe(self.settings.address, on_advert):
            cached = hub.latest(self.settings.address)
            if cached is not None and self._wall_clock() - cached.time < schedule.silence_limit:
                self._take(cached, emit)
            while True:
                await self._sleep(schedule.tick)
                self._tick(hub, emit)

    def _take(self, advert: Advert, emit: Emit) -> None:
        self.adverts_heard += 1
        rejected, replayed = self.decoder.rejected, self.decoder.filter.replays_dropped
        decoded = self.decoder.decode(advert)
        self.tally.replayed_adverts += self.decoder.filter.replays_dropped - replayed
        if self.decoder.rejected != rejected:
            self._refused(advert)
        if decoded is None:
            return
        now = self._clock()
        values = self.schedule.take(decoded.measurements, now)
        self._warn_names()
        self._keep_events(decoded.events, now)
        self._save(now)
        if values is not None:
            self._flush(emit, values)

    def _warn_names(self) -> None:
        if self.schedule.dropped and not self._names_warned:
            self._names_warned = True
            log.warning(
                "%s: adverts carry more than %d quantities; dropping the values of new ones",
                self.device_id,
                self.schedule.max_names,
            )

    def _refused(self, advert: Advert) -> None:
        self.tally.rejected_adverts += 1
        if self.tally.refusals.note(self._clock()):
            formats = ",".join(detect(advert)) or "unknown"
            log.warning(
                "%s: refused an unencrypted advert (%s) from %s: the device has a bindkey; "
                "counting them in rejected_adverts",
                self.device_id,
                formats,
                advert.address,
            )

    def _keep_events(self, events: Sequence[Measurement], now: float) -> None:
        room = max(0, EVENTS_PER_INTERVAL - len(self._events))
        self._events.extend(events[:room])
        excess = len(events) - room
        if excess > 0:
            self.tally.dropped_events += excess
            if self.tally.drops.note(now, excess):
                log.warning(
                    "%s: more than %d events in one interval; dropping the rest, "
                    "counting them in dropped_events",
                    self.device_id,
                    EVENTS_PER_INTERVAL,
                )

    def _flush(self, emit: Emit, values: Sequence[Measurement]) -> None:
        emit([*values, *self._events])
        self._events.clear()

    def _tick(self, hub: ScannerHub, emit: Emit) -> None:
        now = self._clock()
        if hub.gave_up:
            raise TransportError(f"BLE adapter {hub.name}: {hub.problem}")
        values = self.schedule.due(now)
        if values is not None:
            self._flush(emit, values)
        self._save(now)
        refused = self.tally.refusals.ended(now)
        if refused is not None:
            log.info("%s: no unencrypted advert refused for a while (%d in all)", self.device_id,
                     refused)  # fmt: skip
        dropped = self.tally.drops.ended(now)
        if dropped is not None:
            log.info("%s: events no longer dropped (%d dropped)", self.device_id, dropped)
        silent_for = self.schedule.silent_for(now)
        if silent_for >= self.schedule.silence_limit:
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

    def __init__(self) -> None:
        self._tallies: dict[str, Tally] = {}

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
        # One tally per device id: its counts and log episodes outlive each driver.
        tally = self._tallies.setdefault(context.device_id, Tally())
        return BleDriver(
            driver_config,
            context,
            hub=hub if isinstance(hub, ScannerHub) else None,
            tally=tally,
        )

    def expected_readings(self, driver_config: config.BleDeviceConfig) -> int | None:
        """Readings per sample (``citygate check`` sizing), with ``rssi``: what the format
        decodes; None for ``auto`` and ``bthome`` (an advert's contents tell)."""
        per_format = {"pvvx": 6, "atc": 6, "ruuvi": 11}
        return per_format.get(driver_config.format)

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
