"""The agent: one TaskGroup tree and its shutdown order.

::

    sinks (TaskGroup)
    ├── buffer-writer      samples → SQLite, in batches
    ├── publisher          SQLite → MQTT, rows deleted on PUBACK
    ├── state-saver        device statuses → SQLite (for `citygate status`)
    ├── housekeeping       max_age expiry, health → systemd WATCHDOG=1, STATUS=
    ├── pace               is the publisher falling behind the polling?
    ├── loop-lag           event-loop lag (metrics ``loop_lag_max_ms``); skipped-poll episodes
    ├── live-view          ``top.json`` for ``citygate top`` while it watches (agent/livesnap.py)
    ├── commands           remote commands, when ``[commands] enabled`` (agent/commands.py)
    └── sources (TaskGroup, inside the body)
        ├── device <id>    one supervisor per device
        ├── ble-scanner    the BLE hub, when BLE devices are configured
        ├── wmbus-<id>     one per [[wmbus]] receiver its wmbus devices name
        └── reloader       SIGHUP: re-read the config, restart what changed

Stopping (SIGTERM/SIGINT) goes in a fixed, time-boxed order: stop the sources →
write what is queued to the buffer → let the publisher flush for a few seconds
and publish ``offline`` → save device states → close the buffer.

Health. ``WATCHDOG=1`` goes out (every ``WATCHDOG_USEC``/2, else every
:data:`HOUSEKEEPING_S`) only while the event loop runs housekeeping, the buffer
answers a ``stats`` call within :data:`BUFFER_CHECK_TIMEOUT_S`, the writer and the
publisher tasks are alive and the publisher makes progress (:meth:`Publisher.health`;
a broker outage is not unhealthy). Otherwise systemd restarts the service once
``WatchdogSec`` passes without a ping.

Reload (SIGHUP, cli.md). The new config is loaded and validated first; an invalid one
is logged (one ``FILE:LINE:COL: message`` line per error) and the running one stays.
A valid one restarts only what changed: a device whose driver, interval, enabled,
labels, options or driver config changed (cancelled, awaited, started again); every
device of a ``[[serial]]`` line whose settings changed (with a new line owner); the
BLE hub and its devices when ``[ble]`` changed; the publisher when ``[mqtt]`` changed
(it flushes briefly; unacknowledged rows stay in the buffer and the new one sends
them). ``[buffer]`` limits apply at once; ``durability``, ``gateway.id`` and
``gateway.data_dir`` need a restart: logged, and the old values stay. The buffer and
its ``seq`` are never touched. Info and device statuses are published again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citygate import __version__, datadir, logs, registry, systemd
from citygate.buffer import AsyncBuffer
from citygate.clock import SystemTimebase, Timebase
from citygate.cmd_config import ConfigCommand
from citygate.cmd_scan import ScanRunner
from citygate.commands import CommandChannel
from citygate.config import Config, ConfigError, DeviceConfig, load
from citygate.devstate import FileDeviceState
from citygate.drivers.api import (
    BleSettings,
    CitygateError,
    DeviceContext,
    DriverFactory,
    FatalDriverError,
    Hub,
    PollDriver,
    PushDriver,
    WmbusSettings,
)
from citygate.homeassistant import DeviceInfo, HomeAssistant, known_devices
from citygate.lines import LineSet
from citygate.livesnap import LiveSnapshot
from citygate.looplag import GC_FREEZE_AFTER_S, LoopLagMonitor, SkipEpisodes
from citygate.mqtt import Publisher
from citygate.mqtt.announce import METRICS_INTERVAL_S
from citygate.pipeline import BufferWriter
from citygate.reload import ReloadPlan, line_users, plan_reload
from citygate.status import Counters, StatusBoard, status_report
from citygate.supervise import DeviceSupervisor

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 5.0
PACE_PERIOD_S = 1.0
PACE_WINDOW = 5
RELOAD_FLUSH_TIMEOUT_S = 2.0  # a publisher replaced by a reload: its buffer rows stay anyway
HOUSEKEEPING_S = 5.0  # watchdog/STATUS period when systemd gives no WATCHDOG_USEC
BUFFER_CHECK_TIMEOUT_S = 5.0
LOAD_TIMEOUT_S = 60.0  # reading the config (and its profiles) on a reload
DEVICE_STOP_TIMEOUT_S = 15.0  # a supervisor closes its driver within 10 s when cancelled
PUBLISHER_STOP_TIMEOUT_S = RELOAD_FLUSH_TIMEOUT_S + 10.0
EXPIRE_EVERY_S = 60.0
BUFFER_FILE = "buffer.sqlite3"


class _Shutdown(Exception):
    """Raised inside the sources group to stop every device."""


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What :meth:`Agent.reload_now` did."""

    applied: bool
    reason: str | None = None  # why not applied
    started: tuple[str, ...] = ()  # devices added or restarted by it


