"""Many emulated gateways in one asyncio process, speaking citygate's wire format over raw
MQTT 3.1.1 sockets (../shared/spec/mqtt.md): retained ``P/G/status`` ``online`` after each
connect with the will ``offline``, retained ``P/G/info``, and SenML JSON data on ``P/G/D/data``,
each sample with ``bt`` (its time) and a ``seq`` that grows per gateway.

Like the agent, a gateway samples whether or not it is connected (the samples wait in memory),
publishes at QoS 1 with at most :data:`MAX_INFLIGHT` messages unacknowledged, keeps every
unacknowledged message and sends it again (DUP) on the next connection: at least once, nothing
lost. A lost connection is retried on the next node of the list after a full-jitter backoff
(0.25 s doubling, capped at 5 s), as the agent does with ``mqtt.url`` a list.

A raw codec, not paho: 1,000 paho clients with their threads or loop callbacks would take the
CPU that the brokers, the sinks and PostgreSQL need on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import struct
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_INFLIGHT = 20
MAX_BATCH = 100
"""Readings per data message at most (the agent's ``mqtt.max_batch`` default is larger)."""
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
BACKOFF_START_S, BACKOFF_CAP_S = 0.25, 5.0
MAX_BACKLOG = 100_000
"""Samples a gateway keeps while disconnected; more are dropped and counted."""

QUANTITIES = (
    ("voltage_l1", "V"),
    ("voltage_l2", "V"),
    ("voltage_l3", "V"),
    ("current_l1", "A"),
    ("current_l2", "A"),
    ("current_l3", "A"),
    ("active_power", "W"),
    ("energy_import", "kWh"),
    ("frequency", "Hz"),
    ("power_factor", None),
)


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect_packet(client_id: str, will_topic: str, will_payload: bytes) -> bytes:
    """CONNECT, protocol 3.1.1, clean session, a retained QoS 1 will."""
    flags = 0x02 | 0x04 | 0x08 | 0x20
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", KEEPALIVE_S)
    body += _string(client_id) + _string(will_topic) + _string(will_payload)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, pid: int, *, retain: bool, dup: bool) -> bytes:
    """PUBLISH at QoS 1."""
    body = _string(topic) + struct.pack("!H", pid) + payload
    head = 0x32 | (0x01 if retain else 0) | (0x08 if dup else 0)
    return bytes([head]) + _remaining_length(len(body)) + body


DISCONNECT = b"\xe0\x00"


def data_payload(gateway: str, device: str, samples: Sequence[tuple[int, float]]) -> bytes:
    """A SenML pack of ``samples`` (seq, time), :data:`QUANTITIES` each, oldest first."""
    records: list[dict[str, object]] = []
    for seq, t in samples:
        for i, (name, unit) in enumerate(QUANTITIES):
            rec: dict[str, object] = {}
            if not records:
                rec["bn"] = f"{gateway}/{device}/"
            if i == 0:
                rec["bt"] = round(t, 3)
                rec["seq"] = seq
            rec["n"] = name
            if unit is not None:
                rec["u"] = unit
            rec["v"] = round(230.0 + (seq % 100) / 10 + i, 1)
            records.append(rec)
    return json.dumps(records, separators=(",", ":")).encode()


@dataclass
class FleetStats:
    """What the generator did, for the report."""

    started: float = field(default_factory=time.monotonic)
    attempts: Counter[int] = field(default_factory=Counter)  # connect attempts per second
    connects: int = 0
    samples: int = 0
    readings: int = 0
    dropped_samples: int = 0
    resent_messages: int = 0
    acked_messages: int = 0

    def attempt(self) -> None:
        self.attempts[int(time.monotonic() - self.started)] += 1


class _Lost(Exception):
    pass


