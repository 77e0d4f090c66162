"""A fake radio at bleak's own backend interface (``BleakScanner(backend=…)``).

``Radio`` is one test's world: it makes backend classes whose ``start()``
follows a script (raise a BlueZ error, succeed) and lets the test advertise
through every running scanner, exactly as bleak's BlueZ backend calls its
detection callbacks. A fake clock drives everything that waits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner


class FakeClock:
    """Monotonic time that moves only when something sleeps on it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class Radio:
    """The air and the adapter, as one test wants them."""

    def __init__(self) -> None:
        self.start_errors: list[BaseException] = []
        """Raised by the next ``start()`` calls, one each, in order."""
        self.running: list[BaseBleakScanner] = []
        self.starts = 0
        self.stops = 0
        self.modes: list[str] = []
        self.bluez_args: list[dict[str, Any]] = []

    def backend(self) -> type[BaseBleakScanner]:
        radio = self

        class FakeBackend(BaseBleakScanner):
            def __init__(
                self,
                detection_callback: Callable[[BLEDevice, AdvertisementData], None] | None,
                service_uuids: list[str] | None,
                scanning_mode: str,
                **kwargs: Any,
            ) -> None:
                super().__init__(detection_callback, service_uuids)
                radio.modes.append(scanning_mode)
                radio.bluez_args.append(dict(kwargs.get("bluez", {})))

            async def start(self) -> None:
                radio.starts += 1
                if radio.start_errors:
                    raise radio.start_errors.pop(0)
                radio.running.append(self)

            async def stop(self) -> None:
                radio.stops += 1
                if self in radio.running:
                    radio.running.remove(self)

        return FakeBackend

    def advertise(
        self,
        address: str,
        *,
        rssi: int = -60,
        name: str | None = None,
        service_data: dict[str, bytes] | None = None,
        manufacturer_data: dict[int, bytes] | None = None,
    ) -> None:
        data = AdvertisementData(
            local_name=name,
            manufacturer_data=manufacturer_data or {},
            service_data=service_data or {},
            service_uuids=list(service_data or {}),
            tx_power=None,
            rssi=rssi,
            platform_data=(),
        )
        for scanner in tuple(self.running):
            device = scanner.create_or_update_device(address, address, name, None, data)
            scanner.call_detection_callbacks(device, data)


class ManualClock:
    """Monotonic time that moves only when the test says so (:meth:`advance`);
    sleepers wake in deadline order."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, deadline)
            if not future.done():
                future.set_result(None)
                await settle()
        self.now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until it waits again."""
    for _ in range(rounds):
        await asyncio.sleep(0)
