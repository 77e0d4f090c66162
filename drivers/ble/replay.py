"""Capture files: write what the radio hears, replay it instead of the radio.

Replayed adverts keep their relative timing (the first at once) and go through
exactly the same decoding as live ones; an advert's time is the moment of
replay. Lines that are not adverts (:class:`~citygate.drivers.ble.advert.CaptureError`,
a line longer than :data:`~citygate.drivers.ble.advert.MAX_LINE_CHARS` bytes included,
skipped unread) are counted (:attr:`ReplaySource.bad_lines`), the first one logged
with its line number, and replay goes on with the next line. The capture must be a
regular file (a FIFO or a device would never end).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, BinaryIO, Final

from citygate.drivers.api import OverlongLine, bounded_lines, open_regular
from citygate.drivers.ble.advert import MAX_LINE_CHARS, Advert, CaptureError, from_line, to_line
from citygate.drivers.ble.scanner import AdvertListener

__all__ = ["CaptureWriter", "ReplaySource"]

log = logging.getLogger(__name__)

_YIELD_EVERY: Final = 1000
"""Lines read between two turns given to the event loop (a file of bad lines never sleeps)."""


def open_capture(path: Path) -> BinaryIO:
    """Open a capture file for reading; OSError unless it is a regular file."""
    return open_regular(path, "BLE capture")


def read_lines(stream: BinaryIO) -> Iterator[str | CaptureError]:
    """Each line of ``stream``, or a CaptureError for one longer than
    :data:`MAX_LINE_CHARS` bytes, whose rest is skipped unread in bounded chunks."""
    for line in bounded_lines(stream, MAX_LINE_CHARS):
        if isinstance(line, OverlongLine):
            yield CaptureError(
                f"line longer than {MAX_LINE_CHARS} bytes ({line.size}); skipped unread"
            )
        else:
            yield line


def _parse(line: str | CaptureError) -> Advert | CaptureError | None:
    """The advert of a line, what is wrong with it, or None for a blank line."""
    if isinstance(line, CaptureError):
        return line
    if not line.strip():
        return None
    try:
        return from_line(line)
    except CaptureError as exc:
        return exc


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
        with open_capture(self.path) as stream:
            for number, line in enumerate(read_lines(stream), start=1):
                if number % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                advert = _parse(line)
                if advert is None:
                    continue
                if isinstance(advert, CaptureError):
                    self.bad_lines += 1
                    if self.bad_lines == 1:
                        log.warning("%s:%d: skipped: %s", self.path, number, advert)
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
