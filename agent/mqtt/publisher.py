"""The publisher: one session (session.py) carrying the data loop (data.py) and the
announcements (announce.py).

Health (:meth:`Publisher.health`, for the systemd watchdog): the publisher is healthy while it
makes progress by its own standard: connected with nothing to send, or taking data and getting
PUBACKs within ``ack_timeout``; disconnected, while its reconnect loop keeps trying (a broker
outage is not a fault of the agent); stopping (bounded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from citygate.buffer import AsyncBuffer
from citygate.config import GatewaySettings, MqttSettings
from citygate.mqtt.announce import METRICS_INTERVAL_S, Announcer
from citygate.mqtt.client import Client
from citygate.mqtt.data import DataLoop
from citygate.mqtt.session import ACK_TIMEOUT_MIN_S, CommandRoute, Session
from citygate.status import Counters, StatusBoard

if TYPE_CHECKING:
    from citygate.homeassistant import HomeAssistant


class _OverEachConnection:
    """The session's handler: announcements and data over each connection."""

    def __init__(self, announcer: Announcer, data: DataLoop) -> None:
        self._announcer = announcer
        self._data = data

    async def open(self, client: Client) -> None:
        await self._announcer.online(client)

    def start(self, client: Client, tg: asyncio.TaskGroup) -> None:
        self._data.resume()
        tg.create_task(self._data.watch_acks(), name="mqtt-ack-watch")
        tg.create_task(self._data.watch_refusals(), name="mqtt-refusal-watch")
        self._announcer.start(client, tg)

    async def flush(self, within: float) -> None:
        await self._data.flush(within)

    async def close(self, client: Client) -> None:
        await self._announcer.offline(client)

    def lost(self) -> None:
        self._data.pause()


class Publisher:
    """Owns the broker connection; runs until :meth:`stop` or cancellation.

    ``before_fetch``, when given, is awaited by the data loop before each fetch from the
    buffer (a seam for tests: one that never returns wedges the loop)."""

    def __init__(
        self,
        mqtt: MqttSettings,
        gateway: GatewaySettings,
        devices: Sequence[tuple[str, str]],
        buffer: AsyncBuffer,
        board: StatusBoard,
        counters: Counters,
        *,
        metrics_interval: float = METRICS_INTERVAL_S,
        ack_timeout: float | None = None,
        extra_metrics: Callable[[], Mapping[str, Any]] | None = None,
        before_fetch: Callable[[], Awaitable[None]] | None = None,
        commands: CommandRoute | None = None,
        homeassistant: HomeAssistant | None = None,
    ) -> None:
        if ack_timeout is None:
            ack_timeout = max(ACK_TIMEOUT_MIN_S, mqtt.keepalive)
        base = f"{mqtt.topic_prefix}/{gateway.id}"
        self._announcer = Announcer(
            base,
            gateway,
            devices,
            buffer,
            board,
            counters,
            metrics_interval=metrics_interval,
            extra_metrics=extra_metrics,
            own_metrics=self._own_metrics,
            ack_timeout=ack_timeout,
            homeassistant=homeassistant,
        )
        self._data = DataLoop(
            mqtt,
            gateway.id,
            base,
            buffer,
            counters,
            ack_timeout,
            before_fetch=before_fetch,
            on_acked=homeassistant.acked if homeassistant is not None else None,
        )
        self._session = Session(
            mqtt,
            self._announcer.will(),
            counters,
            _OverEachConnection(self._announcer, self._data),
            ack_timeout,
            commands,
        )

    @property
    def ack_timeout(self) -> float:
        """How long a CONNACK or PUBACK may take before the broker counts as stalled
        (``max(keepalive, 10 s)`` unless given); set it before :meth:`run`."""
        return self._session.ack_timeout

    @ack_timeout.setter
    def ack_timeout(self, value: float) -> None:
        self._session.ack_timeout = value
        self._data.ack_timeout = value
        self._announcer.ack_timeout = value

    @property
    def connected(self) -> bool:
        """A session is up (connected, ``online`` and info acknowledged)."""
        return self._session.connected

    @property
    def in_flight(self) -> int:
        """Data messages handed to the client and not acknowledged yet."""
        return self._data.in_flight

    @property
    def last_progress(self) -> float:
        """Monotonic time of the last PUBACK, message handed over, empty fetch or session start."""
        return self._data.last_progress

    @property
    def session_renewals(self) -> int:
        """New MQTT sessions started because publishes sent with a topic alias were cut."""
        client = self._session.client
        return 0 if client is None else client.renewals

    @property
    def refused_samples(self) -> int:
        """Samples the broker refused (MQTT 5 PUBACK reason code ≥ 0x80), each counted once."""
        return self._data.refused_samples

    def _own_metrics(self) -> dict[str, Any]:
        client = self._session.client
        return {
            "refused_samples": self._data.refused_samples,
            "unsolicited_messages": 0 if client is None else client.unsolicited,
        }

    def notify(self, readings: int) -> None:
        """New samples were buffered (called by the buffer writer)."""
        self._data.notify(readings)

    def health(self, now: float | None = None) -> str | None:
        """None while the publisher makes progress by its own standard, else why not
        (see the module docstring, :meth:`DataLoop.health` and :meth:`Session.health`)."""
        now = time.monotonic() if now is None else now
        if self._session.stopping:
            return None
        if not self._session.connected:
            return self._session.health(now)
        return self._data.health(now)

    def update_announcement(
        self, devices: Sequence[tuple[str, str]], gateway: GatewaySettings
    ) -> None:
        """A reload changed the devices or the gateway labels: publish info and every
        device status again (at once if connected, else with the next session)."""
        self._announcer.update(devices, gateway)

    async def metrics(self) -> dict[str, Any]:
        """The metrics document of mqtt.md."""
        return await self._announcer.metrics()

    def stop(self, flush_timeout: float) -> None:
        """Flush for at most ``flush_timeout`` seconds, publish offline, end :meth:`run`."""
        self._session.stop(flush_timeout)
        self._data.stop()

    async def run(self) -> None:
        """Connect and publish until :meth:`stop`."""
        client = self._session.new_client()
        try:
            async with asyncio.TaskGroup() as tg:
                data = tg.create_task(self._data.run(client), name="mqtt-data")
                await self._session.run(client)
                # What is still in flight stays buffered for the next start.
                data.cancel()
        finally:
            self._announcer.close()
