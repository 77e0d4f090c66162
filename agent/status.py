"""Device states (mqtt.md "Device status") and the gateway's counters ("Metrics")."""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

OFFLINE_AFTER_FAILURES = 3


@dataclass(slots=True)
class DeviceStatus:
    """What ``P/G/D/status`` carries."""

    state: str = "starting"  # starting | online | offline | disabled
    since: float = field(default_factory=time.time)
    last_sample: float | None = None
    error: str | None = None
    errors_total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # driver facts (an M-Bus meter's id)

    def to_json(self) -> str:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return json.dumps(data, separators=(",", ":"))


class StatusBoard:
    """The latest status of every device; tells each consumer what changed.

    Consumers (the publisher, the state saver) each hold a :class:`StatusWatch`
    and see every change once, whatever the others do.
    """

    def __init__(self, device_ids: list[str]) -> None:
        self.devices: dict[str, DeviceStatus] = {d: DeviceStatus() for d in device_ids}
        self._stamps: dict[str, int] = dict.fromkeys(device_ids, 1)
        self._generation = 1
        self._watches: list[StatusWatch] = []

    def watch(self) -> StatusWatch:
        """A new consumer; it first sees every device."""
        watch = StatusWatch(self)
        self._watches.append(watch)
        return watch

    def unwatch(self, watch: StatusWatch) -> None:
        """Forget a consumer that has ended (a publisher replaced by a reload)."""
        if watch in self._watches:
            self._watches.remove(watch)

    def add(self, device_id: str) -> None:
        """A device added by a reload (or added again): it starts afresh."""
        self.devices[device_id] = DeviceStatus()
        self._mark(device_id)

    def _mark(self, device_id: str) -> None:
        self._generation += 1
        self._stamps[device_id] = self._generation
        for watch in self._watches:
            watch.changed.set()

    def _changed_since(self, generation: int) -> tuple[int, list[tuple[str, DeviceStatus]]]:
        changed = [(d, self.devices[d]) for d, g in sorted(self._stamps.items()) if g > generation]
        return self._generation, changed

    def success(self, device_id: str, sample_time: float) -> None:
        status = self.devices[device_id]
        status.last_sample = sample_time
        if status.state != "online" or status.error is not None:
            if status.state == "offline":
                log.info("%s: online again", device_id)
            elif status.state == "starting":
                log.info("%s: online", device_id)
            status.state = "online"
            status.since = time.time()
            status.error = None
            self._mark(device_id)

    def failure(self, device_id: str, error: str, consecutive: int) -> None:
        status = self.devices[device_id]
        status.errors_total += 1
        changed = status.error != error
        status.error = error
        if consecutive >= OFFLINE_AFTER_FAILURES and status.state != "offline":
            status.state = "offline"
            status.since = time.time()
            log.warning("%s: offline after %d failed polls: %s", device_id, consecutive, error)
            changed = True
        elif changed:
            log.warning("%s: %s", device_id, error)
        if changed:
            self._mark(device_id)

    def set_state(self, device_id: str, state: str, error: str | None = None) -> None:
        status = self.devices[device_id]
        if status.state != state or status.error != error:
            status.state = state
            status.error = error
            status.since = time.time()
            self._mark(device_id)

    def set_extra(self, device_id: str, **facts: Any) -> None:
        status = self.devices[device_id]
        if any(status.extra.get(k) != v for k, v in facts.items()):
            status.extra.update(facts)
            self._mark(device_id)

    def counts(self) -> tuple[int, int]:
        """(online, offline) devices."""
        online = sum(1 for s in self.devices.values() if s.state == "online")
        offline = sum(1 for s in self.devices.values() if s.state == "offline")
        return online, offline


class StatusWatch:
    """One consumer's view of a :class:`StatusBoard`."""

    def __init__(self, board: StatusBoard) -> None:
        self._board = board
        self._seen = 0
        self.changed = asyncio.Event()
        self.changed.set()

    def take(self) -> list[tuple[str, DeviceStatus]]:
        """The devices whose status changed since the last call."""
        self.changed.clear()
        self._seen, changed = self._board._changed_since(self._seen)  # noqa: SLF001 - its view
        return changed

    def reset(self) -> None:
        """See every device again on the next :meth:`take` (after a reconnect)."""
        self._seen = 0
        self.changed.set()


@dataclass(slots=True)
class Counters:
    """Counters since start (mqtt.md "Metrics")."""

    started_monotonic: float = field(default_factory=time.monotonic)
    samples_read: int = 0
    readings_read: int = 0
    invalid_readings: int = 0
    samples_published: int = 0
    readings_published: int = 0
    messages_published: int = 0
    poll_errors: int = 0
    polls_skipped: int = 0
    broker_reconnects: int = 0
    overflow_samples: int = 0  # dropped before the buffer: a push driver outran the pipeline
    commands: dict[str, int] = field(default_factory=dict)  # remote commands by outcome

    def command(self, outcome: str) -> None:
        """Count one remote command request by its outcome (``ok``, ``busy``, …)."""
        self.commands[outcome] = self.commands.get(outcome, 0) + 1


def status_report(device_ids: list[str], stats: Any, statuses: dict[str, str]) -> dict[str, Any]:
    """What ``citygate status --json`` prints: the buffer's ``stats`` (a ``BufferStats``)
    and the saved device statuses (``open_readonly_stats``) of the config's devices."""
    devices: dict[str, Any] = {}
    for device_id in device_ids:
        raw = statuses.get(device_id)
        status = (
            json.loads(raw) if raw else {"state": "unknown", "error": None, "last_sample": None}
        )
        devices[device_id] = {
            "state": status.get("state"),
            "error": status.get("error"),
            "last_sample": status.get("last_sample"),
        }
    oldest_age = None if stats.oldest_unsent_age_s is None else round(stats.oldest_unsent_age_s, 3)
    publisher = json.loads(statuses.get("#publisher") or "{}")  # agent/mqtt/data.py
    return {
        "backlog_samples": stats.backlog_samples,
        "backlog_bytes": stats.backlog_bytes,
        "oldest_unsent_age_s": oldest_age,
        "dropped_samples": stats.dropped_samples,
        "refused_samples": int(publisher.get("refused_samples", 0)),
        "devices": devices,
    }


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
