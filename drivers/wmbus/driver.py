"""The ``wmbus`` driver: one push driver per wireless meter, fed by its receiver.

A device's driver listens for its ``meter_id`` on the runtime's :class:`Receiver` of
its ``[[wmbus]]`` (``DeviceContext.hub``, built by the factory's ``receiver`` hook).
It decodes every telegram of that id with the meter's key, keeps the latest value of
each quantity and emits them at most once per ``interval`` (the first at once), with
``rssi`` (dBm) when the receiver measured it. With no decoded telegram for 3 ×
interval it raises :class:`DeviceSilent`, naming the receiver's trouble if any.

Hostile air. A telegram that does not decrypt (wrong key, or corrupt: no ``2F2F``,
MAC or payload CRC wrong) counts in ``decode_errors`` and gives no values; one from
a meter with a key that is not encrypted is refused (``refused_unencrypted``): anyone
can send under any id. Each kind is logged once per episode (when it starts, and
when none came for an interval or :data:`EPISODE_QUIET_S`, with the count). The
counts live in a :class:`Tally` the factory keeps per device id (they count since
the agent started, across restarts of the driver).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from citygate.drivers.api import (
    DeviceContext,
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
    WmbusSettings,
    __version__,
)
from citygate.drivers.mbus.decode import to_measurements
from citygate.drivers.wmbus import config
from citygate.drivers.wmbus.config import WmbusDeviceConfig
from citygate.drivers.wmbus.decode import decode_telegram
from citygate.drivers.wmbus.frame import WmbusError
from citygate.drivers.wmbus.receiver import Heard, Receiver, ReplaySource, StickSource
from citygate.drivers.wmbus.security import UnencryptedRefused, WrongKey

__all__ = [
    "EPISODE_QUIET_S",
    "SILENT_AFTER_INTERVALS",
    "DeviceSilent",
    "Tally",
    "WmbusDriver",
    "WmbusFactory",
    "factory",
    "make_receiver",
]

log = logging.getLogger(__name__)

SILENT_AFTER_INTERVALS: Final = 3
EPISODE_QUIET_S: Final = 60.0
"""A run of refused or undecodable telegrams ends after this long without one."""


class DeviceSilent(SilentDevice):
    """No decodable telegram from a wireless meter for 3 × its interval."""


class Tally:
    """What one device's drivers heard and refused, kept across driver restarts."""

    __slots__ = (
        "decode_errors",
        "errors",
        "last_error",
        "meter",
        "refusals",
        "refused_unencrypted",
        "rssi",
        "telegrams",
    )

    def __init__(self) -> None:
        self.telegrams = 0
        self.decode_errors = 0
        self.refused_unencrypted = 0
        self.last_error: str | None = None
        self.meter: dict[str, str | int] | None = None
        self.rssi: int | None = None
        self.errors = Episode(EPISODE_QUIET_S)
        self.refusals = Episode(EPISODE_QUIET_S)


def make_receiver(settings: WmbusSettings) -> Receiver:
    """The receiver of a ``[[wmbus]]`` table (a stick, or a replayed capture)."""
    replay, loop = settings.replay, settings.replay_loop
    if replay is not None:
        return Receiver(lambda: ReplaySource(replay, loop), name=settings.id)
    port, dongle, mode = settings.port, settings.dongle, settings.mode
    if port is None or dongle is None:
        raise ValueError(f"[[wmbus]] {settings.id}: port and dongle, or replay, are required")
    return Receiver(lambda: StickSource(port, dongle, mode), name=settings.id)


