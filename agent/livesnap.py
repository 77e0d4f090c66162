"""The live snapshot that ``citygate top`` reads: written only while someone watches.

``citygate top`` reads ``data_dir`` like ``citygate status`` (no socket), but the buffer holds
neither the latest readings nor the broker link, and writing them there with every sample would
wear an SD card for nobody. So the viewer and the agent meet through two small files:

* ``top.watch`` — the viewer (:func:`touch_watch`) sets its modification time every second;
* ``top.json`` — while ``top.watch`` is fresh (modified less than :data:`WATCH_FRESH_S` ago)
  the agent (:class:`LiveSnapshot`) replaces it at most once per second with the latest
  readings of each device, device states, the backlog and the broker link.

Nobody watching: the agent only looks at ``top.watch``'s time once a second, and writes
nothing. The snapshot is written with :func:`citygate.safefile.write_atomic` without fsync
(it is worth nothing after a power cut), is bounded (:data:`MAX_READINGS_PER_DEVICE`,
:data:`MAX_SNAPSHOT_BYTES`), and :func:`parse_snapshot` reads any file, hostile or garbled,
as a :class:`Snapshot` or None.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from citygate.drivers.api import Value
from citygate.model import Sample
from citygate.safefile import create_exclusive, read_regular, write_atomic
from citygate.status import StatusBoard

__all__ = [
    "FORMAT",
    "MAX_READINGS_PER_DEVICE",
    "MAX_SNAPSHOT_BYTES",
    "SNAPSHOT_FILE",
    "WATCH_FILE",
    "WATCH_FRESH_S",
    "DeviceLive",
    "LiveSnapshot",
    "Snapshot",
    "parse_snapshot",
    "read_snapshot",
    "touch_watch",
]

log = logging.getLogger(__name__)

WATCH_FILE: Final = "top.watch"
SNAPSHOT_FILE: Final = "top.json"
FORMAT: Final = "citygate-top/1"
WATCH_FRESH_S: Final = 5.0
"""The agent writes snapshots while ``top.watch`` was touched less than this long ago."""
WRITE_PERIOD_S: Final = 1.0
"""At most one snapshot per this period (a status change shows within it)."""
WRITE_TIMEOUT_S: Final = 5.0
MAX_READINGS_PER_DEVICE: Final = 200
RECENT_SAMPLES: Final = 8  # per device, between two snapshots (a BLE sensor alternates adverts)
"""Readings kept per device (the first names seen); an SDM630 profile has 84."""
MAX_TEXT: Final = 80
"""Longest name, unit, error or string value kept (longer ones are cut)."""
MAX_SNAPSHOT_BYTES: Final = 1024 * 1024
"""Largest snapshot written or read; readings per device are cut first to stay under it."""

_Reading = tuple[str, Value, str | None]


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


# ---------------------------------------------------------------------------- viewer side


def touch_watch(data_dir: Path) -> None:
    """Tell the agent someone watches: set ``top.watch``'s time to now (created if missing;
    a symlink there is not followed). Raises OSError (data_dir missing or not writable)."""
    path = data_dir / WATCH_FILE
    try:
        os.utime(path, follow_symlinks=False)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):  # another viewer just made it
            os.close(create_exclusive(path))


@dataclass(frozen=True, slots=True)
class DeviceLive:
    """One device in a snapshot."""

    id: str
    driver: str
    state: str
    error: str | None
    errors_total: int
    last_sample: float | None
    readings: tuple[_Reading, ...]
    more: int = 0  # readings left out (beyond the caps)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the agent wrote at ``written`` (Unix seconds)."""

    written: float
    pid: int
    gateway: str
    connected: bool
    broker: str
    backlog_samples: int | None
    backlog_bytes: int | None
    oldest_unsent_age_s: float | None
    dropped_samples: int | None
    refused_samples: int
    devices: tuple[DeviceLive, ...] = field(default=())


class _Garbled(Exception):
    pass


def _get(
    data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], *, null: bool = False
) -> Any:
    value = data.get(key)
    if value is None and null:
        return None
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise _Garbled(key)
    if not isinstance(value, kind):
        raise _Garbled(key)
    if isinstance(value, float) and not math.isfinite(value):
        raise _Garbled(key)
    if isinstance(value, str):
        return _cut(value)
    return value


