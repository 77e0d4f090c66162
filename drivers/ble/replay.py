"""Capture files: write what the radio hears, replay it instead of the radio.

Replayed adverts keep their relative timing (the first at once) and go through
exactly the same decoding as live ones; an advert's time is the moment of
replay. Lines that are not adverts are skipped and counted
(:attr:`ReplaySource.bad_lines`), the first one logged with its line number.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import IO

from citygate.drivers.ble.advert import Advert, CaptureError, from_line, to_line
from citygate.drivers.ble.scanner import AdvertListener

__all__ = ["CaptureWriter", "ReplaySource"]

log = logging.getLogger(__name__)


class ReplaySource:
    """Adverts from a capture file, as an advert source of a :class:`ScannerHub`."""

    radio = False

    def __init__(
        self,
        path: Path,
        loop: bool = False,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.loop = loop
        self._sleep = sleep
        self._wall_clock = wall_clock
        self.bad_lines = 0
        self.replayed = 0

    async def run(self, deliver: AdvertListener, started: Callable[[], None]) -> None:
        started()
        while True:
            delivered = await self._play_once(deliver)
            if not self.loop:
                return
            if not delivered:
                # A capture without a single advert would spin; say so and stop.
                log.warning("BLE replay %s: no advert in the file; nothing to loop", self.path)
                return

    async def _play_once(self, deliver: AdvertListener) -> int:
        delivered = 0
        previous: float | None = None
        with self.path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    advert = from_line(line)
                except CaptureError as exc:
                    self.bad_lines += 1
                    if self.bad_lines == 1:
                        log.warning("%s:%d: skipped: %s", self.path, number, exc)
                    continue
                if previous is not None and advert.time > previous:
                    await self._sleep(advert.time - previous)
                previous = advert.time
                deliver(replace(advert, time=self._wall_clock()))
                delivered += 1
                self.replayed += 1
        return delivered


class CaptureWriter:
    """Appends adverts to a capture file, one JSON line each."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.written = 0

    def __call__(self, advert: Advert) -> None:
        self._stream.write(to_line(advert) + "\n")
        self.written += 1