def buffer_path(config: Config) -> Path:
    """Where the buffer of this config lives."""
    return config.gateway.data_dir / BUFFER_FILE


class Agent:
    """The running agent of one config.

    Seams, with production defaults: ``timebase`` (the clocks that stamp and age samples;
    default the machine's, :class:`~citygate.clock.SystemTimebase`), ``metrics_interval``
    (seconds between metrics messages) and ``before_fetch`` (awaited by the publisher's data
    loop before each fetch from the buffer, see :class:`~citygate.mqtt.Publisher`).
    """

    def __init__(
        self,
        config: Config,
        factories: Mapping[str, DriverFactory],
        *,
        timebase: Timebase | None = None,
        metrics_interval: float = METRICS_INTERVAL_S,
        before_fetch: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self._timebase = SystemTimebase() if timebase is None else timebase
        self._factories = factories
        self.stop_requested = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()  # SIGHUP and reload_now, one at a time
        self.reloads = 0  # reloads applied (valid configs)
        self.counters = Counters()
        enabled = [d for d in config.devices if d.enabled]
        self._devices: dict[str, DeviceConfig] = {d.id: d for d in enabled}
        self.board = StatusBoard([d.id for d in enabled])
        self.live = LiveSnapshot(
            config.gateway.data_dir,
            self.board,
            self.live_facts,
            lambda: {d.id: d.driver for d in self._devices.values()},
        )
        self.buffer = AsyncBuffer(buffer_path(config), config.buffer, timebase=self._timebase)
        self.lines = _line_set(config, enabled)
        # One BLE scanner per adapter, shared by every BLE device.
        self.ble_hub = self._ble_hub(config, enabled)
        # One receiver task per [[wmbus]] in use, shared by the meters it hears.
        self.wmbus_receivers = self._wmbus_receivers(config, enabled)
        self._receiver_tasks: list[asyncio.Task[None]] = []
        self.exit_status = 0
        self._metrics_interval = metrics_interval
        self._before_fetch = before_fetch
        self._supervisors: dict[str, DeviceSupervisor] = {}
        # Commands: enabled at start (a reload changes their permissions and rate, not this).
        self.commands: CommandChannel | None = None
        if config.commands.enabled:
            self.commands = CommandChannel(
                config.mqtt.topic_prefix,
                config.gateway.id,
                config.gateway.data_dir,
                self.counters,
                lambda: self.config.commands,
                self.current_status,
                self._supervisors.get,
                handlers={
                    "config": ConfigCommand(self, factories).run,
                    "scan": ScanRunner(lambda: self.config, factories, lambda: self.lines.owners),
                },
            )
        # Home Assistant discovery: outlives publishers; also clears what an earlier run announced.
        self.homeassistant = HomeAssistant(
            config.homeassistant,
            f"{config.mqtt.topic_prefix}/{config.gateway.id}",
            config.gateway.id,
            config.gateway.data_dir,
            _ha_devices(self._devices.values()),
            facts=self._driver_facts,
        )
        self.publisher = self._new_publisher(config)
        self.writer = BufferWriter(self.buffer, self._notify_publisher)
        self._sinks: asyncio.TaskGroup | None = None
        self._sources: asyncio.TaskGroup | None = None
        self._device_tasks: dict[str, asyncio.Task[None]] = {}
        self._hub_task: asyncio.Task[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._publisher_task: asyncio.Task[None] | None = None
        self._unhealthy: str | None = None  # why the last health check failed
        self._falling_behind = False  # see _watch_pace
        # Skipped polls told once per episode; the loop-lag monitor ticks it and names stalls.
        self.skips = SkipEpisodes()
        self.loop_lag = LoopLagMonitor(on_lag=self.skips.lag, freeze_gc_after=GC_FREEZE_AFTER_S)

    def _new_publisher(self, config: Config) -> Publisher:
        return Publisher(
            config.mqtt,
            config.gateway,
            _announced(self._devices.values()),
            self.buffer,
            self.board,
            self.counters,
            metrics_interval=self._metrics_interval,
            extra_metrics=self._extra_metrics,
            before_fetch=self._before_fetch,
            commands=self.commands,
            homeassistant=self.homeassistant,
        )

    def _driver_facts(self, device_id: str) -> Mapping[str, Any]:
        status = self.board.devices.get(device_id)
        return {} if status is None else status.extra

    async def current_status(self) -> dict[str, Any]:
        """What ``citygate status --json`` prints, from the running agent."""
        async with asyncio.timeout(BUFFER_CHECK_TIMEOUT_S):
            stats = await self.buffer.stats()
        statuses = {d: s.to_json() for d, s in self.board.devices.items()}
        statuses["#publisher"] = json.dumps({"refused_samples": self.publisher.refused_samples})
        return status_report([d.id for d in self.config.devices], stats, statuses)

    async def live_facts(self) -> dict[str, Any]:
        """The header of ``citygate top``'s snapshot: gateway, broker link, backlog."""
        try:
            async with asyncio.timeout(BUFFER_CHECK_TIMEOUT_S):
                stats = await self.buffer.stats()
            backlog: dict[str, Any] | None = {
                "samples": stats.backlog_samples,
                "bytes": stats.backlog_bytes,
                "oldest_unsent_age_s": stats.oldest_unsent_age_s,
                "dropped": stats.dropped_samples,
            }
        except TimeoutError:
            backlog = None
        urls = self.config.mqtt.urls or (self.config.mqtt.url,)
        return {
            "gateway": self.config.gateway.id,
            "connected": self.publisher.connected,
            "broker": urls[0] + (f" (+{len(urls) - 1} more)" if len(urls) > 1 else ""),
            "backlog": backlog,
            "refused": self.publisher.refused_samples,
        }

    # Bound to the agent, not to one publisher or line set: a reload may replace them.
    def _notify_publisher(self, readings: int) -> None:
        self.publisher.notify(readings)

    def _extra_metrics(self) -> dict[str, Any]:
        # Called once per metrics message: the lag's period is the metrics period.
        extra: dict[str, Any] = {"loop_lag_max_ms": self.loop_lag.take_max_ms()}
        if self.commands is not None:
            extra["commands"] = dict(self.counters.commands)
        return {**extra, **self.lines.metrics()}

    def _ble_hub(self, config: Config, enabled: Iterable[DeviceConfig]) -> Hub | None:
        if not any(d.driver == "ble" for d in enabled):
            return None
        make_hub = registry.hub_factory(self._factories.get("ble"))
        if make_hub is None:
            return None
        return make_hub(config.ble or BleSettings())

    def _wmbus_receivers(self, config: Config, enabled: Iterable[DeviceConfig]) -> dict[str, Hub]:
        used = _receivers_in_use(config, enabled)
        if not used:  # the wmbus driver is not even imported
            return {}
        make = registry.receiver_factory(self._factories.get("wmbus"))
        return {} if make is None else {i: make(s) for i, s in used.items()}

    def request_stop(self) -> None:
        if not self.stop_requested.is_set():
            log.info("stopping")
            systemd.notify("STOPPING=1")
            self.stop_requested.set()

    def _overloaded(self) -> bool:
        """More is offered than the agent can take: supervisors skip polls (counted)."""
        return self.writer.congested() or self._falling_behind

    async def _watch_pace(self) -> None:
        """Notice when the publisher, connected, cannot keep up with the polling.

        The unsent backlog then grows at every look although the broker is there;
        polls are skipped until it shrinks again. An outage (not connected) or a
        drain after one (the backlog shrinks) never counts.
        """
        window: collections.deque[int] = collections.deque(maxlen=PACE_WINDOW)
        margin = 2 * self.config.mqtt.max_batch * self.config.mqtt.max_inflight
        episodes = 0
        while True:
            await asyncio.sleep(PACE_PERIOD_S)
            if not self.publisher.connected:
                window.clear()
                self._falling_behind = False
                continue
            window.append(self.counters.readings_read - self.counters.readings_published)
            if len(window) < PACE_WINDOW:
                continue
            values = list(window)
            growing = all(b > a for a, b in itertools.pairwise(values))
            if not self._falling_behind and growing and values[-1] - values[0] > margin:
                self._falling_behind = True
                episodes += 1
                if episodes == 1:
                    log.warning("overloaded: the broker gets less than is polled; skipping polls")
            elif self._falling_behind and values[-1] < values[0]:
                self._falling_behind = False

    def request_reload(self) -> None:
        """Re-read the config soon (SIGHUP); requests during a reload fold into one more."""
        self._reload_requested.set()

    def _make_driver(self, device: DeviceConfig) -> Callable[[], PollDriver | PushDriver]:
        factory = self._factories[device.driver]
        context = DeviceContext(
            device_id=device.id,
            interval=device.interval,
            config_dir=device.source.parent,
            serial_lines=self.config.serial,
            labels=device.labels,
            lines=self.lines.owners,
            hub=self.ble_hub
            if device.driver == "ble"
            else self.wmbus_receivers.get(str(device.options.get("receiver")))
            if device.driver == "wmbus"
            else None,
            state=FileDeviceState(self.config.gateway.data_dir, device.id),
        )
        return lambda: factory.create(device.driver_config, context)

    def _start_device(self, device: DeviceConfig) -> None:
        assert self._sources is not None
        supervisor = DeviceSupervisor(
            device.id,
            device.interval,
            self._make_driver(device),
            self.live.tap(self.writer.submit),
            self.board,
            self.counters,
            self._timebase.synced,
            overloaded=self._overloaded,
            wall=self._timebase.wall,
            on_skipped=self.skips.skipped,
        )
        self._supervisors[device.id] = supervisor
        self._device_tasks[device.id] = self._sources.create_task(
            supervisor.run(), name=f"device {device.id}"
        )

    def _start_hub(self) -> None:
        assert self._sources is not None
        if self.ble_hub is not None:
            self._hub_task = self._sources.create_task(self.ble_hub.run(), name="ble-scanner")
        self._start_receivers()

    def _start_receivers(self) -> None:
        assert self._sources is not None
        self._receiver_tasks = [
            self._sources.create_task(receiver.run(), name=f"wmbus-{receiver_id}")
            for receiver_id, receiver in self.wmbus_receivers.items()
        ]

    async def run(self) -> None:
        """Run until :meth:`request_stop`; raise on a fatal (buffer) error."""
        async with self.buffer:
            stats = await self.buffer.stats()
            if stats.backlog_samples:
                log.info(
                    "buffer holds %d samples from before; sending them first", stats.backlog_samples
                )
            async with asyncio.TaskGroup() as sinks:
                self._sinks = sinks
                self._writer_task = sinks.create_task(self.writer.run(), name="buffer-writer")
                self._publisher_task = sinks.create_task(self.publisher.run(), name="publisher")
                saver_task = sinks.create_task(self._save_states(), name="state-saver")
                housekeeping_task = sinks.create_task(self._housekeeping(), name="housekeeping")
                pace_task = sinks.create_task(self._watch_pace(), name="pace")
                lag_task = sinks.create_task(self.loop_lag.run(), name="loop-lag")
                live_task = sinks.create_task(self.live.run(), name="live-view")
                commands_task = None
                if self.commands is not None:
                    commands_task = sinks.create_task(self.commands.run(), name="commands")
                log.info(
                    "citygate %s running: gateway %s, %d devices, broker %s",
                    _version(),
                    self.config.gateway.id,
                    len(self._devices),
                    self.config.mqtt.url,
                )
                systemd.notify("READY=1")
                try:
                    async with asyncio.TaskGroup() as sources:
                        self._sources = sources
                        for device in self._devices.values():
                            self._start_device(device)
                        self._start_hub()
                        sources.create_task(self._reload_when_asked(), name="reloader")
                        sources.create_task(self._shutdown_when_asked(), name="stop-watch")
                except* _Shutdown:
                    pass
                except* FatalDriverError as fatal:
                    # Drain and stop in order, then exit 1 so that systemd restarts us.
                    for exc in fatal.exceptions:
                        log.error("fatal: %s; stopping so that the service restarts", exc)
                    self.exit_status = 1
                finally:
                    self._sources = None
                await self.writer.close()
                await self._writer_task
                self.publisher.stop(FLUSH_TIMEOUT_S)
                await self._publisher_task
                saver_task.cancel()
                housekeeping_task.cancel()
                pace_task.cancel()
                lag_task.cancel()
                live_task.cancel()
                if commands_task is not None:
                    commands_task.cancel()
            self.lines.close()
            await self._save_all_states()
            stats = await self.buffer.stats()
            log.info("stopped; %d samples stay buffered for the next start", stats.backlog_samples)

    async def _shutdown_when_asked(self) -> None:
        await self.stop_requested.wait()
        raise _Shutdown

    # ------------------------------------------------------------------ reload

    async def _reload_when_asked(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self._reload_once("SIGHUP")

    async def reload_now(self) -> ReloadOutcome:
        """Re-read the config file now, as SIGHUP does; returns once applied or refused."""
        if self._sources is None or self.stop_requested.is_set():
            return ReloadOutcome(False, "the agent is stopping")
        return await self._reload_once("config command")

    async def _reload_once(self, why: str) -> ReloadOutcome:
        async with self._reload_lock:
            # MONOTONIC_USEC: what systemd >= 253 expects with RELOADING=1.
            systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                return await self._reload(why)
            except Exception:  # a bug in the reload must not stop a running agent
                log.exception("reload failed; the agent goes on with what is running")
                return ReloadOutcome(False, "the reload failed (see the agent's log)")
            finally:
                systemd.notify("READY=1")

    async def _reload(self, why: str) -> ReloadOutcome:
        path = self.config.path
        log.info("%s: reloading %s", why, path)
        try:
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                new = await asyncio.to_thread(load, path, self._factories)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem)
            log.error(
                "reload: %d error(s) in the new config; still running the previous one",
                len(exc.problems),
            )
            return ReloadOutcome(False, f"{len(exc.problems)} error(s) in the config")
        except (OSError, TimeoutError) as exc:
            log.error("reload: cannot read %s (%s); still running the previous one", path, exc)
            return ReloadOutcome(False, f"cannot read {path} ({str(exc) or 'timeout'})")
        for warning in new.warnings:
            log.warning("%s", warning)
        # Whether the BLE driver shares a scanner hub: the agent runs one when it does.
        ble_hub = registry.hub_factory(self._factories.get("ble")) is not None
        plan = plan_reload(self.config, new, ble_hub=ble_hub)
        await self._apply(plan)
        self.reloads += 1
        return ReloadOutcome(True, started=(*plan.added, *plan.restarted))

    async def _apply(self, plan: ReloadPlan) -> None:
        """Carry out ``plan``: restart what differs between the running and the new config."""
        new = plan.config
        wanted = dict(plan.devices)
        for setting in plan.restart_only:
            log.warning(
                "reload: %s changed to %s; takes effect only after a restart (keeping %s)",
                setting.name,
                setting.wanted,
                setting.kept,
            )
        # Serial lines: a kept owner takes its place in the new set, with its devices.
        new_lines = _line_set(new, wanted.values())
        for line in plan.kept_lines:
            owner = self.lines.owners[line.line_id]
            for device_id, interval in line.devices:
                owner.attach(device_id, interval)
            for device_id in line.detached:
                owner.detach(device_id)
            new_lines.owners[line.line_id] = owner
        replaced_lines = [self.lines.owners[line_id] for line_id in plan.replaced_lines]

        if plan.unchanged:
            log.info("reload: no device, line or broker setting changed")
        # wmbus: new receivers (and their devices) when the receivers in use changed.
        wmbus_restart = _receivers_in_use(self.config, self._devices.values()) != (
            _receivers_in_use(new, wanted.values())
        )
        wmbus_too = [i for i in plan.untouched if wmbus_restart and wanted[i].driver == "wmbus"]
        await self._stop_devices([*plan.removed, *plan.restarted, *wmbus_too])
        if wmbus_restart:
            await _cancel_and_wait(self._receiver_tasks, DEVICE_STOP_TIMEOUT_S, "wmbus receiver")
        for device_id in plan.removed:
            self.board.set_state(device_id, "disabled")  # no longer polled (retained status)
        if plan.hub_restart:
            await self._stop_hub()
        for owner in replaced_lines:
            owner.close()
        self.lines = new_lines
        self.config = new
        self._devices = wanted
        self.buffer.apply_settings(new.buffer)  # limits are read at each use
        if plan.log_level is not None:
            logging.getLogger().setLevel(plan.log_level.upper())
        if plan.hub_restart:
            self.ble_hub = self._ble_hub(new, wanted.values())
            self._start_hub()
        for device_id in plan.added:
            self.board.add(device_id)
        if wmbus_restart:
            self.wmbus_receivers = self._wmbus_receivers(new, wanted.values())
            self._start_receivers()
        for device_id in [*plan.added, *plan.restarted, *wmbus_too]:
            self._start_device(wanted[device_id])
        if plan.publisher_restart:
            if self.commands is not None:  # the new session subscribes the new topics
                self.commands.retarget(new.mqtt.topic_prefix, new.gateway.id)
            await self._restart_publisher(new)
        else:
            self.publisher.update_announcement(_announced(wanted.values()), new.gateway)
        self.homeassistant.update(
            new.homeassistant,
            _ha_devices(wanted.values()),
            f"{new.mqtt.topic_prefix}/{new.gateway.id}",
        )
        log.info(
            "reload: %d devices running; added %s, removed %s, restarted %s%s",
            len(wanted),
            _names(plan.added),
            _names(plan.removed),
            _names(plan.restarted),
            "; publisher restarted" if plan.publisher_restart else "",
        )

    async def _stop_devices(self, device_ids: Iterable[str]) -> None:
        device_ids = list(device_ids)
        for device_id in device_ids:
            self._supervisors.pop(device_id, None)
        tasks = [self._device_tasks.pop(i) for i in device_ids if i in self._device_tasks]
        await _cancel_and_wait(tasks, DEVICE_STOP_TIMEOUT_S, "device")

    async def _stop_hub(self) -> None:
        if self._hub_task is not None:
            await _cancel_and_wait([self._hub_task], DEVICE_STOP_TIMEOUT_S, "BLE scanner")
            self._hub_task = None

    async def _restart_publisher(self, config: Config) -> None:
        assert self._sinks is not None
        assert self._publisher_task is not None
        log.info("reload: [mqtt] changed; reconnecting with the new settings")
        old_task = self._publisher_task
        self.publisher.stop(RELOAD_FLUSH_TIMEOUT_S)
        try:
            async with asyncio.timeout(PUBLISHER_STOP_TIMEOUT_S):
                await asyncio.shield(old_task)
        except TimeoutError:
            await _cancel_and_wait([old_task], DEVICE_STOP_TIMEOUT_S, "publisher")
        # Rows it did not get acknowledged are still in the buffer: the new one sends them.
        self.publisher = self._new_publisher(config)
        self._publisher_task = self._sinks.create_task(self.publisher.run(), name="publisher")

    # ------------------------------------------------------------------ states

    async def _save_states(self) -> None:
        watch = self.board.watch()
        while True:
            await watch.changed.wait()
            for device_id, status in watch.take():
                await self.buffer.save_device_status(device_id, status.to_json())

    async def _save_all_states(self) -> None:
        for device_id, status in self.board.devices.items():
            await self.buffer.save_device_status(device_id, status.to_json())

    # ------------------------------------------------------------------ health

    async def _health(self) -> tuple[str | None, int | None]:
        """(why the agent is unhealthy or None, the backlog if the buffer answered)."""
        for name, task in (
            ("buffer writer", self._writer_task),
            ("publisher", self._publisher_task),
        ):
            if task is not None and task.done():
                return f"the {name} task has ended", None
        try:
            async with asyncio.timeout(BUFFER_CHECK_TIMEOUT_S):
                stats = await self.buffer.stats()
        except TimeoutError:
            return f"buffer: stats did not answer within {BUFFER_CHECK_TIMEOUT_S:g} s", None
        return self.publisher.health(), stats.backlog_samples

    async def _housekeeping(self) -> None:
        period = watchdog_period(os.environ)
        last_expire = -EXPIRE_EVERY_S
        while True:
            now = time.monotonic()
            if now - last_expire >= EXPIRE_EVERY_S:
                last_expire = now
                expired = await self.buffer.expire()
                if expired:
                    log.warning("buffer: %d samples older than buffer.max_age dropped", expired)
            await self.buffer.flush_acks()  # acks no append has taken along (ACK_FOLD_S)
            problem, backlog = await self._health()
            if self.stop_requested.is_set():
                problem = None  # stopping: the sinks end on purpose
            if problem is not None and self._unhealthy is None:
                log.error("unhealthy: %s; no more watchdog pings (systemd restarts us)", problem)
            elif problem is None and self._unhealthy is not None:
                log.warning("healthy again; watchdog pings resume")
            self._unhealthy = problem
            online, offline = self.board.counts()
            summary = (
                f"{online} online, {offline} offline, "
                f"backlog {'?' if backlog is None else backlog} samples, "
                f"broker {'connected' if self.publisher.connected else 'disconnected'}"
            )
            if problem is None:
                systemd.notify(f"WATCHDOG=1\nSTATUS={summary}")
            else:
                systemd.notify(f"STATUS=unhealthy ({problem}); {summary}")
            await asyncio.sleep(period)


def watchdog_period(environ: Mapping[str, str]) -> float:
    """Half the systemd watchdog timeout (``WATCHDOG_USEC``, for this process when
    ``WATCHDOG_PID`` is set), else :data:`HOUSEKEEPING_S`."""
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid != str(os.getpid()):
        return HOUSEKEEPING_S
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return HOUSEKEEPING_S
    return usec / 2e6 if usec > 0 else HOUSEKEEPING_S


def _line_set(config: Config, devices: Iterable[DeviceConfig]) -> LineSet:
    """One owner per [[serial]] line in use, shared by its devices."""
    return LineSet(config.serial, line_users(devices))


def _receivers_in_use(config: Config, devices: Iterable[DeviceConfig]) -> dict[str, WmbusSettings]:
    """The ``[[wmbus]]`` receivers the enabled wmbus devices name."""
    named = {str(d.options.get("receiver")) for d in devices if d.driver == "wmbus"}
    return {i: s for i, s in config.wmbus.items() if i in named}


def _announced(devices: Iterable[DeviceConfig]) -> list[tuple[str, str]]:
    return [(d.id, d.driver) for d in devices]


def _ha_devices(devices: Iterable[DeviceConfig]) -> list[DeviceInfo]:
    return known_devices((d.id, d.driver, d.driver_config) for d in devices)


def _names(ids: Iterable[str]) -> str:
    return ", ".join(ids) or "none"


async def _cancel_and_wait(tasks: list[asyncio.Task[None]], limit_s: float, what: str) -> None:
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=limit_s)
    for task in pending:
        # Still owned by its TaskGroup, which awaits it at shutdown.
        log.warning(
            "%s task %s did not end within %g s of its cancel", what, task.get_name(), limit_s
        )


def _version() -> str:
    return __version__


def serve(
    config: Config,
    factories: Mapping[str, DriverFactory],
    *,
    timebase: Timebase | None = None,
    metrics_interval: float = METRICS_INTERVAL_S,
    before_fetch: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """``citygate run`` once the config is loaded: logging, the agent until a signal
    stops it, a fatal error said in one line. Returns the exit status. The keywords are
    the :class:`Agent`'s seams (tests run the real agent with them)."""
    logs.setup(config.gateway.log_level)
    for warning in config.warnings:
        log.warning("%s", warning)

    async def main() -> int:
        datadir.prepare(config.gateway.data_dir)  # umask 0077; refuses an unsafe data_dir
        agent = Agent(
            config,
            factories,
            timebase=timebase,
            metrics_interval=metrics_interval,
            before_fetch=before_fetch,
        )
        await run_until_signalled(agent)
        return agent.exit_status

    try:
        return asyncio.run(main())
    except BaseExceptionGroup as group:
        fatal, rest = group.split(CitygateError)
        if rest is not None:
            raise
        for exc in _leaves(fatal):
            log.error("fatal: %s", exc)
        return 1
    except CitygateError as exc:
        log.error("fatal: %s", exc)
        return 1


def _leaves(group: BaseExceptionGroup[BaseException] | None) -> list[BaseException]:
    if group is None:
        return []
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def run_until_signalled(agent: Agent) -> None:
    """Run ``agent`` with SIGTERM/SIGINT stopping it and SIGHUP reloading its config."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    loop.add_signal_handler(signal.SIGHUP, agent.request_reload)
    try:
        await agent.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
