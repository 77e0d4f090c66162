"""The MQTT side (mqtt.md): status with will, info, SenML data, device status, metrics.

Data leaves the buffer only after the broker acknowledged it: the publisher reads samples from
the buffer after a cursor, publishes them as per-device SenML packs (QoS 1, at most
``max_inflight`` awaiting PUBACK) and deletes their rows when the PUBACK arrives.

Session. The publisher keeps one MQTT client, so one MQTT session, for its whole life. It
connects with clean start off (protocol 5, with a session expiry of :data:`SESSION_EXPIRY_S`) or
``clean_session`` off (3.1.1), every time. (paho's "clean start on the first connection only"
cannot be used: aiomqtt's connect resets what paho counts as the first connection. A new process
resuming its predecessor's session costs nothing: a publisher's session on the broker holds no
subscriptions, and what the predecessor had in flight is still in the buffer and is sent
again.) A data message in flight when the connection drops stays in the client's session: after
the next CONNACK the client sends it again with the same packet identifier and DUP set, before
anything new, and the publish that waits for its PUBACK (it outlives the connection) acks its
rows when that PUBACK comes. The buffer's cursor therefore never goes back while the publisher
runs; rows are sent a second time only when the client refused a publish outright (the
connection had just dropped) or at the next start. Delivery stays at least once, ordered per
device (paho sends and re-sends in publish order).

Faults. A connection that dies silently is found by the keepalive (aiomqtt/paho send PINGREQ
and close after a further keepalive without an answer). A broker that answers pings but stops
acknowledging data is found by :meth:`Publisher._watch_acks`: no PUBACK for ``ack_timeout``
(``max(keepalive, 10 s)``) while messages wait for one drops the connection. A CONNACK or a
status PUBACK that does not come within ``ack_timeout`` fails the attempt. Every failure leads
to a reconnect with capped, jittered backoff; each distinct error is logged once.

Stopping (:meth:`Publisher.stop`): no new data is taken from the buffer once the flush time is
over; what the broker acknowledged by then is deleted, the rest stays buffered. Then ``offline``
is published (for at most :data:`OFFLINE_TIMEOUT_S`) and the client disconnects; if the broker
did not answer, the connection is dropped instead (the broker publishes the will). A stop during
a connection attempt abandons it rather than waiting for the CONNACK.

Health (:meth:`Publisher.health`, for the systemd watchdog): the publisher is healthy while it
makes progress by its own standard: connected with nothing to send, or taking data and getting
PUBACKs within ``ack_timeout``; disconnected, while its reconnect loop keeps trying (a broker
outage is not a fault of the agent). Test hook: when the environment variable
:data:`WEDGE_ENV` names a file, the data loop hangs for good once that file exists (as a lost
wake-up would); the watchdog tests use it to wedge a running publisher.

aiomqtt 2.5 can reuse a client only with care, which :func:`_prepare_reconnect`,
:func:`_drop_connection` and :class:`_Client` take (they touch aiomqtt internals: the 2.5 release
line is pinned).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.types import PahoSocket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citygate import __version__
from citygate.buffer import AsyncBuffer, StoredSample
from citygate.config import GatewaySettings, MqttSettings
from citygate.senml import encode_pack
from citygate.status import Counters, StatusBoard, rss_bytes
from citygate.supervise import Backoff, describe, raise_if_cancelled

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 60.0
SESSION_EXPIRY_S = 7 * 86400
RECONNECT_MAX_S = 60.0
ACK_TIMEOUT_MIN_S = 10.0  # a PUBACK or CONNACK later than max(keepalive, this) means a stall
OFFLINE_TIMEOUT_S = 2.0  # how long the clean stop waits for `offline` to be acknowledged
DROP_TIMEOUT_S = 2.0  # how long dropping a connection waits for the client to notice
HEALTH_SLACK_S = 2.0  # margin on the publisher's own deadlines before it counts as wedged
WEDGE_ENV = "CITYGATE_TEST_WEDGE_FILE"  # test hook, see the module docstring


class _Client(aiomqtt.Client):
    """aiomqtt's client, with a write registration that lands only where it is still wanted.

    aiomqtt 2.5 asks the event loop to watch the socket for writing with
    ``call_soon_threadsafe`` (paho may ask from its connect thread) but stops watching at once.
    A request still queued when paho has already written everything, or closed the socket,
    would make the loop spin on an idle socket or log "Exception in callback ... Bad file
    descriptor" for a closed one, which happens when a connection drops mid-publish."""

    def _on_socket_register_write(
        self, client: paho.Client, userdata: Any, sock: PahoSocket
    ) -> None:
        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # a broken connection, as in aiomqtt's own callback
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def watch() -> None:
            current = client.socket()
            if current is not None and current is sock and client.want_write():
                self._loop.add_writer(current.fileno(), write)

        self._loop.call_soon_threadsafe(watch)