class Gateway:
    """One emulated gateway (one device); :meth:`run` until the stop event, then drain."""

    def __init__(
        self,
        gid: str,
        prefix: str,
        nodes: Sequence[tuple[str, int]],
        first_node: int,
        stats: FleetStats,
        *,
        interval: float,
    ) -> None:
        self.gid = gid
        self.prefix = prefix
        self.device = "meter-1"
        self.nodes = nodes
        self.node = first_node % len(nodes)
        self.stats = stats
        self.interval = interval
        self.seq = 0
        self.backlog: deque[tuple[int, float]] = deque()  # samples not yet in a message
        self.unacked: dict[int, tuple[bytes, int]] = {}  # pid -> (packet, samples)
        self.connected_node: int | None = None
        self.ever_connected = False
        self.wake = asyncio.Event()
        self._pid = 0
        self._acked = asyncio.Event()

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.gid}/{self.device}/data"

    @property
    def drained(self) -> bool:
        return not self.backlog and not self.unacked

    def _next_pid(self) -> int:
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self.unacked:
                return self._pid

    async def sample_loop(self, stop: asyncio.Event) -> None:
        """A sample every ``interval`` (first at a random phase), until ``stop``."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + random.uniform(0, self.interval)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_at):
                    await stop.wait()
            if stop.is_set():
                return
            next_at += self.interval
            self.seq += 1
            if len(self.backlog) >= MAX_BACKLOG:
                self.backlog.popleft()
                self.stats.dropped_samples += 1
            self.backlog.append((self.seq, time.time()))
            self.stats.samples += 1
            self.stats.readings += len(QUANTITIES)
            self.wake.set()

    async def run(self, stop: asyncio.Event, done: asyncio.Event) -> None:
        """Connect, publish, reconnect; after ``stop`` send what is left, then say offline and
        disconnect (or give up at ``done``)."""
        delay = BACKOFF_START_S
        while not done.is_set():
            host, port = self.nodes[self.node]
            self.stats.attempt()
            try:
                await self._session(host, port, stop, done)
                return
            except (OSError, TimeoutError, _Lost, asyncio.IncompleteReadError):
                self.connected_node = None
            self.node = (self.node + 1) % len(self.nodes)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(random.uniform(0, delay)):
                    await done.wait()
            delay = min(delay * 2, BACKOFF_CAP_S)

    async def _session(
        self, host: str, port: int, stop: asyncio.Event, done: asyncio.Event
    ) -> None:
        status = f"{self.prefix}/{self.gid}/status"
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(connect_packet(f"loadgen-{self.gid}", status, b"offline"))
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await writer.drain()
                head = await reader.readexactly(4)
            if head != b"\x20\x02\x00\x00":
                raise _Lost(f"CONNACK {head!r}")
            self.connected_node = self.node
            self.ever_connected = True
            self.stats.connects += 1
            reading = asyncio.create_task(self._read(reader))
            try:
                await self._publish_loop(writer, status, stop, done, reading)
            finally:
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _send(self, writer: asyncio.StreamWriter, packet: bytes) -> None:
        writer.write(packet)
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()

    async def _publish_loop(
        self,
        writer: asyncio.StreamWriter,
        status: str,
        stop: asyncio.Event,
        done: asyncio.Event,
        reading: asyncio.Task[None],
    ) -> None:
        # What was not acknowledged on the last connection goes first, in the order sent.
        for packet, _n in list(self.unacked.values()):
            await self._send(writer, bytes([packet[0] | 0x08]) + packet[1:])
            self.stats.resent_messages += 1
        for topic, payload in (
            (status, b"online"),
            (
                f"{self.prefix}/{self.gid}/info",
                json.dumps(
                    {
                        "version": "loadgen",
                        "labels": {"district": self.prefix},
                        "started_at": round(time.time(), 3),
                        "devices": [{"id": self.device, "driver": "loadgen"}],
                    }
                ).encode(),
            ),
        ):
            pid = self._next_pid()
            packet = publish_packet(topic, payload, pid, retain=True, dup=False)
            self.unacked[pid] = (packet, 0)
            await self._send(writer, packet)
        per_message = max(1, MAX_BATCH // len(QUANTITIES))
        while True:
            if reading.done():
                raise _Lost("connection closed")
            if stop.is_set() and self.drained:
                pid = self._next_pid()
                await self._send(
                    writer, publish_packet(status, b"offline", pid, retain=True, dup=False)
                )
                await self._send(writer, DISCONNECT)
                return
            if done.is_set():
                return
            while self.backlog and len(self.unacked) < MAX_INFLIGHT:
                samples = [
                    self.backlog.popleft() for _ in range(min(per_message, len(self.backlog)))
                ]
                pid = self._next_pid()
                packet = publish_packet(
                    self.topic,
                    data_payload(self.gid, self.device, samples),
                    pid,
                    retain=False,
                    dup=False,
                )
                self.unacked[pid] = (packet, len(samples))
                await self._send(writer, packet)
            self.wake.clear()
            waiters = [
                asyncio.ensure_future(self.wake.wait()),
                asyncio.ensure_future(self._acked.wait()),
            ]
            try:
                await asyncio.wait(
                    [*waiters, reading], timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for w in waiters:
                    w.cancel()
            self._acked.clear()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """PUBACKs (and PINGRESPs) until the connection ends."""
        while True:
            first = await reader.readexactly(1)
            length, shift = 0, 0
            while True:
                byte = (await reader.readexactly(1))[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            body = await reader.readexactly(length) if length else b""
            if first[0] & 0xF0 == 0x40 and len(body) == 2:
                pid = struct.unpack("!H", body)[0]
                if self.unacked.pop(pid, None) is not None:
                    self.stats.acked_messages += 1
                    self._acked.set()


class LoadGen:
    """``count`` gateways spread over ``prefixes`` (districts) and, for their first connection,
    over the nodes; ``interval`` s between samples, :data:`QUANTITIES` readings each."""

    def __init__(
        self,
        nodes: Sequence[tuple[str, int]],
        count: int,
        *,
        prefixes: Sequence[str] = ("city",),
        interval: float = 1.0,
        name: str = "lg",
    ) -> None:
        self.stats = FleetStats()
        self.gateways = [
            Gateway(
                f"{name}-{i:05d}",
                prefixes[i % len(prefixes)],
                nodes,
                i,
                self.stats,
                interval=interval,
            )
            for i in range(count)
        ]
        self.stop_sampling = asyncio.Event()
        self.give_up = asyncio.Event()

    def per_node(self) -> Counter[int]:
        """How many gateways are connected to each node (by index)."""
        return Counter(g.connected_node for g in self.gateways if g.connected_node is not None)

    def connected(self) -> int:
        return sum(1 for g in self.gateways if g.connected_node is not None)

    def drained(self) -> bool:
        return all(g.drained for g in self.gateways)

    def offered(self) -> dict[str, tuple[str, int]]:
        """Per gateway id: its topic prefix and its last seq (seqs are 1..last)."""
        return {g.gid: (g.prefix, g.seq) for g in self.gateways}

    async def run(self, ramp: float = 2.0) -> None:
        """Run every gateway (connections started over ``ramp`` s) until :attr:`stop_sampling`,
        then until each has sent everything and disconnected, or :attr:`give_up`."""
        async with asyncio.TaskGroup() as tg:
            for i, g in enumerate(self.gateways):
                tg.create_task(g.sample_loop(self.stop_sampling))
                tg.create_task(self._start(g, ramp * i / max(1, len(self.gateways))))

    async def _start(self, g: Gateway, after: float) -> None:
        await asyncio.sleep(after)
        await g.run(self.stop_sampling, self.give_up)
