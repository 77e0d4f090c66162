"""``citygate sink``: data messages from the broker into PostgreSQL, acknowledged after commit.

Receiving. One MQTT client (agent/mqtt/client.py) with manual acknowledgement, subscribed at
QoS 1 to ``P/+/+/data`` (``$share/GROUP/P/+/+/data`` with a share group: the broker gives each
message to one sink of the group). The session is persistent (MQTT 5 clean start off with a
session expiry of :data:`SESSION_EXPIRY_S`; 3.1.1 clean session off) under a client id of its
own, so the broker keeps what arrives while the sink is away and sends it again, with what was
sent but never acknowledged, when it comes back. The broker has at most ``receive_maximum``
unacknowledged messages in flight to the sink (MQTT 5 Receive Maximum; a 3.1.1 broker has its
own in-flight limit). A broker that sends more anyway (Mosquitto 2.0.11 does, after a session
with a queue resumes: measured 2,500 to 3,000 unacknowledged with a Receive Maximum of 500)
meets backpressure: with :meth:`Sink.max_pending` messages waiting the sink stops reading the
socket until the writer has taken a batch, so what waits here stays bounded.

Writing. Messages wait in arrival order until ``batch_rows`` readings or ``batch_ms`` since the
first; the batch is parsed (agent/sink/parse.py) and committed in one transaction
(agent/sink/db.py). Only then are its messages acknowledged, in the order they came, and only on
the connection that brought them: after a reconnect the broker sends them again and the unique
key on (gateway, seq, quantity) turns them into counted duplicates. A malformed message becomes a
dead letter in the same transaction and is acknowledged with the batch: it never blocks the
sink or comes back. The database down or too slow: the batch is kept, nothing is acknowledged,
and the write is retried with backoff (capped at :data:`DB_RETRY_MAX_S`) on a new connection,
while the broker, its in-flight window full, holds the rest.

Stopping (SIGTERM, SIGINT): messages already received are written and acknowledged (for at most
:data:`FLUSH_S`), then the client disconnects; the session stays with the broker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from citygate.mqtt.client import Client, ConnectRefused, Incoming, MqttError, reason_text
from citygate.mqtt.session import FullJitter
from citygate.sink.db import Item, Store, StoreError, Written
from citygate.sink.parse import MAX_PAYLOAD, Malformed, parse_message

log = logging.getLogger("citygate.sink")

SESSION_EXPIRY_S = 7 * 86400
"""How long the broker keeps the sink's session (and queues for it) while it is away."""
ACK_TIMEOUT_S = 10.0
DB_TIMEOUT_S = 30.0
DB_RETRY_MAX_S = 10.0
RECONNECT_MAX_S = 5.0
FLUSH_S = 5.0
KEEPALIVE_S = 30


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One broker: ``url`` as given, where it is, and whether it speaks TLS."""

    url: str
    host: str
    port: int
    tls: bool


@dataclass(frozen=True, slots=True)
class SinkSettings:
    """What ``citygate sink`` was told."""

    brokers: tuple[Endpoint, ...]
    database: str
    client_id: str
    topic_prefix: str = "city"
    share: str | None = None
    protocol: str = "5"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    batch_rows: int = 5000
    batch_ms: float = 100.0
    receive_maximum: int = 500
    stats_interval: float = 60.0

    @property
    def topic_filter(self) -> str:
        """The data topics (what the messages are routed on)."""
        return f"{self.topic_prefix}/+/+/data"

    @property
    def subscription(self) -> str:
        """What is subscribed: the data topics, shared when there is a share group."""
        return f"$share/{self.share}/{self.topic_filter}" if self.share else self.topic_filter


def default_client_id(share: str | None) -> str:
    """``citygate-sink-<host>[-<group>]``: one sink per host and share group keeps its session."""
    host = socket.gethostname() or "localhost"
    return f"citygate-sink-{host}" + (f"-{share}" if share else "")


@dataclass(slots=True)
class _Pending:
    incoming: Incoming
    connection: int  # which connection brought it: acknowledged only on that one
    received_at: float


@dataclass(slots=True)
class SinkCounters:
    """Counted since start (logged every ``stats_interval``)."""

    messages: int = 0
    rows_written: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    acked: int = 0
    batches: int = 0
    db_failures: int = 0
    broker_reconnects: int = 0
    read_pauses: int = 0  # the broker sent more than max_pending: backpressure
    dead_by_kind: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.dead_by_kind.items()))
        return (
            f"sink: {self.rows_written} rows written, {self.duplicates} duplicates skipped, "
            f"{self.dead_letters} dead letters{f' ({kinds})' if kinds else ''}, "
            f"{self.messages} messages in {self.batches} batches, {self.acked} acknowledged, "
            f"{self.db_failures} database failures, {self.broker_reconnects} broker reconnects, "
            f"{self.read_pauses} read pauses"
        )


class Sink:
    """Runs until :meth:`stop`; see the module docstring."""

    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.counters = SinkCounters()
        self._pending: deque[_Pending] = deque()
        self._pending_bytes = 0
        self._arrived = asyncio.Event()
        self._stopping = asyncio.Event()
        self._flushed = asyncio.Event()
        self._connection = 0  # counts connections; 0: none yet
        self._client: Client | None = None
        self._logged_kinds: set[str] = set()
        self._stop_time: float | None = None
        self._store: Store | None = None
        self._db_error: str | None = None  # the last failure logged, until a write succeeds

    @property
    def max_pending(self) -> int:
        """Messages waiting beyond which the sink stops reading from the broker (a broker
        should keep to the Receive Maximum; Mosquitto 2.0.11 may not, after a session resumes)."""
        return self.settings.receive_maximum

    def stop(self) -> None:
        """Write what was received, acknowledge it, disconnect (see the module docstring)."""
        if self._stop_time is None:
            self._stop_time = time.monotonic()
        self._stopping.set()
        self._arrived.set()

    async def run(self) -> None:
        """Receive and write until :meth:`stop`."""
        s = self.settings
        tls = s.brokers[0].tls
        client = self._client = Client(
            client_id=s.client_id,
            protocol=s.protocol,
            keepalive=KEEPALIVE_S,
            will=None,
            session_expiry=SESSION_EXPIRY_S,
            max_inflight=20,
            username=s.username,
            password=s.password,
            tls=tls,
            ca_file=s.ca_file,
            connect_timeout=ACK_TIMEOUT_S,
            manual_ack=True,
            receive_maximum=s.receive_maximum,
            max_packet_size=MAX_PAYLOAD + 64 * 1024,
        )
        client.route(s.topic_filter, self._received)
        log.info(
            "sink: client id %s, subscribing to %s, writing to %s",
            s.client_id,
            s.subscription,
            _safe_dsn(s.database),
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._broker_loop(client), name="sink-broker")
            tg.create_task(self._write_loop(client), name="sink-writer")
            stats = tg.create_task(self._stats_loop(), name="sink-stats")
            await self._flushed.wait()
            stats.cancel()
        log.info("%s", self.counters.line())

    # ---------------------------------------------------------------- receiving

    def _received(self, incoming: Incoming) -> None:
        """A data message (on the event loop): queued for the writer, never parsed here."""
        if self._stopping.is_set():
            return  # not acknowledged: the broker sends it again (or to another of the group)
        if len(self._pending) >= self.max_pending and self._client is not None:
            self._client.pause_reading()  # until the writer has taken a batch
            self.counters.read_pauses += 1
        self._pending.append(_Pending(incoming, self._connection, time.time()))
        self._pending_bytes += len(incoming.payload)
        self._arrived.set()

    async def _broker_loop(self, client: Client) -> None:
        endpoints = self.settings.brokers
        backoff = FullJitter(start=0.25, cap=RECONNECT_MAX_S)
        index = 0
        last_error: str | None = None
        connected_before = False
        while not self._stopping.is_set():
            endpoint = endpoints[index]
            refused = False
            try:
                # What came on an earlier connection is sent again on this one. (Counted before
                # the CONNACK: the session's messages may come in the same read.)
                self._connection += 1
                self._pending.clear()
                self._pending_bytes = 0
                await client.connect(endpoint.host, endpoint.port, ACK_TIMEOUT_S)
                reason = await client.subscribe(self.settings.subscription, 1, ACK_TIMEOUT_S)
                if reason.is_failure:
                    raise MqttError(
                        f"subscription to {self.settings.subscription} refused: "
                        f"{reason_text(reason)} (check the broker's ACL)"
                    )
                if connected_before:
                    self.counters.broker_reconnects += 1
                connected_before = True
                log.info("sink: broker %s: connected, subscribed", endpoint.url)
                last_error = None
                backoff.reset()
                await self._connected(client)
                return  # stopped
            except (MqttError, OSError, TimeoutError) as exc:
                client.drop()
                refused = isinstance(exc, ConnectRefused)
                error = _describe(exc)
                if error != last_error:
                    log.warning("sink: broker %s: %s (retrying with backoff)", endpoint.url, error)
                    last_error = error
                index = (index + 1) % len(endpoints)
            delay = backoff.next_delay() * (4 if refused else 1)
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    async def _connected(self, client: Client) -> None:
        """One connection's life: returns when stopped (flushed), raises when lost."""
        lost = client.lost
        keepalive = asyncio.create_task(client.keep_alive())
        flushed = asyncio.create_task(self._flushed.wait())
        try:
            waiters: list[asyncio.Future[Any]] = [lost, flushed]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            keepalive.cancel()
            flushed.cancel()
            await asyncio.gather(keepalive, flushed, return_exceptions=True)
        if lost.done():
            lost.result()  # raises MqttError: why the connection ended
        await client.disconnect(2.0)

    # ---------------------------------------------------------------- writing

    async def _write_loop(self, client: Client) -> None:
        try:
            # Connect and apply the schema before the first message.
            if await self._database(None) is None:
                return
            while True:
                batch, items = await self._next_batch()
                if not batch:
                    return
                written = await self._database(items)
                if written is None:
                    return  # stopping with the database still failing: nothing acknowledged
                self._committed(client, batch, items, written.rows, written.duplicates)
        finally:
            if self._store is not None:
                self._store.close()
                self._store = None
            self._flushed.set()

    async def _database(self, items: list[Item] | None) -> Written | None:
        """Commit ``items`` (None: only connect), retrying with backoff on a new connection
        until it succeeds; None when stopping meanwhile (past the flush time)."""
        backoff = FullJitter(start=0.25, cap=DB_RETRY_MAX_S)
        dsn = _safe_dsn(self.settings.database)
        while True:
            try:
                if self._store is None:
                    self._store = await Store.open(self.settings.database, DB_TIMEOUT_S)
                    log.info("sink: database %s: connected, schema applied", dsn)
                written = Written(0, 0, 0) if items is None else await self._store.write(items)
            except StoreError as exc:
                self.counters.db_failures += 1
                if self._store is not None:
                    self._store.close()
                    self._store = None
                if str(exc) != self._db_error:
                    log.warning("sink: database %s: %s (nothing acknowledged; retrying)", dsn, exc)
                    self._db_error = str(exc)
                if self._stopping.is_set() and (items is None or self._past_flush()):
                    return None
                await asyncio.sleep(backoff.next_delay())
                continue
            if self._db_error is not None:
                log.info("sink: database %s: writing again", dsn)
                self._db_error = None
            return written

    async def _next_batch(self) -> tuple[list[_Pending], list[Item]]:
        """Wait for messages, then up to ``batch_ms`` for more (not when the broker's window is
        full); take messages up to ``batch_rows`` readings. Empty when stopping and nothing is
        left (or the flush time is over)."""
        s = self.settings
        while True:
            while not self._pending:
                if self._stopping.is_set():
                    return [], []
                self._arrived.clear()
                await self._arrived.wait()
            if self._past_flush():
                return [], []
            await self._linger()
            if self._pending:  # (a reconnect may have emptied it meanwhile)
                break
        batch: list[_Pending] = []
        items: list[Item] = []
        rows = 0
        prefix = s.topic_prefix
        while self._pending and rows < s.batch_rows:
            p = self._pending.popleft()
            self._pending_bytes -= len(p.incoming.payload)
            topic, payload = p.incoming.topic, p.incoming.payload
            try:
                item = Item(topic, payload, p.received_at, parse_message(topic, payload, prefix))
            except Malformed as exc:
                item = Item(topic, payload, p.received_at, (), f"{exc.kind}: {exc}")
            batch.append(p)
            items.append(item)
            rows += len(item.rows)
        if self._client is not None and len(self._pending) < self.max_pending:
            self._client.resume_reading()
        return batch, items

    async def _linger(self) -> None:
        """Up to ``batch_ms`` after the first message waiting, while the batch can grow."""
        s = self.settings
        deadline = self._pending[0].received_at + s.batch_ms / 1000
        # Until parsed, payload bytes stand for readings: at least ~20 bytes each in JSON.
        while (
            not self._stopping.is_set()
            and 0 < len(self._pending) < s.receive_maximum
            and self._pending_bytes < 20 * s.batch_rows
        ):
            remaining = deadline - time.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                return

    def _committed(
        self, client: Client, batch: list[_Pending], items: list[Item], rows: int, duplicates: int
    ) -> None:
        """The batch is in the database: count, log dead letters, acknowledge."""
        c = self.counters
        c.batches += 1
        c.messages += len(batch)
        c.rows_written += rows
        c.duplicates += duplicates
        for item in items:
            if item.error is not None:
                c.dead_letters += 1
                kind = item.error.split(":", 1)[0]
                c.dead_by_kind[kind] += 1
                if kind not in self._logged_kinds:
                    self._logged_kinds.add(kind)
                    log.warning(
                        "sink: dead letter on %s: %s (stored in dead_letter; further %s "
                        "messages are counted, not logged)",
                        item.topic,
                        item.error,
                        kind,
                    )
        connected = client.is_connected
        for p in batch:
            if connected and p.connection == self._connection and client.ack(p.incoming):
                c.acked += 1

    def _past_flush(self) -> bool:
        return self._stop_time is not None and time.monotonic() > self._stop_time + FLUSH_S

    # ---------------------------------------------------------------- stats

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            log.info("%s", self.counters.line())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def _safe_dsn(dsn: str) -> str:
    """The DSN without its password."""
    head, at, tail = dsn.rpartition("@")
    if not at:
        return dsn
    scheme, sep, user = head.partition("://")
    return f"{scheme}{sep}{user.split(':', 1)[0]}@{tail}"


async def serve(settings: SinkSettings) -> int:
    """Run a sink until SIGTERM or SIGINT; the exit status."""
    sink = Sink(settings)
    loop = asyncio.get_running_loop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sink.stop)
    try:
        await sink.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


def run(settings: SinkSettings) -> int:
    """The ``citygate sink`` entry point."""
    return asyncio.run(serve(settings))
