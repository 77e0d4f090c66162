"""The data loop: buffered samples to the broker as SenML packs, deleted once acknowledged.

Data leaves the buffer only after the broker acknowledged it: the loop reads samples from the
buffer after a cursor, publishes them as per-device SenML packs (QoS 1, at most ``max_inflight``
awaiting PUBACK) and deletes their rows when the PUBACK arrives. New samples wait up to
``linger`` for a batch of ``max_batch`` readings to fill.

Reconnects. The loop outlives every connection of the session (agent/mqtt/session.py). A data
message in flight when the connection drops stays in the client's session: after the next
CONNACK the client sends it again with the same packet identifier and DUP set, before anything
new, and the publish that waits for its PUBACK (it outlives the connection) acks its rows when
that PUBACK comes. The buffer's cursor therefore never goes back while the publisher runs; rows
are sent a second time only when the client refused a publish outright (the connection had just
dropped) or at the next start. Delivery stays at least once, ordered per device (paho sends and
re-sends in publish order).

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
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiomqtt

from citygate.buffer import AsyncBuffer, StoredSample
from citygate.config import MqttSettings
from citygate.mqtt.session import HEALTH_SLACK_S, Stalled
from citygate.senml import encode_pack
from citygate.status import Counters

log = logging.getLogger(__name__)


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
    ) -> None:
        self._mqtt = mqtt
        self._gateway_id = gateway_id
        self._base = topic_base
        self._buffer = buffer
        self._counters = counters
        self.ack_timeout = ack_timeout
        """How long the broker may leave data unacknowledged before the session ends."""
        self._before_fetch = before_fetch
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
        self._refused = asyncio.Event()  # the client refused a data publish: not connected
        self._resend_after: int | None = None  # the cursor goes back here: a refused publish
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
        self._refused.clear()
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
        """End the session when the client says it is not connected (its loss went unseen)."""
        await self._refused.wait()
        raise aiomqtt.MqttError("the client is not connected")

    async def _wait_for_data(self) -> None:
        while True:
            await self._data_waiting.wait()
            if self._stopping or self._unsent_readings >= self._mqtt.max_batch:
                return
            first = self._first_unsent_at
            if first is None:
                return
            wait = first + self._mqtt.linger - time.monotonic()
            if wait <= 0:
                return
            self._batch_ready.clear()
            if self._unsent_readings >= self._mqtt.max_batch or self._stopping:
                return
            try:
                async with asyncio.timeout(wait):
                    await self._batch_ready.wait()
            except TimeoutError:
                pass
            return

    async def run(self, client: aiomqtt.Client) -> None:
        """Hand buffered rows to ``client``, oldest first, while a session is up.

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
                if self._before_fetch is not None:
                    await self._before_fetch()
                self._data_waiting.clear()
                self._first_unsent_at = None
                self._unsent_readings = 0
                resend_after = self._take_resend_point()
                if resend_after is not None:
                    self._cursor = min(self._cursor, resend_after)
                rows = await self._buffer.fetch(self._cursor, fetch_readings)
                if not rows:
                    self.last_progress = time.monotonic()
                    if not self._stopping:
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
                    tg.create_task(self._publish(client, message, slots))
                # More may be waiting behind what one fetch takes.
                self._data_waiting.set()
                if self._first_unsent_at is None:
                    self._first_unsent_at = time.monotonic() - m.linger

    def _take_resend_point(self) -> int | None:
        point, self._resend_after = self._resend_after, None
        return point

    async def _publish(
        self, client: aiomqtt.Client, message: _Message, slots: asyncio.Semaphore
    ) -> None:
        seqs = [s.seq for s in message.samples]
        try:
            topic = f"{self._base}/{message.device_id}/data"
            payload = encode_pack(f"{self._gateway_id}/{message.device_id}/", message.samples)
            try:
                # No timeout here: the wait spans reconnects; watch_acks bounds it while
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