def _reading(item: Any) -> _Reading:
    if not isinstance(item, list) or len(item) != 3:
        raise _Garbled("reading")
    name, value, unit = item
    if not isinstance(name, str) or not (unit is None or isinstance(unit, str)):
        raise _Garbled("reading")
    if not isinstance(value, int | float | str | bool):
        raise _Garbled("reading")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Garbled("reading")
    if isinstance(value, str):
        value = _cut(value)
    return _cut(name), value, None if unit is None else _cut(unit)


def _device(item: Any) -> DeviceLive:
    if not isinstance(item, dict):
        raise _Garbled("device")
    readings = _get(item, "readings", list)
    more = _get(item, "more", int)
    if len(readings) > MAX_READINGS_PER_DEVICE:
        more += len(readings) - MAX_READINGS_PER_DEVICE
        readings = readings[:MAX_READINGS_PER_DEVICE]
    return DeviceLive(
        id=_get(item, "id", str),
        driver=_get(item, "driver", str),
        state=_get(item, "state", str),
        error=_get(item, "error", str, null=True),
        errors_total=_get(item, "errors_total", int),
        last_sample=_get(item, "last_sample", (int, float), null=True),
        readings=tuple(_reading(r) for r in readings),
        more=max(0, more),
    )


def parse_snapshot(data: bytes) -> Snapshot | None:
    """The snapshot in ``data``, or None if it is not one (garbled, hostile, too big)."""
    if len(data) > MAX_SNAPSHOT_BYTES:
        return None
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return None
        backlog = doc.get("backlog")
        if backlog is not None and not isinstance(backlog, dict):
            return None
        backlog = backlog or {}
        devices = _get(doc, "devices", list)
        return Snapshot(
            written=float(_get(doc, "written", (int, float))),
            pid=_get(doc, "pid", int),
            gateway=_get(doc, "gateway", str),
            connected=_get(doc, "connected", bool),
            broker=_get(doc, "broker", str),
            backlog_samples=_get(backlog, "samples", int, null=True),
            backlog_bytes=_get(backlog, "bytes", int, null=True),
            oldest_unsent_age_s=_get(backlog, "oldest_unsent_age_s", (int, float), null=True),
            dropped_samples=_get(backlog, "dropped", int, null=True),
            refused_samples=_get(doc, "refused", int),
            devices=tuple(_device(d) for d in devices),
        )
    except (ValueError, RecursionError, _Garbled):  # json.JSONDecodeError is a ValueError
        return None


def read_snapshot(data_dir: Path) -> tuple[Snapshot | None, str | None]:
    """(the snapshot in ``data_dir``, None) or (None, why not: ``missing``, ``unreadable``)."""
    path = data_dir / SNAPSHOT_FILE
    try:
        data = read_regular(path, max_bytes=MAX_SNAPSHOT_BYTES, follow_symlinks=False)
    except FileNotFoundError:
        return None, "missing"
    except OSError:
        return None, "unreadable"
    snapshot = parse_snapshot(data)
    return (snapshot, None) if snapshot is not None else (None, "unreadable")


# ---------------------------------------------------------------------------- agent side