class WmbusDriver:
    """One wireless meter (a :class:`~citygate.drivers.api.PushDriver`)."""

    def __init__(
        self,
        settings: WmbusDeviceConfig,
        context: DeviceContext,
        *,
        receiver: Receiver | None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tally: Tally | None = None,
    ) -> None:
        self.settings = settings
        self.device_id = context.device_id
        self.interval = context.interval
        self.receiver = receiver
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self.schedule = PushSchedule(self.interval, silent_after=SILENT_AFTER_INTERVALS)
        self._records_checked = False
        self._names_warned = False
        self.tally = Tally() if tally is None else tally
        quiet = max(EPISODE_QUIET_S, self.interval)
        self.tally.errors.quiet = self.tally.refusals.quiet = quiet

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
        """Emit this meter's values until cancelled; raise TransportError when silent."""
        receiver = self.receiver
        if receiver is None:
            raise TransportError(
                f'wmbus receiver "{self.settings.receiver}" is not running: a wireless meter '
                "is read by the agent (citygate run), which runs its [[wmbus]] receiver"
            )
        schedule = self.schedule
        schedule.listening(self._clock())

        def on_telegram(heard: Heard) -> None:
            self._take(heard, emit)

        with receiver.subscribe(self.settings.meter_id, on_telegram):
            cached = receiver.latest(self.settings.meter_id)
            if cached is not None and self._wall_clock() - cached.time < schedule.silence_limit:
                self._take(cached, emit)
            while True:
                await self._sleep(schedule.tick)
                self._tick(receiver, emit)

    def status_facts(self) -> Mapping[str, Any]:
        """``meter`` (id, manufacturer, version, medium, once decoded) and ``wmbus`` counts."""
        tally = self.tally
        facts: dict[str, Any] = {}
        if tally.meter is not None:
            facts["meter"] = dict(tally.meter)
        wmbus: dict[str, Any] = {
            "telegrams": tally.telegrams,
            "decode_errors": tally.decode_errors,
            "refused_unencrypted": tally.refused_unencrypted,
        }
        if tally.rssi is not None:
            wmbus["rssi"] = tally.rssi
        if self.receiver is not None:
            wmbus["receiver"] = self.receiver.facts()
        facts["wmbus"] = wmbus
        return facts

    def _take(self, heard: Heard, emit: Emit) -> None:
        tally = self.tally
        tally.telegrams += 1
        now = self._clock()
        try:
            telegram = decode_telegram(heard.telegram.data, self.settings.key, crc_present=False)
        except UnencryptedRefused:
            tally.refused_unencrypted += 1
            tally.last_error = "unencrypted telegram refused: the device has a key"
            if tally.refusals.note(now):
                log.warning(
                    "%s: refused an unencrypted telegram from meter %s: the device has a key; "
                    "counting them in refused_unencrypted",
                    self.device_id,
                    self.settings.meter_id,
                )
            return
        except WmbusError as exc:
            tally.decode_errors += 1
            tally.last_error = (
                "wrong key or corrupt telegram" if isinstance(exc, WrongKey) else str(exc)
            )
            if tally.errors.note(now):
                log.warning(
                    "%s: meter %s: %s; counting them in decode_errors",
                    self.device_id,
                    self.settings.meter_id,
                    tally.last_error,
                )
            return
        if telegram.header is not None:
            tally.meter = telegram.header.meter_info()
        keep = self.settings.records
        self._check_records(keep, [r.name for r in telegram.records])
        measurements = to_measurements(telegram, keep)
        rssi = heard.telegram.rssi
        if rssi is not None:
            tally.rssi = rssi
            measurements.append(Measurement("rssi", rssi, "dBm"))
        values = self.schedule.take(measurements, now)
        self._warn_names()
        if values is not None:
            emit(values)

    def _warn_names(self) -> None:
        if self.schedule.dropped and not self._names_warned:
            self._names_warned = True
            log.warning(
                "%s: meter %s sends more than %d quantities; dropping the values of new ones",
                self.device_id,
                self.settings.meter_id,
                self.schedule.max_names,
            )

    def _check_records(self, keep: frozenset[str] | None, names: list[str]) -> None:
        if keep is None or self._records_checked:
            return
        self._records_checked = True
        missing = sorted(keep - set(names))
        if missing:
            log.warning(
                "%s: records %s are not in the meter's telegram (it sends %s)",
                self.device_id,
                ", ".join(missing),
                ", ".join(names) or "none",
            )

    def _tick(self, receiver: Receiver, emit: Emit) -> None:
        now = self._clock()
        if receiver.gave_up:
            raise TransportError(f"wmbus receiver {receiver.name}: {receiver.problem}")
        values = self.schedule.due(now)
        if values is not None:
            emit(values)
        errors = self.tally.errors.ended(now)
        if errors is not None:
            log.info("%s: telegrams decode again (%d undecodable in all)", self.device_id, errors)
        refused = self.tally.refusals.ended(now)
        if refused is not None:
            log.info("%s: no unencrypted telegram refused for a while (%d in all)", self.device_id,
                     refused)  # fmt: skip
        silent_for = self.schedule.silent_for(now)
        if silent_for >= self.schedule.silence_limit:
            raise DeviceSilent(self._silence_message(receiver, silent_for))

    def _silence_message(self, receiver: Receiver, silent_for: float) -> str:
        text = f"no telegram for {silent_for:.0f} s"
        if self.tally.last_error is not None and self.tally.telegrams:
            text = f"no decodable telegram for {silent_for:.0f} s ({self.tally.last_error})"
        if receiver.problem is not None:
            text += f"; wmbus {receiver.name}: {receiver.problem}"
        return text


class WmbusFactory:
    """Entry point ``citygate.drivers: wmbus``."""

    name = "wmbus"
    version = __version__
    default_interval = config.DEFAULT_INTERVAL
    fields: Mapping[str, Field] = config.FIELDS
    hub = None

    def __init__(self) -> None:
        self._tallies: dict[str, Tally] = {}

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> Any:
        return config.configure(options, context)

    def receiver(self, settings: WmbusSettings) -> Receiver:
        """The receiver of one ``[[wmbus]]`` (the ``receiver`` hook), run by the runtime
        and handed to the devices naming it in ``DeviceContext.hub``."""
        return make_receiver(settings)

    def create(self, driver_config: Any, context: DeviceContext) -> PushDriver:
        hub = context.hub
        tally = self._tallies.setdefault(context.device_id, Tally())
        return WmbusDriver(
            driver_config,
            context,
            receiver=hub if isinstance(hub, Receiver) else None,
            tally=tally,
        )

    def expected_readings(self, driver_config: WmbusDeviceConfig) -> int | None:
        """Readings per sample (``citygate check`` sizing): the kept records,
        ``meter_status`` and ``rssi``; None without ``records``."""
        return None if driver_config.records is None else len(driver_config.records) + 2

    @property
    def scan(self) -> ScanCommand:
        """``citygate scan wmbus``: the meters a receiver hears, config snippets."""
        from citygate.drivers.wmbus.scan import command  # noqa: PLC0415

        return command


factory = WmbusFactory()
"""The entry point ``citygate.drivers: wmbus``."""

if TYPE_CHECKING:
    _: DriverFactory = factory
