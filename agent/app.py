"""The agent: one TaskGroup tree and its shutdown order.

::

    sinks (TaskGroup)
    ├── buffer-writer      samples → SQLite, in batches
    ├── publisher          SQLite → MQTT, rows deleted on PUBACK
    ├── state-saver        device statuses → SQLite (for `citygate status`)
    ├── housekeeping       max_age expiry, systemd watchdog and STATUS=
    └── sources (TaskGroup, inside the body)
        └── device <id>    one supervisor per device

Stopping (SIGTERM/SIGINT) goes in a fixed, time-boxed order: stop the sources →
write what is queued to the buffer → let the publisher flush for a few seconds
and publish ``offline`` → save device states → close the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent import __version__, systemd
from agent.buffer import AsyncBuffer
from agent.clock import ClockState
from agent.config import BleSettings, Config, DeviceConfig
from agent.lines import LineSet
from agent.pipeline import BufferWriter
from agent.publisher import Publisher
from agent.status import Counters, StatusBoard
from agent.supervise import DeviceSupervisor
from drivers.api import DeviceContext, DriverFactory, FatalDriverError, PollDriver, PushDriver

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 5.0
HOUSEKEEPING_S = 5.0
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
        self.counters = Counters()
        enabled = [d for d in config.devices if d.enabled]
        self._devices = enabled
        self.board = StatusBoard([d.id for d in enabled])
        self.buffer = AsyncBuffer(buffer_path(config), config.buffer)
        # One owner per [[serial]] line in use, shared by its devices.
        self.lines = LineSet(
            config.serial,
            [
                (d.id, d.driver, d.options["serial"], d.interval)
                for d in enabled
                if isinstance(d.options.get("serial"), str)
            ],
        )
        # One BLE scanner per adapter, shared by every BLE device.
        self.ble_hub = self._ble_hub(config, enabled)
        self.exit_status = 0
        if metrics_interval is None:
            # Tests shorten the metrics period; the spec's period is 60 s.
            metrics_interval = float(os.environ.get("CITYGATE_METRICS_INTERVAL", "60"))
        self.publisher = Publisher(
            config.mqtt,
            config.gateway,
            [(d.id, d.driver) for d in enabled],
            self.buffer,
            self.board,
            self.counters,
            metrics_interval=metrics_interval,
            extra_metrics=self.lines.metrics,
        )
        self.writer = BufferWriter(self.buffer, self.publisher.notify)
        self._clock = ClockState()

    def _ble_hub(self, config: Config, enabled: list[DeviceConfig]) -> Any:
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

    def _make_driver(self, device_id: str) -> Callable[[], PollDriver | PushDriver]:
        device = next(d for d in self._devices if d.id == device_id)
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

    async def run(self) -> None:
        """Run until :meth:`request_stop`; raise on a fatal (buffer) error."""
        async with self.buffer:
            stats = await self.buffer.stats()
            if stats.backlog_samples:
                log.info(
                    "buffer holds %d samples from before; sending them first", stats.backlog_samples
                )
            async with asyncio.TaskGroup() as sinks:
                writer_task = sinks.create_task(self.writer.run(), name="buffer-writer")
                publisher_task = sinks.create_task(self.publisher.run(), name="publisher")
                saver_task = sinks.create_task(self._save_states(), name="state-saver")
                housekeeping_task = sinks.create_task(self._housekeeping(), name="housekeeping")
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
                        for device in self._devices:
                            supervisor = DeviceSupervisor(
                                device.id,
                                device.interval,
                                self._make_driver(device.id),
                                self.writer.submit,
                                self.board,
                                self.counters,
                                self._clock.synced,
                                overloaded=self.writer.congested,
                            )
                            sources.create_task(supervisor.run(), name=f"device {device.id}")
                        if self.ble_hub is not None:
                            sources.create_task(self.ble_hub.run(), name="ble-scanner")
                        sources.create_task(self._shutdown_when_asked(), name="stop-watch")
                except* _Shutdown:
                    pass
                except* FatalDriverError as fatal:
                    # Drain and stop in order, then exit 1 so that systemd restarts us.
                    for exc in fatal.exceptions:
                        log.error("fatal: %s; stopping so that the service restarts", exc)
                    self.exit_status = 1
                await self.writer.close()
                await writer_task
                self.publisher.stop(FLUSH_TIMEOUT_S)
                await publisher_task
                saver_task.cancel()
                housekeeping_task.cancel()
            self.lines.close()
            await self._save_all_states()
            stats = await self.buffer.stats()
            log.info("stopped; %d samples stay buffered for the next start", stats.backlog_samples)

    async def _shutdown_when_asked(self) -> None:
        await self.stop_requested.wait()
        raise _Shutdown

    async def _save_states(self) -> None:
        watch = self.board.watch()
        while True:
            await watch.changed.wait()
            for device_id, status in watch.take():
                await self.buffer.save_device_status(device_id, status.to_json())

    async def _save_all_states(self) -> None:
        for device_id, status in self.board.devices.items():
            await self.buffer.save_device_status(device_id, status.to_json())

    async def _housekeeping(self) -> None:
        last_expire = -EXPIRE_EVERY_S
        while True:
            now = time.monotonic()
            if now - last_expire >= EXPIRE_EVERY_S:
                last_expire = now
                expired = await self.buffer.expire()
                if expired:
                    log.warning("buffer: %d samples older than buffer.max_age dropped", expired)
            online, offline = self.board.counts()
            stats = await self.buffer.stats()
            systemd.notify(
                "WATCHDOG=1\nSTATUS="
                f"{online} online, {offline} offline, backlog {stats.backlog_samples} samples, "
                f"broker {'connected' if self.publisher.connected else 'disconnected'}"
            )
            await asyncio.sleep(HOUSEKEEPING_S)


def _version() -> str:
    return __version__


async def run_until_signalled(agent: Agent) -> None:
    """Run ``agent`` with SIGTERM/SIGINT stopping it (SIGHUP: see cli.md)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    loop.add_signal_handler(
        signal.SIGHUP,
        lambda: log.warning(
            "SIGHUP: reloading the config is not supported yet; restart to apply changes"
        ),
    )
    try:
        await agent.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
