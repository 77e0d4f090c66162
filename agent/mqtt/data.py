"""The data loop: buffered samples to the broker as SenML packs, deleted once acknowledged.

Data leaves the buffer only after the broker acknowledged it: the loop reads samples from the
buffer after a cursor, publishes them as per-device SenML packs (QoS 1, at most ``max_inflight``
awaiting PUBACK) and deletes their rows when the PUBACK arrives.

Batching adapts to the load (as TCP's Nagle algorithm does): while no data message awaits its
PUBACK, a new sample goes out at once; while one does, new samples gather until a batch of
``max_batch`` readings is full, every message in flight is acknowledged, or ``linger`` has
passed, whichever comes first. At light load a reading therefore reaches the broker one round
trip after it is buffered; under load, or over a slow link, batches fill by themselves and the
per-message cost is shared by up to ``max_batch`` readings.

Reconnects. The loop outlives every connection of the session (agent/mqtt/session.py). A data
message in flight when the connection drops stays in the client's session: after the next
CONNACK the client sends it again with the same packet identifier and DUP set, before anything
new, and the publish that waits for its PUBACK (it outlives the connection) acks its rows when
that PUBACK comes. Data messages name their topic by an MQTT 5 topic alias after the first on a
connection (agent/mqtt/client.py); when one of those is cut, the client starts a new session
instead, the waits fail and the cursor goes back to their rows. The buffer's cursor therefore
goes back only for refused rows (below), a QoS 0 publish the client could not send, or aliased
messages of a renewed session; rows are otherwise sent a second time only at the next start.
Delivery stays at least once, ordered per device (paho sends and re-sends in publish order).

Refusals (MQTT 5). A PUBACK with a reason code of 0x80 or above (not authorized, topic name
invalid, quota exceeded, ...) leaves the message's rows in the buffer; the samples are counted
(``refused_samples``, each sample once), the device's refusal is logged once per episode with
the reason, and the device is set aside: its newer rows are skipped (they stay buffered, in
order) while the other devices' samples flow. After a delay (jittered, from
:data:`REFUSAL_RETRY_START_S` doubling to :data:`REFUSAL_RETRY_MAX_S`; no busy loop) the cursor
goes back to the device's oldest refused row and its rows are sent again; the first accepted
PUBACK ends the episode. Rows still in flight are never fetched twice. With MQTT 3.1.1 a broker
cannot refuse a publish: it drops it and the PUBACK says nothing (README).

Stalls. A broker that answers pings but stops acknowledging data is found by
:meth:`DataLoop.watch_acks`: no PUBACK for ``ack_timeout`` while messages wait for one ends the
session (the connection is dropped and made again).

Stopping: no new data is taken from the buffer once the flush time is over; what the broker
acknowledged by then is deleted, the rest stays buffered.

Health (:meth:`DataLoop.health`): connected, the loop is healthy while it makes progress by its
own standard: nothing to send, or taking data and getting PUBACKs within ``ack_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citygate.buffer import AsyncBuffer, StoredSample
from citygate.config import MqttSettings
from citygate.mqtt.client import Client, MqttError, reason_text
from citygate.mqtt.session import HEALTH_SLACK_S, Stalled
from citygate.senml import encode_pack, encode_pack_cbor, sets_base_unit
from citygate.status import Counters

log = logging.getLogger(__name__)

CONTENT_TYPES = {"json": "application/senml+json", "cbor": "application/senml+cbor"}
"""MQTT 5 content type of data messages, by ``mqtt.encoding`` (RFC 8428 media types)."""
REFUSAL_RETRY_START_S = 5.0
REFUSAL_RETRY_MAX_S = 60.0
PUBLISHER_STATUS_KEY = "#publisher"
"""The buffer's status entry for the publisher's figures (``citygate status``); no device id
can take it (ids start with a letter or digit)."""
SAVE_EVERY_S = 1.0  # the refused count reaches the buffer file at most this often


@dataclass(slots=True)
class _Refusal:
    """A device whose data the broker refuses: one episode."""

    reason: str
    first_seq: int  # its oldest refused row
    retry_at: float  # monotonic
    attempt: int = 0
    counted_to: int = 0  # the newest seq counted in refused_samples
    retrying: bool = False  # its rows are being sent again


@dataclass(slots=True)
class _Message:
    device_id: str
    samples: list[StoredSample] = field(default_factory=list)
    readings: int = 0
    base_unit: bool = False  # its last sample states a bu (citygate.senml)


def group_messages(samples: Sequence[StoredSample], max_batch: int) -> list[_Message]:
    """Split samples (in seq order) into per-device messages of at most
    ``max_batch`` readings each; a sample larger than that travels alone. A sample that
    states no base unit never follows one that does (its unitless records would inherit it)."""
    open_messages: dict[str, _Message] = {}
    done: list[_Message] = []
    for sample in samples:
        message = open_messages.get(sample.device_id)
        base_unit = sets_base_unit(sample.body)
        if message is not None and (
            message.readings + sample.readings > max_batch or (message.base_unit and not base_unit)
        ):
            done.append(message)
            message = None
        if message is None:
            message = _Message(sample.device_id)
            open_messages[sample.device_id] = message
        message.samples.append(sample)
        message.readings += sample.readings
        message.base_unit = base_unit
    done.extend(open_messages.values())
    return done


class DataLoop:
    """Hands buffered rows to the client while a session is up; acks them on PUBACK."""

    def __init__(
        self,
        mqtt: MqttSettings,
        gateway_id: str,
        topic_base: str,
        buffer: AsyncBuffer,
        counters: Counters,
        ack_timeout: float,
        *,
        before_fetch: Callable[[], Awaitable[None]] | None = None,
        on_acked: Callable[[StoredSample], None] | None = None,
    ) -> None:
        self._mqtt = mqtt
        self._on_acked = on_acked  # gets the newest sample of each acknowledged message
        self._gateway_id = gateway_id
        self._base = topic_base
        self._buffer = buffer
        self._counters = counters
        self.ack_timeout = ack_timeout
        """How long the broker may leave data unacknowledged before the session ends."""
        self._before_fetch = before_fetch
        cbor = mqtt.encoding == "cbor"
        self._encode = encode_pack_cbor if cbor else encode_pack
        self._properties: Properties | None = None
        if mqtt.protocol == "5":  # MQTT 5 says what the payload is
            self._properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            self._properties.ContentType = CONTENT_TYPES[mqtt.encoding]
        self._data_waiting = asyncio.Event()
        self._batch_ready = asyncio.Event()  # a full batch waits, or stopping: end the linger
        self._unsent_readings = 0
        self._first_unsent_at: float | None = None
        self._stopping = False
        self._flushed = asyncio.Event()
        self._online = asyncio.Event()  # a session is up: data may be handed to the client
        self._cursor = 0  # the last seq handed to the client (rows after it are not yet sent)
        self._in_flight = 0  # data messages handed to the client and not yet acknowledged
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._waiting_since: float | None = None  # since when a PUBACK is awaited in vain
        self._not_sent = asyncio.Event()  # the client could not send a data publish
        self._resend_after: int | None = None  # the cursor goes back here (not sent, refused)
        self._sending: set[int] = set()  # seqs handed to the client, not yet answered
        self._refusals: dict[str, _Refusal] = {}  # devices whose data the broker refuses
        self._retry_timer: asyncio.TimerHandle | None = None
        self.refused_samples = 0
        """Samples the broker refused (PUBACK reason code ≥ 0x80), each counted once."""
        self._saved_refused = 0  # what the buffer file says (for `citygate status`)
        self._saved_at = 0.0
        self.last_progress = time.monotonic()
        """Last PUBACK, message handed over, empty fetch or session start (see health())."""

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

    def stop(self) -> None:
        """Take what the buffer holds now without lingering, then end :meth:`run`."""
        self._stopping = True
        self._data_waiting.set()
        self._batch_ready.set()

    def resume(self) -> None:
        """A session is up: hand data to the client (what was in flight is re-sent first)."""
        self.last_progress = time.monotonic()
        if self._in_flight:
            self._waiting_since = time.monotonic()  # the client re-sends them now
        self._not_sent.clear()
        self._online.set()

    def pause(self) -> None:
        """No session: hand nothing more to the client."""
        self._online.clear()

    async def flush(self, within: float) -> None:
        """Stopping: wait at most ``within`` seconds for all to be sent and acked, then pause."""
        try:
            async with asyncio.timeout(within):
                await self._flushed.wait()
        except TimeoutError:
            log.warning("stopping: samples the broker did not take in time stay buffered")
        self.pause()
        await self.save_figures()

    def health(self, now: float) -> str | None:
        """Connected: None while nothing waits to be sent or acknowledged, or the oldest wait
        is answered (a message handed over, a PUBACK) within ``ack_timeout`` plus ``linger``."""
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

    async def watch_acks(self) -> None:
        """End the session when the broker stops acknowledging data."""
        period = max(0.05, min(1.0, self.ack_timeout / 4))
        while True:
            await asyncio.sleep(period)
            since = self._waiting_since
            if since is not None and time.monotonic() - since > self.ack_timeout:
                self._waiting_since = None
                raise Stalled(
                    f"no PUBACK for {self.ack_timeout:g} s with {self._in_flight} messages waiting"
                )

    async def watch_refusals(self) -> None:
        """End the session when the client could not send (its loss went unseen)."""
        await self._not_sent.wait()
        raise MqttError("the client is not connected")

    async def _wait_for_data(self) -> None:
        await self._data_waiting.wait()
        if self._stopping or self._unsent_readings >= self._mqtt.max_batch:
            return
        first = self._first_unsent_at
        if first is None or self._in_flight == 0:
            return  # nothing in flight: waiting for a fuller batch would only add latency
        wait = first + self._mqtt.linger - time.monotonic()
        if wait <= 0:
            return
        self._batch_ready.clear()  # set by a full batch, an empty window, a retry or stop()
        try:
            async with asyncio.timeout(wait):
                await self._batch_ready.wait()
        except TimeoutError:
            pass

    async def run(self, client: Client) -> None:
        """Hand buffered rows to ``client``, oldest first, while a session is up.

        Publishes it started wait for their PUBACK across reconnects (see the module
        docstring), so this loop outlives every connection."""
        m = self._mqtt
        slots = asyncio.Semaphore(m.max_inflight)
        fetch_readings = m.max_batch * m.max_inflight
        self._data_waiting.set()
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    await self._wait_for_data()
                    await self._online.wait()
                    if self._before_fetch is not None:
                        await self._before_fetch()
                    self._data_waiting.clear()
                    self._first_unsent_at = None
                    self._unsent_readings = 0
                    self._retry_due_refusals()
                    resend_after = self._take_resend_point()
                    if resend_after is not None:
                        self._cursor = min(self._cursor, resend_after)
                    fetched = await self._buffer.fetch(self._cursor, fetch_readings)
                    if fetched:
                        self._cursor = fetched[-1].seq
                    rows = [r for r in fetched if self._sendable(r)]
                    if not rows:
                        self.last_progress = time.monotonic()
                        if fetched:  # only rows to skip: fetch on from the cursor, further on
                            self._data_waiting.set()
                            continue
                        if not self._stopping:
                            continue
                        await self._all_acked.wait()
                        if self._resend_after is None:  # all handed over and answered
                            self._flushed.set()
                            return
                        self._data_waiting.set()
                        continue
                    for message in group_messages(rows, m.max_batch):
                        await slots.acquire()
                        await self._online.wait()
                        if self._resend_after is not None:
                            # The cursor went back while this batch waited (rows not sent, a
                            # renewed session, a refusal ended): fetch again from there, or
                            # newer rows of a device would overtake the ones going again.
                            slots.release()
                            break
                        self._in_flight += 1
                        self._sending.update(s.seq for s in message.samples)
                        self.last_progress = time.monotonic()
                        self._all_acked.clear()
                        if self._waiting_since is None:
                            self._waiting_since = time.monotonic()
                        tg.create_task(self._publish(client, message, slots))
                    # More may be waiting behind what one fetch takes.
                    self._data_waiting.set()
                    if self._first_unsent_at is None:
                        self._first_unsent_at = time.monotonic() - m.linger
        finally:
            if self._retry_timer is not None:
                self._retry_timer.cancel()

    def _sendable(self, row: StoredSample) -> bool:
        """Not in flight already, and not of a device whose data the broker refuses."""
        if row.seq in self._sending:
            return False
        refusal = self._refusals.get(row.device_id)
        return refusal is None or refusal.retrying

    def _retry_due_refusals(self) -> None:
        now = time.monotonic()
        for refusal in self._refusals.values():
            if not refusal.retrying and refusal.retry_at <= now:
                refusal.retrying = True
                self._rewind(refusal.first_seq - 1)

    def _rewind(self, after_seq: int) -> None:
        point = self._resend_after
        self._resend_after = after_seq if point is None else min(point, after_seq)
        self._data_waiting.set()

    def _take_resend_point(self) -> int | None:
        point, self._resend_after = self._resend_after, None
        return point

    async def save_figures(self) -> None:
        """Put ``refused_samples`` in the buffer file, for ``citygate status`` (if changed)."""
        if self.refused_samples == self._saved_refused:
            return
        self._saved_refused, self._saved_at = self.refused_samples, time.monotonic()
        figures = {"refused_samples": self.refused_samples}
        await self._buffer.save_device_status(PUBLISHER_STATUS_KEY, json.dumps(figures))

    def _refused(self, message: _Message, reason: ReasonCode) -> None:
        """The broker refused ``message``: its rows stay buffered; set the device aside."""
        device = message.device_id
        first, last = message.samples[0].seq, message.samples[-1].seq
        text = reason_text(reason)
        refusal = self._refusals.get(device)
        if refusal is None:
            refusal = _Refusal(text, first, 0.0)
            self._refusals[device] = refusal
            log.warning(
                "broker refuses data of %s (%s/%s/data): %s; its samples stay buffered and are "
                "sent again later",
                device,
                self._base,
                device,
                text,
            )
        elif refusal.retrying:
            refusal.retrying = False
            refusal.attempt += 1
            refusal.first_seq = first
        refusal.first_seq = min(refusal.first_seq, first)
        if text != refusal.reason:
            refusal.reason = text
            log.warning("broker refuses data of %s: now %s", device, text)
        counted = [s for s in message.samples if s.seq > refusal.counted_to]
        self.refused_samples += len(counted)
        refusal.counted_to = max(refusal.counted_to, last)
        delay = min(REFUSAL_RETRY_MAX_S, REFUSAL_RETRY_START_S * 2**refusal.attempt)
        delay = random.uniform(delay / 2, delay)
        refusal.retry_at = time.monotonic() + delay
        self._schedule_retry()

    def _accepted(self, device: str) -> None:
        refusal = self._refusals.pop(device, None)
        if refusal is not None:
            log.info("broker accepts data of %s again", device)
            self._rewind(refusal.first_seq - 1)  # what it refused goes out now (never twice:
            # rows in flight are skipped, acknowledged rows are gone)
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        waiting = [r.retry_at for r in self._refusals.values() if not r.retrying]
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if waiting:
            delay = max(0.0, min(waiting) - time.monotonic())
            self._retry_timer = asyncio.get_running_loop().call_later(delay, self._retry_wakeup)

    def _retry_wakeup(self) -> None:
        self._retry_timer = None
        self._data_waiting.set()
        self._batch_ready.set()

    async def _publish(self, client: Client, message: _Message, slots: asyncio.Semaphore) -> None:
        seqs = [s.seq for s in message.samples]
        try:
            topic = f"{self._base}/{message.device_id}/data"
            payload = self._encode(f"{self._gateway_id}/{message.device_id}/", message.samples)
            try:
                # No timeout here: the wait spans reconnects; watch_acks bounds it while
                # connected, and stopping cancels it.
                reason = await client.publish(
                    topic, payload, qos=self._mqtt.qos, properties=self._properties, alias=True
                )
            except MqttError:
                # QoS 0 and not connected, or the session was renewed (aliased publishes cut):
                # send these rows again, after the next connect.
                self._rewind(seqs[0] - 1)
                self._online.clear()
                self._not_sent.set()
                return
            if reason is not None and reason.is_failure:
                self._refused(message, reason)
                self.last_progress = time.monotonic()
                if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
                    await self.save_figures()
                return
            self._accepted(message.device_id)
            await self._buffer.ack(seqs, fold=True)  # deleted by the next append
            if self._on_acked is not None:
                self._on_acked(message.samples[-1])
            self._counters.samples_published += len(message.samples)
            self._counters.readings_published += message.readings
            self._counters.messages_published += 1
            self.last_progress = time.monotonic()
        finally:
            self._sending.difference_update(seqs)
            slots.release()
            self._in_flight -= 1
            if self._in_flight == 0:
                self._waiting_since = None
                self._all_acked.set()
                self._batch_ready.set()  # the window is empty: what waits goes out now
            elif self._waiting_since is not None:
                self._waiting_since = time.monotonic()
