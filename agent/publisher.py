"""The MQTT side (mqtt.md): status with will, info, SenML data, device status, metrics.

Data leaves the buffer only after the broker acknowledged it: the publisher reads
samples from the buffer after a cursor, publishes them as per-device SenML packs
(QoS 1, at most ``max_inflight`` awaiting PUBACK) and deletes their rows when
the PUBACK arrives. After any connection loss the cursor goes back to the oldest
row still in the buffer, so what was in flight is sent again (at least once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import __version__
from agent.buffer import AsyncBuffer, StoredSample
from agent.config import GatewaySettings, MqttSettings
from agent.senml import encode_pack
from agent.status import Counters, StatusBoard, rss_bytes
from agent.supervise import Backoff, describe

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 60.0
SESSION_EXPIRY_S = 7 * 86400
RECONNECT_MAX_S = 60.0


class _SessionEnd(Exception):
    """The publisher was asked to stop and has flushed what it could."""


@dataclass(slots=True)
class _Message:
    device_id: str
    samples: list[StoredSample] = field(default_factory=list)
    readings: int = 0


def group_messages(samples: Sequence[StoredSample], max_batch: int) -> list[_Message]:
    """Split samples (in seq order) into per-device messages of at most
    ``max_batch`` readings each; a sample larger than that travels alone."""
    open_messages: dict[str, _Message] = {}
    done: list[_Message] = []
    for sample in samples:
        message = open_messages.get(sample.device_id)
        if message is not None and message.readings + sample.readings > max_batch:
            done.append(message)
            message = None
        if message is None:
            message = _Message(sample.device_id)
            open_messages[sample.device_id] = message
        message.samples.append(sample)
        message.readings += sample.readings
    done.extend(open_messages.values())
    return done


class Publisher:
    """Owns the broker connection; runs until :meth:`stop` or cancellation."""

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
    ) -> None:
        self._mqtt = mqtt
        self._gateway = gateway
        self._devices = list(devices)
        self._buffer = buffer
        self._status_watch = board.watch()
        self._board = board
        self._counters = counters
        self._metrics_interval = metrics_interval
        self._started_at = time.time()
        base = f"{mqtt.topic_prefix}/{gateway.id}"
        self.status_topic = f"{base}/status"
        self.info_topic = f"{base}/info"
        self.metrics_topic = f"{base}/metrics"
        self._base = base
        self._data_waiting = asyncio.Event()
        self._unsent_readings = 0
        self._first_unsent_at: float | None = None
        self._stopping = asyncio.Event()
        self._flushed = asyncio.Event()
        self._stop_deadline = 0.0
        self.connected = False
        self.last_progress = time.monotonic()  # for the watchdog: last PUBACK or idle check

    # ------------------------------------------------------------------ API

    def notify(self, readings: int) -> None:
        """New samples were buffered (called by the buffer writer)."""
        if self._first_unsent_at is None:
            self._first_unsent_at = time.monotonic()
        self._unsent_readings += readings
        self._data_waiting.set()

    def stop(self, flush_timeout: float) -> None:
        """Flush for at most ``flush_timeout`` seconds, publish offline, end :meth:`run`."""
        self._stop_deadline = time.monotonic() + flush_timeout
        self._stopping.set()
        self._data_waiting.set()

    async def run(self) -> None:
        backoff = Backoff(start=1.0, cap=RECONNECT_MAX_S)
        last_error: str | None = None
        failures = 0
        while not self._stopping.is_set():
            try:
                client = self._client()
                async with client:
                    if failures:
                        log.info(
                            "broker %s: connected again after %d attempts", self._mqtt.url, failures
                        )
                        self._counters.broker_reconnects += 1
                    else:
                        log.info("broker %s: connected", self._mqtt.url)
                    failures, last_error = 0, None
                    backoff.reset()
                    await self._session(client)
            except _SessionEnd:
                return
            except (aiomqtt.MqttError, OSError, ssl.SSLError, BaseExceptionGroup) as exc:
                leaves = _leaves(exc)
                if any(isinstance(e, _SessionEnd) for e in leaves):
                    return
                unexpected = [e for e in leaves if not isinstance(e, _CONNECTION_ERRORS)]
                if unexpected:
                    raise
                error = "; ".join(dict.fromkeys(describe(e) for e in leaves))
                failures += 1
                if error != last_error:
                    log.warning("broker %s: %s (retrying with backoff)", self._mqtt.url, error)
                    last_error = error
            finally:
                self.connected = False
            if self._stopping.is_set():
                return
            delay = backoff.next_delay()
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ connection

    def _client(self) -> aiomqtt.Client:
        m = self._mqtt
        v5 = m.protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        tls = None
        if m.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                certfile=str(m.cert_file) if m.cert_file else None,
                keyfile=str(m.key_file) if m.key_file else None,
            )
        return aiomqtt.Client(
            m.host,
            m.port,
            identifier=m.client_id,
            username=m.username,
            password=m.password,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            clean_session=None if v5 else True,
            keepalive=max(1, round(m.keepalive)),
            timeout=max(10.0, m.keepalive),
            max_inflight_messages=m.max_inflight,
            properties=properties,
            tls_params=tls,
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.publish(self.status_topic, b"online", qos=1, retain=True)
        await client.publish(self.info_topic, self._info_payload(), qos=1, retain=True)
        self.connected = True
        self._status_watch.reset()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_connection(client), name="mqtt-watch")
            tg.create_task(self._send_data(client), name="mqtt-data")
            tg.create_task(self._send_statuses(client), name="mqtt-status")
            tg.create_task(self._send_metrics(client), name="mqtt-metrics")
            await self._stopping.wait()
            remaining = self._stop_deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, remaining)):
                    await self._flushed.wait()
            except TimeoutError:
                log.warning("stopping: samples the broker did not take in time stay buffered")
            try:
                await client.publish(self.status_topic, b"offline", qos=1, retain=True, timeout=2.0)
            except aiomqtt.MqttError as exc:
                log.warning("stopping: could not publish offline status: %s", describe(exc))
            raise _SessionEnd

    async def _watch_connection(self, client: aiomqtt.Client) -> None:
        # The messages iterator raises MqttError when the connection is lost.
        async for _ in client.messages:
            pass

    # ------------------------------------------------------------------ data

    async def _wait_for_data(self) -> None:
        while True:
            await self._data_waiting.wait()
            if self._stopping.is_set() or self._unsent_readings >= self._mqtt.max_batch:
                return
            first = self._first_unsent_at
            if first is None:
                return
            wait = first + self._mqtt.linger - time.monotonic()
            if wait <= 0:
                return
            try:
                async with asyncio.timeout(wait):
                    await self._stopping.wait()
            except TimeoutError:
                return

    async def _send_data(self, client: aiomqtt.Client) -> None:
        m = self._mqtt
        inflight = asyncio.Semaphore(m.max_inflight)
        in_progress = 0
        all_acked = asyncio.Event()
        all_acked.set()
        cursor = 0  # the oldest row still buffered comes first after (re)connect
        fetch_readings = m.max_batch * m.max_inflight
        self._data_waiting.set()

        async def publish_one(message: _Message) -> None:
            nonlocal in_progress
            try:
                topic = f"{self._base}/{message.device_id}/data"
                payload = encode_pack(f"{self._gateway.id}/{message.device_id}/", message.samples)
                await client.publish(topic, payload, qos=m.qos)
                await self._buffer.ack([s.seq for s in message.samples])
                self._counters.samples_published += len(message.samples)
                self._counters.readings_published += message.readings
                self._counters.messages_published += 1
                self.last_progress = time.monotonic()
            finally:
                inflight.release()
                in_progress -= 1
                if in_progress == 0:
                    all_acked.set()

        async with asyncio.TaskGroup() as tg:
            while True:
                await self._wait_for_data()
                self._data_waiting.clear()
                self._first_unsent_at = None
                self._unsent_readings = 0
                rows = await self._buffer.fetch(cursor, fetch_readings)
                if not rows:
                    self.last_progress = time.monotonic()
                    if self._stopping.is_set():
                        await all_acked.wait()
                        self._flushed.set()
                        return
                    continue
                cursor = rows[-1].seq
                for message in group_messages(rows, m.max_batch):
                    await inflight.acquire()
                    in_progress += 1
                    all_acked.clear()
                    tg.create_task(publish_one(message))
                # More may be waiting behind what one fetch takes.
                self._data_waiting.set()
                if self._first_unsent_at is None:
                    self._first_unsent_at = time.monotonic() - m.linger

    # ------------------------------------------------------------------ status, info, metrics

    def _info_payload(self) -> bytes:
        info = {
            "version": __version__,
            "labels": dict(self._gateway.labels),
            "started_at": round(self._started_at, 3),
            "devices": [{"id": d, "driver": drv} for d, drv in self._devices],
        }
        return json.dumps(info, separators=(",", ":")).encode()

    async def _send_statuses(self, client: aiomqtt.Client) -> None:
        while True:
            await self._status_watch.changed.wait()
            for device_id, status in self._status_watch.take():
                topic = f"{self._base}/{device_id}/status"
                await client.publish(topic, status.to_json().encode(), qos=1, retain=True)

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
        }

    async def _send_metrics(self, client: aiomqtt.Client) -> None:
        while True:
            payload = json.dumps(await self.metrics(), separators=(",", ":")).encode()
            await client.publish(self.metrics_topic, payload, qos=0)
            await asyncio.sleep(self._metrics_interval)


_CONNECTION_ERRORS = (aiomqtt.MqttError, OSError, ssl.SSLError, _SessionEnd)


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    out: list[BaseException] = []
    for inner in exc.exceptions:
        out.extend(_leaves(inner))
    return out
