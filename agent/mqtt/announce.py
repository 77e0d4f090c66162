"""What the gateway tells about itself (mqtt.md): status, info, metrics, device statuses.

* ``<prefix>/<gateway>/status``: ``online`` (retained, QoS 1) first on every connection;
  ``offline`` at a clean stop (waited for at most :data:`OFFLINE_TIMEOUT_S`), and as the
  connection's will (:meth:`Announcer.will`) when the gateway vanishes.
* ``<prefix>/<gateway>/info`` (retained): version, labels, start time and devices; published on
  every connection, right after ``online``, and again when a reload changes devices or labels.
* ``<prefix>/<gateway>/<device>/status`` (retained): each device's status as it changes, all of
  them again on every connection and after a reload.
* ``<prefix>/<gateway>/metrics`` (QoS 0): the counters, every ``metrics_interval`` seconds.
* Home Assistant discovery and ``<prefix>/<gateway>/<device>/state`` (retained), when
  ``[homeassistant]`` is enabled or was (to clear what was announced): agent/homeassistant.py,
  one task per connection.
* After a change of ``mqtt.topic_prefix``, the retained topics above under the old prefix are
  emptied (agent/mqtt/retained.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from citygate import __version__
from citygate.buffer import AsyncBuffer
from citygate.config import GatewaySettings
from citygate.mqtt.client import Client, Will, reason_text
from citygate.mqtt.retained import RetainedRecord
from citygate.status import Counters, StatusBoard, rss_bytes
from citygate.supervise import raise_if_cancelled

if TYPE_CHECKING:
    from citygate.homeassistant import HomeAssistant

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 60.0
OFFLINE_TIMEOUT_S = 2.0  # how long the clean stop waits for `offline` to be acknowledged


class Announcer:
    """Publishes the gateway's status, info and metrics and the devices' statuses."""

    def __init__(
        self,
        topic_base: str,
        gateway: GatewaySettings,
        devices: Sequence[tuple[str, str]],
        buffer: AsyncBuffer,
        board: StatusBoard,
        counters: Counters,
        *,
        metrics_interval: float = METRICS_INTERVAL_S,
        extra_metrics: Callable[[], Mapping[str, Any]] | None = None,
        own_metrics: Callable[[], Mapping[str, Any]] | None = None,
        ack_timeout: float | None = None,
        homeassistant: HomeAssistant | None = None,
    ) -> None:
        self._base = topic_base
        self._homeassistant = homeassistant
        self._gateway = gateway
        self._devices = list(devices)
        self._buffer = buffer
        self._board = board
        self._status_watch = board.watch()
        self._counters = counters
        self._metrics_interval = metrics_interval
        self._extra_metrics = extra_metrics  # e.g. the serial lines' figures
        self._own_metrics = own_metrics  # the MQTT side's: refused and unsolicited messages
        self.ack_timeout = ack_timeout
        """How long a status or info PUBACK may take (None: no limit)."""
        self._refused_topics: set[str] = set()  # refusals logged (once per episode)
        self._started_at = time.time()
        self.status_topic = f"{topic_base}/status"
        self.info_topic = f"{topic_base}/info"
        self.metrics_topic = f"{topic_base}/metrics"
        self._info_stale = asyncio.Event()  # the devices list or labels changed: publish info
        self._retained = RetainedRecord(gateway.data_dir, topic_base, gateway.id)

    def will(self) -> Will:
        """The connection's will: ``offline``, as a clean stop says it."""
        return Will(self.status_topic, b"offline", qos=1, retain=True)

    def update(self, devices: Sequence[tuple[str, str]], gateway: GatewaySettings) -> None:
        """A reload changed the devices or the gateway labels: publish info and every
        device status again (at once if connected, else with the next session)."""
        self._devices = list(devices)
        self._gateway = gateway
        self._info_stale.set()
        self._status_watch.reset()

    def close(self) -> None:
        """The publisher has ended: stop watching the status board."""
        self._board.unwatch(self._status_watch)  # a reload may start another publisher

    async def _publish(
        self, client: Client, topic: str, payload: bytes, within: float | None = None
    ) -> None:
        """Publish retained (QoS 1); a refusal is logged once per topic and episode (the
        session goes on: data refusals are the data loop's, agent/mqtt/data.py)."""
        reason = await client.publish(
            topic, payload, qos=1, retain=True, within=within or self.ack_timeout
        )
        if reason is not None and reason.is_failure:
            if topic not in self._refused_topics:
                self._refused_topics.add(topic)
                log.warning("broker refuses %s: %s", topic, reason_text(reason))
        elif topic in self._refused_topics:
            self._refused_topics.discard(topic)
            log.info("broker accepts %s again", topic)

    async def online(self, client: Client) -> None:
        """Publish ``online``, then info (both answered within ``ack_timeout``)."""
        await self._publish(client, self.status_topic, b"online")
        self._info_stale.clear()
        await self._publish(client, self.info_topic, self._info_payload())

    async def offline(self, client: Client) -> None:
        """Publish ``offline`` (raises MqttError when not acknowledged in time)."""
        await self._publish(client, self.status_topic, b"offline", within=OFFLINE_TIMEOUT_S)

    def start(self, client: Client, tg: asyncio.TaskGroup) -> None:
        """The session is up: every device status, then changes, metrics and info updates."""
        self._status_watch.reset()
        tg.create_task(self._send_statuses(client), name="mqtt-status")
        tg.create_task(self._send_metrics(client), name="mqtt-metrics")
        tg.create_task(self._send_info(client), name="mqtt-info")
        if self._retained.to_clear:
            tg.create_task(self._clear_old_prefix(client), name="mqtt-retained-clear")
        if self._homeassistant is not None:

            async def publish(topic: str, payload: bytes) -> None:
                await self._publish(client, topic, payload)

            timeout = self.ack_timeout if self.ack_timeout is not None else 10.0
            tg.create_task(
                self._homeassistant.run(client, publish, timeout), name="mqtt-homeassistant"
            )

    def _info_payload(self) -> bytes:
        info = {
            "version": __version__,
            "labels": dict(self._gateway.labels),
            "started_at": round(self._started_at, 3),
            "devices": [{"id": d, "driver": drv} for d, drv in self._devices],
        }
        return json.dumps(info, separators=(",", ":")).encode()

    async def _send_info(self, client: Client) -> None:
        while True:
            await self._info_stale.wait()
            self._info_stale.clear()
            await self._publish(client, self.info_topic, self._info_payload())
            raise_if_cancelled()

    async def _send_statuses(self, client: Client) -> None:
        while True:
            await self._status_watch.changed.wait()
            for device_id, status in self._status_watch.take():
                topic = f"{self._base}/{device_id}/status"
                await self._publish(client, topic, status.to_json().encode())
                self._retained.status_published(device_id)
                raise_if_cancelled()

    async def _clear_old_prefix(self, client: Client) -> None:
        """Empty the retained topics left under an earlier topic prefix (a refusal is logged by
        :meth:`_publish` and not tried again)."""
        topics = self._retained.to_clear
        for topic in topics:
            await self._publish(client, topic, b"")
            self._retained.cleared(topic)
            raise_if_cancelled()
        log.info("cleared %d retained topics under the earlier topic prefix", len(topics))

    async def metrics(self) -> dict[str, Any]:
        """The metrics document of mqtt.md."""
        stats = await self._buffer.stats()
        online, offline = self._board.counts()
        c = self._counters
        return {
            "ts": round(time.time(), 3),
            "uptime_s": round(time.monotonic() - c.started_monotonic),
            "samples_read": c.samples_read,
            "readings_read": c.readings_read,
            "samples_published": c.samples_published,
            "backlog_samples": stats.backlog_samples,
            "backlog_bytes": stats.backlog_bytes,
            "dropped_samples": stats.dropped_samples,
            "poll_errors": c.poll_errors,
            "broker_reconnects": c.broker_reconnects,
            "devices_online": online,
            "devices_offline": offline,
            "rss_bytes": rss_bytes(),
            "readings_published": c.readings_published,
            "invalid_readings": c.invalid_readings,
            "polls_skipped": c.polls_skipped,
            "overflow_samples": c.overflow_samples,
            **(self._own_metrics() if self._own_metrics is not None else {}),
            **(self._extra_metrics() if self._extra_metrics is not None else {}),
        }

    async def _send_metrics(self, client: Client) -> None:
        while True:
            payload = json.dumps(await self.metrics(), separators=(",", ":")).encode()
            await client.publish(self.metrics_topic, payload, qos=0)
            raise_if_cancelled()
            await asyncio.sleep(self._metrics_interval)