class _ConnectWatch(logging.Handler):
    """Fails a connection attempt at once when the broker closes it before CONNACK.

    aiomqtt 2.5 ignores a connection lost before CONNACK: the attempt waits out
    ``ack_timeout`` and says only "timed out". That is how a broker refuses a TLS
    client certificate (missing, expired, from another CA): after a TLS 1.3
    handshake, with an alert that paho only logs ("failed to receive on socket:
    [SSL: ...]"). This handler is the client's paho logger (it keeps the last
    error: the reason) and wraps paho's on_disconnect (it fails aiomqtt's pending
    connect with that reason). When the broker closes before the alert can be read
    (an EOF or a reset), the last TLS refusal is repeated, so that one refusal
    reads the same at every attempt and is logged once. paho's ERROR lines are not
    passed on (the publisher logs each distinct error once); lower levels go to
    the "mqtt" logger.
    """

    def __init__(self, client_logger: logging.Logger) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._forward = logging.getLogger("mqtt")
        self._client: aiomqtt.Client | None = None
        self._reason: str | None = None  # the last error paho logged
        self._refusal: str | None = None  # the last TLS alert that ended an attempt
        client_logger.setLevel(min(logging.ERROR, self._forward.getEffectiveLevel()))
        client_logger.addHandler(self)

    def attach(self, client: aiomqtt.Client) -> None:
        """Watch ``client`` (created with this handler's logger)."""
        self._client = client
        paho_client = client._client
        aiomqtt_on_disconnect = paho_client.on_disconnect

        def on_disconnect(*args: Any) -> None:
            self._loop.call_soon_threadsafe(self._lost)
            if aiomqtt_on_disconnect is not None:
                aiomqtt_on_disconnect(*args)

        paho_client.on_disconnect = on_disconnect

    def connected(self) -> None:
        """The attempt succeeded: a later refusal is a new one."""
        self._refusal = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self._reason = record.getMessage()  # logged just before paho reports the loss
        elif self._forward.isEnabledFor(record.levelno):
            self._forward.handle(record)

    def _lost(self) -> None:
        reason, self._reason = self._reason, None
        connected = None if self._client is None else self._client._connected
        if connected is None or connected.done():
            return  # a session's loss: aiomqtt reports it
        if reason is not None and "[SSL:" in reason:
            self._refusal = reason
        elif self._refusal is not None:
            reason = self._refusal
        connected.set_exception(
            aiomqtt.MqttError(f"closed before CONNACK: {reason or 'no reason given'}")
        )


class _SessionEnd(Exception):
    """The publisher was asked to stop and has flushed what it could."""