class LiveSnapshot:
    """The agent's side: keeps the latest readings per device, writes ``top.json`` while watched.

    ``facts`` gives the header (gateway, broker link, backlog: :meth:`Agent.live_facts`);
    ``drivers`` the driver of each configured device. :meth:`run` is one task of the agent.
    """

    def __init__(
        self,
        data_dir: Path,
        board: StatusBoard,
        facts: Callable[[], Awaitable[dict[str, Any]]],
        drivers: Callable[[], Mapping[str, str]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = data_dir
        self._board = board
        self._facts = facts
        self._drivers = drivers
        self._clock = clock
        self._latest: dict[str, dict[str, tuple[Value, str | None]]] = {}
        self._left_out: dict[str, int] = {}
        # The hot path only keeps references; readings are merged when a snapshot is built.
        self._recent: dict[str, deque[Sample]] = {}
        self._writing = threading.Lock()  # one write at a time, even one that outlived its timeout
        self._failing = False
        self.written = 0  # snapshots written (tests, figures)

    def note(self, sample: Sample) -> None:
        """Keep ``sample`` among the device's latest (its last :data:`RECENT_SAMPLES`): a
        reference only, so the poll path pays nothing per reading."""
        recent = self._recent.get(sample.device_id)
        if recent is None:
            recent = self._recent[sample.device_id] = deque(maxlen=RECENT_SAMPLES)
        recent.append(sample)

    def _merge(self) -> None:
        """Fold the recent samples into each device's latest readings (bounded per device)."""
        for device_id, recent in self._recent.items():
            latest = self._latest.setdefault(device_id, {})
            while recent:
                for reading in recent.popleft().readings:
                    if reading.name in latest or len(latest) < MAX_READINGS_PER_DEVICE:
                        latest[reading.name] = (reading.value, reading.unit)
                    else:
                        self._left_out[device_id] = self._left_out.get(device_id, 0) + 1

    def tap(
        self, submit: Callable[[Sample], Awaitable[None]]
    ) -> Callable[[Sample], Awaitable[None]]:
        """``submit`` that first notes the sample."""

        async def noted(sample: Sample) -> None:
            self.note(sample)
            await submit(sample)

        return noted

    def watched(self) -> bool:
        """``top.watch`` was touched less than :data:`WATCH_FRESH_S` ago (either side of now)."""
        try:
            modified = os.stat(self.data_dir / WATCH_FILE, follow_symlinks=False).st_mtime
        except OSError:
            return False
        return abs(self._clock() - modified) < WATCH_FRESH_S

    def build(self, facts: Mapping[str, Any]) -> bytes:
        """The snapshot document (at most :data:`MAX_SNAPSHOT_BYTES`)."""
        self._merge()
        drivers = self._drivers()
        for cap in (MAX_READINGS_PER_DEVICE, 50, 10, 0):
            devices = []
            for device_id, status in self._board.devices.items():
                latest = self._latest.get(device_id, {})
                readings = [
                    [_cut(n), _cut(v) if isinstance(v, str) else v, u]
                    for n, (v, u) in list(latest.items())[:cap]
                ]
                devices.append(
                    {
                        "id": device_id,
                        "driver": drivers.get(device_id, "?"),
                        "state": status.state,
                        "error": None if status.error is None else _cut(status.error),
                        "errors_total": status.errors_total,
                        "last_sample": status.last_sample,
                        "readings": readings,
                        "more": len(latest) - len(readings) + self._left_out.get(device_id, 0),
                    }
                )
            doc = {"format": FORMAT, "written": self._clock(), "pid": os.getpid(), **facts}
            data = json.dumps({**doc, "devices": devices}, separators=(",", ":")).encode()
            if len(data) <= MAX_SNAPSHOT_BYTES:
                return data
        # Even without readings too many devices: as many as fit.
        while devices and len(data) > MAX_SNAPSHOT_BYTES:
            devices = devices[: len(devices) // 2]
            data = json.dumps({**doc, "devices": devices}, separators=(",", ":")).encode()
        return data

    def _write(self, data: bytes) -> None:
        if not self._writing.acquire(blocking=False):
            return  # the previous write still hangs on the storage
        try:
            write_atomic(self.data_dir / SNAPSHOT_FILE, data, durable=False)
        finally:
            self._writing.release()

    async def write_once(self) -> bool:
        """Write a snapshot if someone watches; True if one was written."""
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            if not await asyncio.to_thread(self.watched):
                return False
            data = self.build(await self._facts())
            await asyncio.to_thread(self._write, data)
        self.written += 1
        return True

    async def run(self) -> None:
        """Every :data:`WRITE_PERIOD_S`, write a snapshot if someone watches."""
        while True:
            started = time.monotonic()
            try:
                await self.write_once()
            except (OSError, TimeoutError) as exc:
                if not self._failing:
                    self._failing = True
                    log.warning(
                        "top: cannot write %s (%s)",
                        self.data_dir / SNAPSHOT_FILE,
                        str(exc) or "timeout",
                    )
            else:
                self._failing = False
            await asyncio.sleep(max(0.0, started + WRITE_PERIOD_S - time.monotonic()))
