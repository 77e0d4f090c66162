"""The agent: one TaskGroup tree and its shutdown order.

::

    sinks (TaskGroup)
    ├── buffer-writer      samples → SQLite, in batches
    ├── publisher          SQLite → MQTT, rows deleted on PUBACK
    ├── state-saver        device statuses → SQLite (for `citygate status`)
    ├── housekeeping       max_age expiry, health → systemd WATCHDOG=1, STATUS=
    └── sources (TaskGroup, inside the body)
        ├── device <id>    one supervisor per device
        ├── ble-scanner    the BLE hub, when BLE devices are configured
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
import dataclasses
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from citygate import __version__, systemd
from citygate.buffer import AsyncBuffer
from citygate.clock import ClockState
from citygate.config import BleSettings, Config, ConfigError, DeviceConfig, load
from citygate.drivers.api import (
    DeviceContext,
    DriverFactory,
    FatalDriverError,
    PollDriver,
    PushDriver,
)
from citygate.lines import LineOwner, LineSet
from citygate.pipeline import BufferWriter
from citygate.publisher import Publisher
from citygate.status import Counters, StatusBoard
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


def buffer_path(config: Config) -> Path:
    """Where the buffer of this config lives."""
    return config.gateway.data_dir / BUFFER_FILE


class Agent:
    """The running agent of one config."""

    def __init__(
        self,
        config: Config,
        factories: Mapping[str, DriverFactory],
        *,
        metrics_interval: float | None = None,
    ) -> None:
        self.config = config
        self._factories = factories
        self.stop_requested = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self.reloads = 0  # reloads applied (valid configs)
        self.counters = Counters()
        enabled = [d for d in config.devices if d.enabled]
        self._devices: dict[str, DeviceConfig] = {d.id: d for d in enabled}
        self.board = StatusBoard([d.id for d in enabled])
        self.buffer = AsyncBuffer(buffer_path(config), config.buffer)
        self.lines = _line_set(config, enabled)
        # One BLE scanner per adapter, shared by every BLE device.
        self.ble_hub = self._ble_hub(config, enabled)
        self.exit_status = 0
        if metrics_interval is None:
            # Tests shorten the metrics period; the spec's period is 60 s.
            metrics_interval = float(os.environ.get("CITYGATE_METRICS_INTERVAL", "60"))
        self._metrics_interval = metrics_interval
        self.publisher = self._new_publisher(config)
        self.writer = BufferWriter(self.buffer, self._notify_publisher)
        self._clock = ClockState()
        self._sinks: asyncio.TaskGroup | None = None
        self._sources: asyncio.TaskGroup | None = None
        self._device_tasks: dict[str, asyncio.Task[None]] = {}
        self._hub_task: asyncio.Task[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._publisher_task: asyncio.Task[None] | None = None
        self._unhealthy: str | None = None  # why the last health check failed
        self._falling_behind = False  # see _watch_pace

    def _new_publisher(self, config: Config) -> Publisher:
        return Publisher(
            config.mqtt,
            config.gateway,
            _announced(self._devices.values()),
            self.buffer,
            self.board,
            self.counters,
            metrics_interval=self._metrics_interval,
            extra_metrics=self._line_metrics,
        )

    # Bound to the agent, not to one publisher or line set: a reload may replace them.
    def _notify_publisher(self, readings: int) -> None:
        self.publisher.notify(readings)

    def _line_metrics(self) -> dict[str, Any]:
        return self.lines.metrics()

    def _ble_hub(self, config: Config, enabled: Iterable[DeviceConfig]) -> Any:
        if not any(d.driver == "ble" for d in enabled):
            return None
        make_hub = getattr(self._factories.get("ble"), "hub", None)
        if make_hub is None:
            return None
        ble = config.ble or BleSettings()
        return make_hub(ble.adapter, ble.mode, ble.replay, ble.replay_loop)

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
            ble=self.ble_hub,
        )
        return lambda: factory.create(device.driver_config, context)

    def _start_device(self, device: DeviceConfig) -> None:
        assert self._sources is not None
        supervisor = DeviceSupervisor(
            device.id,
            device.interval,
            self._make_driver(device),
            self.writer.submit,
            self.board,
            self.counters,
            self._clock.synced,
            overloaded=self._overloaded,
        )
        self._device_tasks[device.id] = self._sources.create_task(
            supervisor.run(), name=f"device {device.id}"
        )

    def _start_hub(self) -> None:
        assert self._sources is not None
        if self.ble_hub is not None:
            self._hub_task = self._sources.create_task(self.ble_hub.run(), name="ble-scanner")

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
            # MONOTONIC_USEC: what systemd >= 253 expects with RELOADING=1.
            systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                await self._reload()
            except Exception:  # a bug in the reload must not stop a running agent
                log.exception("reload failed; the agent goes on with what is running")
            finally:
                systemd.notify("READY=1")

    async def _reload(self) -> None:
        path = self.config.path
        log.info("SIGHUP: reloading %s", path)
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
            return
        except (OSError, TimeoutError) as exc:
            log.error("reload: cannot read %s (%s); still running the previous one", path, exc)
            return
        for warning in new.warnings:
            log.warning("%s", warning)
        new = self._keep_restart_only_settings(new)
        await self._apply(new)
        self.reloads += 1

    def _keep_restart_only_settings(self, new: Config) -> Config:
        """Log the settings a reload cannot change and keep their running values."""
        old = self.config
        gateway, buffer = new.gateway, new.buffer
        for name in ("id", "data_dir"):
            if getattr(gateway, name) != getattr(old.gateway, name):
                log.warning(
                    "reload: gateway.%s changed to %s; takes effect only after a restart "
                    "(keeping %s)",
                    name,
                    getattr(gateway, name),
                    getattr(old.gateway, name),
                )
        gateway = dataclasses.replace(gateway, id=old.gateway.id, data_dir=old.gateway.data_dir)
        if buffer.durability != old.buffer.durability:
            log.warning(
                "reload: buffer.durability changed to %s; takes effect only after a restart "
                "(keeping %s)",
                buffer.durability,
                old.buffer.durability,
            )
            buffer = dataclasses.replace(buffer, durability=old.buffer.durability)
        return dataclasses.replace(new, gateway=gateway, buffer=buffer)

    async def _apply(self, new: Config) -> None:
        """Restart what differs between the running config and ``new`` (both valid)."""
        old = self.config
        wanted = {d.id: d for d in new.devices if d.enabled}
        running = self._devices
        removed = [i for i in running if i not in wanted]
        added = [i for i in wanted if i not in running]
        changed = {i for i in wanted if i in running and _differs(running[i], wanted[i])}

        # Serial lines: keep the owner of a line whose settings and protocol stay.
        new_lines = _line_set(new, wanted.values())
        replaced_lines: list[LineOwner] = []
        for line_id, owner in self.lines.owners.items():
            fresh = new_lines.owners.get(line_id)
            if (
                fresh is not None
                and new.serial.get(line_id) == old.serial.get(line_id)
                and fresh.protocol == owner.protocol
            ):
                for device_id, stats in fresh.devices.items():
                    owner.attach(device_id, stats.interval or 0.0)
                for device_id in set(owner.devices) - set(fresh.devices):
                    del owner.devices[device_id]
                new_lines.owners[line_id] = owner
            else:
                replaced_lines.append(owner)
                changed |= {i for i in wanted if wanted[i].options.get("serial") == line_id}
        # BLE: a new hub when [ble] changed or BLE devices appear or all go.
        wants_hub = any(d.driver == "ble" for d in wanted.values()) and (
            getattr(self._factories.get("ble"), "hub", None) is not None
        )
        hub_restart = (self.ble_hub is not None) != wants_hub or (wants_hub and new.ble != old.ble)
        if hub_restart:
            changed |= {i for i in wanted if wanted[i].driver == "ble"}
        changed -= set(added)
        restart_publisher = new.mqtt != old.mqtt

        if not (removed or added or changed or hub_restart or restart_publisher):
            log.info("reload: no device, line or broker setting changed")
        await self._stop_devices([*removed, *sorted(changed)])
        for device_id in removed:
            self.board.set_state(device_id, "disabled")  # no longer polled (retained status)
        if hub_restart:
            await self._stop_hub()
        for owner in replaced_lines:
            owner.close()
        self.lines = new_lines
        self.config = new
        self._devices = wanted
        self.buffer.buffer.settings = new.buffer  # limits are read at each use
        if new.gateway.log_level != old.gateway.log_level:
            logging.getLogger().setLevel(new.gateway.log_level.upper())
        if hub_restart:
            self.ble_hub = self._ble_hub(new, wanted.values())
            self._start_hub()
        for device_id in added:
            self.board.add(device_id)
        for device_id in [*added, *sorted(changed)]:
            self._start_device(wanted[device_id])
        if restart_publisher:
            await self._restart_publisher(new)
        else:
            self.publisher.update_announcement(_announced(wanted.values()), new.gateway)
        log.info(
            "reload: %d devices running; added %s, removed %s, restarted %s%s",
            len(wanted),
            _names(added),
            _names(removed),
            _names(sorted(changed)),
            "; publisher restarted" if restart_publisher else "",
        )

    async def _stop_devices(self, device_ids: Iterable[str]) -> None:
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
    return LineSet(
        config.serial,
        [
            (d.id, d.driver, d.options["serial"], d.interval)
            for d in devices
            if isinstance(d.options.get("serial"), str)
        ],
    )


def _announced(devices: Iterable[DeviceConfig]) -> list[tuple[str, str]]:
    return [(d.id, d.driver) for d in devices]


def _differs(old: DeviceConfig, new: DeviceConfig) -> bool:
    """Whether a reload must restart the device (its ``source`` file does not count)."""
    return (old.driver, old.interval, old.enabled, dict(old.labels), dict(old.options)) != (
        new.driver,
        new.interval,
        new.enabled,
        dict(new.labels),
        dict(new.options),
    ) or not _same_value(old.driver_config, new.driver_config)


def _same_value(a: object, b: object) -> bool:
    """Value equality for driver configs, which may hold objects without ``__eq__``.

    Dataclasses compare field by field (fields with ``compare=False`` skipped), containers
    item by item, objects that define ``__eq__`` with it, other objects by their state
    (``__dict__`` / ``__slots__``): a compiled plugin object rebuilt from the same text is
    the same, where ``==`` would say "not the same object" and restart the device.
    """
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(
            _same_value(getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(a)
            if f.compare
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if type(a).__eq__ is not object.__eq__:
        return bool(a == b)
    state_a, state_b = _state(a), _state(b)
    return state_a.keys() == state_b.keys() and all(
        _same_value(value, state_b[name]) for name, value in state_a.items()
    )


def _state(obj: object) -> dict[str, object]:
    """An object's attributes: its ``__dict__`` and every ``__slots__`` entry set."""
    state: dict[str, object] = {}
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                state[name] = getattr(obj, name)
    state.update(getattr(obj, "__dict__", {}))
    return state


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