class _Stalled(Exception):
    """The broker stopped acknowledging data: the connection is dropped."""


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
        ack_timeout: float | None = None,
        extra_metrics: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self._mqtt = mqtt
        self._gateway = gateway
        self._devices = list(devices)
        self._buffer = buffer
        self._status_watch = board.watch()
        self._board = board
        self._counters = counters
        self._metrics_interval = metrics_interval
        self._extra_metrics = extra_metrics  # e.g. the serial lines' figures
        self.ack_timeout = (
            max(ACK_TIMEOUT_MIN_S, mqtt.keepalive) if ack_timeout is None else ack_timeout
        )
        self._started_at = time.time()
        base = f"{mqtt.topic_prefix}/{gateway.id}"
        self.status_topic = f"{base}/status"
        self.info_topic = f"{base}/info"
        self.metrics_topic = f"{base}/metrics"
        self._base = base
        self._data_waiting = asyncio.Event()
        self._batch_ready = asyncio.Event()  # a full batch waits, or stopping: end the linger
        self._unsent_readings = 0
        self._first_unsent_at: float | None = None
        self._stopping = asyncio.Event()
        self._flushed = asyncio.Event()
        self._stop_deadline = 0.0
        self._online = asyncio.Event()  # a session is up: data may be handed to the client
        self._cursor = 0  # the last seq handed to the client (rows after it are not yet sent)
        self._in_flight = 0  # data messages handed to the client and not yet acknowledged
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._waiting_since: float | None = None  # since when a PUBACK is awaited in vain
        self._refused = asyncio.Event()  # the client refused a data publish: not connected
        self._resend_after: int | None = None  # the cursor goes back here: a refused publish
        self.connected = False
        # Last PUBACK, message handed over, empty fetch or session start (see health()).
        self.last_progress = time.monotonic()
        self._last_attempt = time.monotonic()  # the reconnect loop's last tick
        self._info_stale = asyncio.Event()  # the devices list or labels changed: publish info
        self._wedge_file = os.environ.get(WEDGE_ENV)

    # ------------------------------------------------------------------ API

    @property
    def in_flight(self) -> int:
        """Data messages handed to the client and not acknowledged yet."""
        return self._in_flight

    def notify(self, readings: int) -> None:
        """New samples were buffered (called by the buffer writer)."""
        if self._first_unsent_at is None:
            self._first_unsent_at = time.monotonic()
        self._unsent_readings += readings
        self._data_waiting.set()
        if self._unsent_readings >= self._mqtt.max_batch:
            self._batch_ready.set()

    def health(self, now: float | None = None) -> str | None:
        """None while the publisher makes progress by its own standard, else why not.

        Connected: nothing waits to be sent or acknowledged, or the oldest wait is answered
        (a message handed over, a PUBACK) within ``ack_timeout`` plus ``linger``.
        Disconnected: the reconnect loop ticked within the longest backoff plus the longest
        attempt (each of its waits is bounded by ``ack_timeout``). Stopping: healthy (bounded).
        """
        now = time.monotonic() if now is None else now
        if self._stopping.is_set():
            return None
        if not self.connected:
            idle = now - self._last_attempt
            # The longest backoff, plus the longest attempt: TCP connect (≤ keepalive) and
            # CONNACK, the online and info PUBACKs, then dropping and leaving the client.
            limit = RECONNECT_MAX_S + 5 * self.ack_timeout + DROP_TIMEOUT_S + HEALTH_SLACK_S
            if idle > limit:
                return f"publisher: disconnected and no connection attempt for {idle:.0f} s"
            return None
        waits = []
        if self._first_unsent_at is not None:
            waits.append(self._first_unsent_at)
        if self._in_flight:
            waits.append(self._waiting_since if self._waiting_since is not None else now)
        if not waits:
            return None
        stuck = now - max(min(waits), self.last_progress)
        if stuck > self.ack_timeout + self._mqtt.linger + HEALTH_SLACK_S:
            return (
                f"publisher: connected, data waiting ({self._in_flight} messages awaiting "
                f"PUBACK) and no progress for {stuck:.0f} s"
            )
        return None

    def update_announcement(
        self, devices: Sequence[tuple[str, str]], gateway: GatewaySettings
    ) -> None:
        """A reload changed the devices or the gateway labels: publish info and every
        device status again (at once if connected, else with the next session)."""
        self._devices = list(devices)
        self._gateway = gateway
        self._info_stale.set()
        self._status_watch.reset()

    def stop(self, flush_timeout: float) -> None:
        """Flush for at most ``flush_timeout`` seconds, publish offline, end :meth:`run`."""
        self._stop_deadline = time.monotonic() + flush_timeout
        self._stopping.set()
        self._data_waiting.set()
        self._batch_ready.set()

    async def run(self) -> None:
        client = self._client()
        try:
            async with asyncio.TaskGroup() as tg:
                data = tg.create_task(self._send_data(client), name="mqtt-data")
                await self._keep_connected(client)
                # What is still in flight stays buffered for the next start.
                data.cancel()
        finally:
            self._board.unwatch(self._status_watch)  # a reload may start another publisher

    # ------------------------------------------------------------------ connection

    def _client(self) -> _Client:
        m = self._mqtt
        v5 = m.protocol == "5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        client_logger = logging.Logger("mqtt")  # this client's own, not registered
        self._connect_watch = _ConnectWatch(client_logger)
        tls = None
        if m.tls:
            tls = aiomqtt.TLSParameters(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                certfile=str(m.cert_file) if m.cert_file else None,
                keyfile=str(m.key_file) if m.key_file else None,
            )
        client = _Client(
            m.host,
            m.port,
            identifier=m.client_id,
            username=m.username,
            password=m.password,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True),
            clean_session=None if v5 else False,
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,  # 3.1.1: must be default
            keepalive=max(1, round(m.keepalive)),
            timeout=self.ack_timeout,
            max_inflight_messages=m.max_inflight,
            properties=properties,
            tls_params=tls,
            logger=client_logger,
        )
        self._connect_watch.attach(client)
        # aiomqtt warns above 10 pending publishes; up to max_inflight of them is normal here.
        client.pending_calls_threshold = m.max_inflight + 10
        return client

    async def _keep_connected(self, client: aiomqtt.Client) -> None:
        """Connect, run sessions and reconnect until :meth:`stop`."""
        backoff = Backoff(start=1.0, cap=RECONNECT_MAX_S)
        last_error: str | None = None
        failures = 0
        while not self._stopping.is_set():
            self._last_attempt = time.monotonic()
            try:
                async with contextlib.AsyncExitStack() as connection:
                    if not await self._connect(client):
                        return
                    connection.push_async_exit(client)
                    if not client._client.is_connected():
                        # Lost between CONNACK and the end of `__aenter__`: aiomqtt 2.5
                        # misses a loss in that moment (its "disconnected" is reset after).
                        raise aiomqtt.MqttError("connection lost right after CONNACK")
                    self._connect_watch.connected()
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
            except (*_CONNECTION_ERRORS, BaseExceptionGroup) as exc:
                leaves = _leaves(exc)
                if any(isinstance(e, _SessionEnd) for e in leaves):
                    return
                unexpected = [e for e in leaves if not isinstance(e, _CONNECTION_ERRORS)]
                if unexpected:
                    raise
                # A CONNACK that never came leaves the socket open.
                _drop_connection(client)
                error = "; ".join(dict.fromkeys(_describe(e) for e in leaves))
                failures += 1
                if error != last_error:
                    log.warning("broker %s: %s (retrying with backoff)", self._mqtt.url, error)
                    last_error = error
            finally:
                self.connected = False
                self._online.clear()
            if self._stopping.is_set():
                return
            delay = backoff.next_delay()
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    async def _connect(self, client: aiomqtt.Client) -> bool:
        """Enter ``client`` (connect, wait for CONNACK); False if :meth:`stop` came first.

        The wait for a CONNACK lasts up to ``ack_timeout``; stopping must not wait for it."""
        _prepare_reconnect(client)
        started = time.monotonic()
        entering = asyncio.ensure_future(client.__aenter__())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([entering, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not entering.done():
                # Abandoned for good: the publisher is stopping (or being cancelled).
                entering.cancel()
                await asyncio.wait([entering])
                _drop_connection(client)
                if not entering.cancelled():
                    entering.exception()  # it failed meanwhile: nobody is waiting for why
        if entering.cancelled():
            return False
        failure = entering.exception()
        if failure is None:
            return True
        if type(failure) is aiomqtt.MqttError and time.monotonic() - started >= self.ack_timeout:
            # aiomqtt's "Operation timed out": connected, but no CONNACK came.
            raise _Stalled(f"no CONNACK within {self.ack_timeout:g} s") from failure
        raise failure

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection's life: ends by raising (connection lost, stall, or _SessionEnd)."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_connection(client), name="mqtt-watch")
                tg.create_task(self._announce(client, tg), name="mqtt-announce")
                await self._stopping.wait()
                await self._end_session(client)
        except BaseException as exc:
            self._online.clear()
            if not any(isinstance(e, _SessionEnd) for e in _leaves(exc)):
                # Leave the connection closed so that leaving `client` does not try a
                # DISCONNECT on a connection that may be stalled.
                await _close_and_wait(client)
            raise

    async def _announce(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        """Publish online and info, then let data, statuses and metrics flow."""
        await client.publish(self.status_topic, b"online", qos=1, retain=True)
        self._info_stale.clear()
        await client.publish(self.info_topic, self._info_payload(), qos=1, retain=True)
        self.last_progress = time.monotonic()
        self.connected = True
        if self._in_flight:
            self._waiting_since = time.monotonic()  # the client re-sends them now
        self._refused.clear()
        self._online.set()
        self._status_watch.reset()
        tg.create_task(self._watch_acks(), name="mqtt-ack-watch")
        tg.create_task(self._watch_refusals(), name="mqtt-refusal-watch")
        tg.create_task(self._send_statuses(client), name="mqtt-status")
        tg.create_task(self._send_metrics(client), name="mqtt-metrics")
        tg.create_task(self._send_info(client), name="mqtt-info")

    async def _end_session(self, client: aiomqtt.Client) -> None:
        """Stopping: flush until the deadline, publish offline, end the session."""
        remaining = self._stop_deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                await self._flushed.wait()
        except TimeoutError:
            log.warning("stopping: samples the broker did not take in time stay buffered")
        self._online.clear()
        try:
            await client.publish(
                self.status_topic, b"offline", qos=1, retain=True, timeout=OFFLINE_TIMEOUT_S
            )
        except aiomqtt.MqttError as exc:
            log.warning("stopping: could not publish offline status: %s", _describe(exc))
            await _close_and_wait(client)  # the broker is not answering: no DISCONNECT either
        raise _SessionEnd

    async def _watch_connection(self, client: aiomqtt.Client) -> None:
        # The messages iterator raises MqttError when the connection is lost.
        async for _ in client.messages:
            pass

    async def _watch_acks(self) -> None:
        """End the session when the broker stops acknowledging data."""
        period = max(0.05, min(1.0, self.ack_timeout / 4))
        while True:
            await asyncio.sleep(period)
            since = self._waiting_since
            if since is not None and time.monotonic() - since > self.ack_timeout:
                self._waiting_since = None
                raise _Stalled(
                    f"no PUBACK for {self.ack_timeout:g} s with {self._in_flight} messages waiting"
                )

    async def _watch_refusals(self) -> None:
        """End the session when the client says it is not connected (its loss went unseen)."""
        await self._refused.wait()
        raise aiomqtt.MqttError("the client is not connected")

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
            self._batch_ready.clear()
            if self._unsent_readings >= self._mqtt.max_batch or self._stopping.is_set():
                return
            try:
                async with asyncio.timeout(wait):
                    await self._batch_ready.wait()
            except TimeoutError:
                pass
            return

    async def _send_data(self, client: aiomqtt.Client) -> None:
        """Hand buffered rows to the client, oldest first, while a session is up.

        Publishes it started wait for their PUBACK across reconnects (see the module
        docstring), so this loop outlives every connection."""
        m = self._mqtt
        slots = asyncio.Semaphore(m.max_inflight)
        fetch_readings = m.max_batch * m.max_inflight
        self._data_waiting.set()
        async with asyncio.TaskGroup() as tg:
            while True:
                await self._wait_for_data()
                await self._online.wait()
                if self._wedge_file is not None and os.path.exists(self._wedge_file):  # noqa: ASYNC240 - test only
                    await asyncio.Event().wait()  # test hook: hang as a lost wake-up would
                self._data_waiting.clear()
                self._first_unsent_at = None
                self._unsent_readings = 0
                resend_after = self._take_resend_point()
                if resend_after is not None:
                    self._cursor = min(self._cursor, resend_after)
                rows = await self._buffer.fetch(self._cursor, fetch_readings)
                if not rows:
                    self.last_progress = time.monotonic()
                    if not self._stopping.is_set():
                        continue
                    await self._all_acked.wait()
                    if self._resend_after is None:  # all handed over and acknowledged
                        self._flushed.set()
                        return
                    self._data_waiting.set()
                    continue
                self._cursor = rows[-1].seq
                for message in group_messages(rows, m.max_batch):
                    await slots.acquire()
                    await self._online.wait()
                    self._in_flight += 1
                    self.last_progress = time.monotonic()
                    self._all_acked.clear()
                    if self._waiting_since is None:
                        self._waiting_since = time.monotonic()
                    tg.create_task(self._publish_data(client, message, slots))
                # More may be waiting behind what one fetch takes.
                self._data_waiting.set()
                if self._first_unsent_at is None:
                    self._first_unsent_at = time.monotonic() - m.linger

    def _take_resend_point(self) -> int | None:
        point, self._resend_after = self._resend_after, None
        return point

    async def _publish_data(
        self, client: aiomqtt.Client, message: _Message, slots: asyncio.Semaphore
    ) -> None:
        seqs = [s.seq for s in message.samples]
        try:
            topic = f"{self._base}/{message.device_id}/data"
            payload = encode_pack(f"{self._gateway.id}/{message.device_id}/", message.samples)
            try:
                # No timeout here: the wait spans reconnects; _watch_acks bounds it while
                # connected, and stopping cancels it.
                await client.publish(topic, payload, qos=self._mqtt.qos, timeout=math.inf)
            except aiomqtt.MqttError:
                # Refused at once: the connection had just dropped. Send these rows again,
                # after the next connect.
                first = seqs[0] - 1
                self._resend_after = min(first, self._resend_after or first)
                self._online.clear()
                self._refused.set()
                self._data_waiting.set()
                return
            await self._buffer.ack(seqs)
            self._counters.samples_published += len(message.samples)
            self._counters.readings_published += message.readings
            self._counters.messages_published += 1
            self.last_progress = time.monotonic()
        finally:
            slots.release()
            self._in_flight -= 1
            if self._in_flight == 0:
                self._waiting_since = None
                self._all_acked.set()
            elif self._waiting_since is not None:
                self._waiting_since = time.monotonic()

    # ------------------------------------------------------------------ status, info, metrics

    def _info_payload(self) -> bytes:
        info = {
            "version": __version__,
            "labels": dict(self._gateway.labels),
            "started_at": round(self._started_at, 3),
            "devices": [{"id": d, "driver": drv} for d, drv in self._devices],
        }
        return json.dumps(info, separators=(",", ":")).encode()

    async def _send_info(self, client: aiomqtt.Client) -> None:
        while True:
            await self._info_stale.wait()
            self._info_stale.clear()
            await client.publish(self.info_topic, self._info_payload(), qos=1, retain=True)
            raise_if_cancelled()

    async def _send_statuses(self, client: aiomqtt.Client) -> None:
        while True:
            await self._status_watch.changed.wait()
            for device_id, status in self._status_watch.take():
                topic = f"{self._base}/{device_id}/status"
                await client.publish(topic, status.to_json().encode(), qos=1, retain=True)
                raise_if_cancelled()  # aiomqtt's wait_for may swallow a cancel (Python 3.11)

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
            **(self._extra_metrics() if self._extra_metrics is not None else {}),
        }

    async def _send_metrics(self, client: aiomqtt.Client) -> None:
        while True:
            payload = json.dumps(await self.metrics(), separators=(",", ":")).encode()
            await client.publish(self.metrics_topic, payload, qos=0)
            raise_if_cancelled()
            await asyncio.sleep(self._metrics_interval)


_CONNECTION_ERRORS = (aiomqtt.MqttError, OSError, ssl.SSLError, _SessionEnd, _Stalled)


def _describe(exc: BaseException) -> str:
    """Like :func:`describe`, with the cause aiomqtt hides behind a generic message."""
    if isinstance(exc, _Stalled):
        return str(exc)
    cause = exc.__cause__
    if isinstance(exc, aiomqtt.MqttError) and cause is not None:
        return f"connection lost ({describe(cause)})"
    return describe(exc)


def _prepare_reconnect(client: aiomqtt.Client) -> None:
    """Make ``async with client`` wait for the next CONNACK again.

    aiomqtt 2.5 resets its "connected" future only after a clean exit; after a lost connection
    it stays done, and the next ``__aenter__`` would return before the broker answered."""
    connected = client._connected
    if connected.done():
        client._connected = asyncio.get_running_loop().create_future()


def _drop_connection(client: aiomqtt.Client) -> None:
    """Close the connection at once, without a DISCONNECT (a stalled broker would not take it).

    Shutting the socket down makes paho read EOF on the event loop: it closes the socket and
    reports the loss, which ends ``client.messages``. The MQTT session survives (and so does
    the will: the broker publishes ``offline`` as for any lost connection)."""
    sock = client._client.socket()
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


async def _close_and_wait(client: aiomqtt.Client) -> None:
    """Drop the connection and wait (bounded) until the client has noticed, so that leaving
    ``async with client`` neither sends a DISCONNECT nor waits for one."""
    _drop_connection(client)
    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
        async with asyncio.timeout(DROP_TIMEOUT_S):
            async for _ in client.messages:
                pass


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    out: list[BaseException] = []
    for inner in exc.exceptions:
        out.extend(_leaves(inner))
    return out
