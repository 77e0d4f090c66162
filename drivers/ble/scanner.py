"""One scanner per adapter, shared by every BLE device, and how it heals itself.

A :class:`ScannerHub` runs one :class:`AdvertSource` (the radio through bleak,
or a capture file) and routes each advert to the listeners of its address.
When the source fails (BlueZ says "operation in progress", "not ready", the
adapter is gone, D-Bus or bluetoothd restarted) or goes silent while devices
listen (no advert for ``silence_limit`` seconds), the hub escalates:

1. restart the scan, with capped exponential backoff (``restarts`` times);
2. power-cycle the adapter through BlueZ, then restart (``power_cycles`` times);
3. give up: :meth:`ScannerHub.run` raises :class:`ScannerGaveUp`, a fatal error
   that ends the agent so that systemd restarts it.

Each step is logged once; the hub's :attr:`ScannerHub.problem` says what is
going on, and drivers put it in their devices' status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final, Literal, Protocol

from bleak import BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakDBusError

from citygate.drivers.api import FatalDriverError
from citygate.drivers.ble.advert import Advert

__all__ = [
    "AdvertListener",
    "AdvertSource",
    "BleakSource",
    "ScannerGaveUp",
    "ScannerHub",
    "describe_scanner_error",
    "power_cycle_adapter",
]

log = logging.getLogger(__name__)

AdvertListener = Callable[[Advert], None]
Sleep = Callable[[float], Awaitable[None]]

START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0
POWER_TIMEOUT_S: Final = 10.0
SILENCE_LIMIT_S: Final = 600.0
"""No advert at all for this long while devices listen: the adapter is stuck."""

# Passive scanning through BlueZ needs patterns (an advertisement monitor):
# BTHome and 0x181A service data, Ruuvi manufacturer data.
PASSIVE_PATTERNS: Final = [
    OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc"),
    OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\x1a\x18"),
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x99\x04"),
]


class ScannerGaveUp(FatalDriverError):
    """The scanner could not be healed; fatal: the agent exits, systemd restarts it."""


class _Silent(Exception):
    """The source delivered nothing for too long."""


class AdvertSource(Protocol):
    """Where adverts come from: the radio or a capture file."""

    @property
    def radio(self) -> bool:
        """True for a real adapter: silence means trouble and power-cycling may help."""
        ...

    async def run(self, deliver: AdvertListener, started: Callable[[], None]) -> None:
        """Call ``deliver`` for every advert until cancelled (or, for a finite
        source, until it ends); call ``started`` once scanning runs; raise when
        the source fails."""
        ...


def describe_scanner_error(exc: BaseException) -> str:
    """A one-line description of a scanner failure."""
    if isinstance(exc, BleakDBusError):
        details = exc.dbus_error_details
        return f"{exc.dbus_error}: {details}" if details else exc.dbus_error
    if isinstance(exc, FileNotFoundError):
        return f"D-Bus is not available ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return "timed out talking to BlueZ"
    if isinstance(exc, _Silent):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class BleakSource:
    """The radio: one bleak scanner on ``adapter``.

    ``backend`` is bleak's own backend class (``BleakScanner(backend=…)``); None
    picks the platform's (BlueZ on Linux).
    """

    radio = True

    def __init__(
        self,
        adapter: str = "hci0",
        mode: Literal["passive", "active"] = "passive",
        backend: type[BaseBleakScanner] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.adapter = adapter
        self.mode = mode
        self.backend = backend
        self._wall_clock = wall_clock

    async def run(self, deliver: AdvertListener, started: Callable[[], None]) -> None:
        wall_clock = self._wall_clock

        def on_advert(device: BLEDevice, data: AdvertisementData) -> None:
            deliver(
                Advert(
                    address=device.address.upper(),
                    time=wall_clock(),
                    rssi=data.rssi,
                    name=data.local_name,
                    service_data={k.lower(): bytes(v) for k, v in data.service_data.items()},
                    manufacturer_data={k: bytes(v) for k, v in data.manufacturer_data.items()},
                )
            )

        bluez: dict[str, Any] = {"adapter": self.adapter}
        if self.mode == "passive":
            bluez["or_patterns"] = PASSIVE_PATTERNS
        scanner = BleakScanner(
            on_advert,
            scanning_mode=self.mode,
            bluez=bluez,  # type: ignore[arg-type]
            backend=self.backend,
        )
        async with asyncio.timeout(START_TIMEOUT_S):
            await scanner.start()
        try:
            started()
            await asyncio.Event().wait()  # adverts arrive through the callback
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await scanner.stop()


async def power_cycle_adapter(adapter: str) -> None:
    """Switch ``adapter`` off and on through BlueZ (org.bluez.Adapter1.Powered)."""
    # dbus-fast comes with bleak on Linux only; BlueZ exists nowhere else.
    from dbus_fast import BusType, Variant  # noqa: PLC0415
    from dbus_fast.aio import MessageBus  # noqa: PLC0415

    async with asyncio.timeout(POWER_TIMEOUT_S):
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        try:
            introspection = await bus.introspect("org.bluez", f"/org/bluez/{adapter}")
            proxy = bus.get_proxy_object("org.bluez", f"/org/bluez/{adapter}", introspection)
            properties = proxy.get_interface("org.freedesktop.DBus.Properties")
            for powered in (False, True):
                await properties.call_set(  # type: ignore[attr-defined]
                    "org.bluez.Adapter1", "Powered", Variant("b", powered)
                )
        finally:
            bus.disconnect()


class ScannerHub:
    """One adapter's scanner, shared by every BLE device; see the module docstring.

    ``clock`` (monotonic seconds) and ``sleep`` are injectable so that tests
    drive backoff and silence without waiting.
    """

    def __init__(
        self,
        make_source: Callable[[], AdvertSource],
        *,
        name: str = "hci0",
        power_cycle: Callable[[str], Awaitable[None]] | None = power_cycle_adapter,
        silence_limit: float = SILENCE_LIMIT_S,
        restarts: int = 3,
        power_cycles: int = 2,
        backoff_start: float = 2.0,
        backoff_cap: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.name = name
        self._make_source = make_source
        self._power_cycle = power_cycle
        self.silence_limit = silence_limit
        self.restarts = restarts
        self.power_cycles = power_cycles
        self._backoff_start = backoff_start
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._sleep = sleep
        self._by_address: dict[str, list[AdvertListener]] = {}
        self._everything: list[AdvertListener] = []
        self._latest: dict[str, Advert] = {}
        self._known: set[str] = set()
        self._last_heard: float | None = None
        self._since_start: float = clock()
        self.scanning = False
        self.problem: str | None = None
        """What is wrong with the scanner right now (None: scanning fine)."""
        self.gave_up = False
        self.adverts = 0
        self.listener_errors = 0
        self.failures_total = 0
        self.power_cycles_total = 0

    # ------------------------------------------------------------------ listeners

    @contextlib.contextmanager
    def subscribe(self, address: str | None, listener: AdvertListener) -> Iterator[None]:
        """Call ``listener`` with each advert from ``address`` (None: every advert)."""
        key = address.upper() if address is not None else None
        listeners = self._everything if key is None else self._by_address.setdefault(key, [])
        listeners.append(listener)
        if key is not None:
            self._known.add(key)
        try:
            yield
        finally:
            listeners.remove(listener)
            if key is not None and not listeners:
                del self._by_address[key]

    def latest(self, address: str) -> Advert | None:
        """The last advert heard from an ``address`` that was ever subscribed
        (a driver reopened after silence starts from it)."""
        return self._latest.get(address.upper())

    @property
    def listening(self) -> bool:
        return bool(self._by_address or self._everything)

    def _deliver(self, advert: Advert) -> None:
        self.adverts += 1
        self._last_heard = self._clock()
        if self.problem is not None and self.scanning:
            log.info("BLE %s: adverts arrive again", self.name)
            self.problem = None
        if advert.address in self._known:
            self._latest[advert.address] = advert
        listeners = self._by_address.get(advert.address)
        if listeners is not None:
            for listener in tuple(listeners):
                self._call(listener, advert)
        for listener in tuple(self._everything):
            self._call(listener, advert)

    def _call(self, listener: AdvertListener, advert: Advert) -> None:
        # One device's bug must not stop the scanner the others listen to.
        try:
            listener(advert)
        except Exception:
            self.listener_errors += 1
            if self.listener_errors == 1:
                log.exception("BLE %s: a listener failed on an advert from %s", self.name,
                              advert.address)  # fmt: skip

    # ------------------------------------------------------------------ running

    def _started(self) -> None:
        self.scanning = True
        self._since_start = self._clock()

    async def _watch_silence(self, radio: bool) -> None:
        if not radio:
            await asyncio.Event().wait()
        period = max(1.0, self.silence_limit / 10)
        while True:
            await self._sleep(period)
            if not self.scanning or not self._by_address:
                continue
            reference = max(self._last_heard or self._since_start, self._since_start)
            if self._clock() - reference >= self.silence_limit:
                raise _Silent(f"no advert for {self.silence_limit:g} s while devices listen")

    async def _run_once(self, source: AdvertSource) -> None:
        """Run ``source`` with a silence watchdog; return when a finite source ends."""
        self.scanning = False
        self._since_start = self._clock()
        try:
            async with asyncio.TaskGroup() as group:
                watchdog = group.create_task(
                    self._watch_silence(source.radio), name=f"ble-{self.name}-watchdog"
                )
                await source.run(self._deliver, self._started)
                watchdog.cancel()
        except BaseExceptionGroup as group_error:
            raise _first(group_error) from None
        finally:
            self.scanning = False

    async def run(self) -> None:
        """Scan until cancelled, healing the scanner; raise :class:`ScannerGaveUp`."""
        failures = 0  # since the last advert
        cycles = 0
        delay = self._backoff_start
        while True:
            heard_before = self.adverts
            source = self._make_source()
            try:
                await self._run_once(source)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever BlueZ, D-Bus or a backend raised
                error = describe_scanner_error(exc)
            else:
                log.info("BLE %s: the capture ended", self.name)
                self.problem = "the capture ended"
                return
            self.failures_total += 1
            if self.adverts > heard_before:
                failures, cycles, delay = 0, 0, self._backoff_start
            failures += 1
            if failures <= self.restarts:
                self._set_problem(f"scanner failed: {error}; restarting the scan (try {failures})")
            elif source.radio and self._power_cycle is not None and cycles < self.power_cycles:
                cycles += 1
                failures = 0
                self._set_problem(
                    f"scanner failed: {error}; power-cycling the adapter (cycle {cycles})"
                )
                try:
                    await self._power_cycle(self.name)
                    self.power_cycles_total += 1
                except Exception as power_exc:
                    log.warning(
                        "BLE %s: power cycle failed: %s",
                        self.name,
                        describe_scanner_error(power_exc),
                    )
            else:
                self.gave_up = True
                self._set_problem(f"scanner failed: {error}; gave up")
                raise ScannerGaveUp(
                    f"BLE adapter {self.name}: the scanner could not be restarted ({error})"
                )
            await self._sleep(random.uniform(delay / 2, delay))
            delay = min(self._backoff_cap, delay * 2)

    def _set_problem(self, problem: str) -> None:
        if self.problem is None or _step(self.problem) != _step(problem):
            log.warning("BLE %s: %s", self.name, problem)
        else:
            log.debug("BLE %s: %s", self.name, problem)
        self.problem = problem


def _step(problem: str) -> str:
    """The escalation step a problem text names (logged once per step)."""
    for word in ("gave up", "power-cycling", "restarting"):
        if word in problem:
            return word
    return problem


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a group that is not a cancellation."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]
