"""A loopback TCP proxy in front of a broker that a test can freeze, cut and resume.

The proxy runs its own event loop on a thread, so the same object serves async tests (the agent
in-process) and sync tests (the agent as a subprocess); every control method is thread-safe and
returns at once. Faults it can make:

* ``freeze(direction)``: stop forwarding ``"up"`` (client → broker), ``"down"`` or ``"both"``
  without closing anything. Bytes already read wait in the proxy; once its small buffer is full
  TCP flow control pushes back on the sender, as on a stalled link. ``resume()`` lets them flow.
  A freeze also holds connections opened while it lasts: a client gets its TCP handshake but
  no CONNACK.
* ``drop_pubacks(True)``: swallow every MQTT PUBACK going down, forward everything else (PINGRESP
  included): a broker that takes messages but never acknowledges them, which keepalive alone
  cannot notice.
* ``cut()``: close both sides of every open connection (RST to the client); new connections
  are still accepted.

``Proxy(port, record_publishes=True)`` also keeps every PUBLISH packet the client sends, whole
and as it went on the wire, in :attr:`Proxy.publishes` (see tests/support/mqtt_wire.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Literal, Self

Direction = Literal["up", "down", "both"]

_PUBACK = 0x40
_PUBLISH = 0x30
RECORD_LIMIT = 500_000  # PUBLISH packets kept at most (a test's memory stays bounded)
_CHUNK = 64 * 1024


class MqttSplitter:
    """Cuts a byte stream into whole MQTT control packets (fixed header + remaining length)."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        packets: list[bytes] = []
        while True:
            size = self._packet_size()
            if size is None or len(self._pending) < size:
                return packets
            packets.append(bytes(self._pending[:size]))
            del self._pending[:size]

    def _packet_size(self) -> int | None:
        remaining, multiplier = 0, 1
        for i in range(1, 5):
            if i >= len(self._pending):
                return None
            byte = self._pending[i]
            remaining += (byte & 0x7F) * multiplier
            if not byte & 0x80:
                return 1 + i + remaining
            multiplier *= 128
        raise ValueError("malformed MQTT remaining length")


class _Connection:
    def __init__(
        self,
        client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        pumps: asyncio.Future[None],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.pumps = pumps

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()
        self.pumps.cancel()  # a frozen pump waits for `resume`; a cut connection must not


class Proxy:
    """``Proxy(upstream_port).start()`` listens on 127.0.0.1:``port``; ``close()`` ends it."""

    def __init__(self, upstream_port: int, *, record_publishes: bool = False) -> None:
        self.upstream_port = upstream_port
        self.record_publishes = record_publishes
        self.publishes: list[tuple[int, bytes]] = []
        """(connection number from 1, packet) of each PUBLISH the client sent (with
        ``record_publishes``), oldest first."""
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self.pubacks_dropped = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()  # one per accepted connection
        self._flowing: dict[str, asyncio.Event] = {}
        self._drop_pubacks = False

    # ------------------------------------------------------------------ control (any thread)

    def start(self) -> Self:
        self._thread.start()
        self._call(self._start)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._close)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def freeze(self, direction: Direction = "both") -> None:
        self._call(lambda: self._set_flowing(direction, flowing=False))

    def resume(self) -> None:
        self._call(lambda: self._set_flowing("both", flowing=True))

    def cut(self) -> None:
        self._call(self._cut)

    def drop_pubacks(self, enabled: bool) -> None:
        def change() -> None:
            self._drop_pubacks = enabled

        self._call(change)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, function: Callable[[], object]) -> None:
        async def run() -> None:
            result = function()
            if asyncio.iscoroutine(result):
                await result

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # ------------------------------------------------------------------ the loop's side

    async def _start(self) -> None:
        self._flowing = {"up": asyncio.Event(), "down": asyncio.Event()}
        self._set_flowing("both", flowing=True)
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._cut()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    def _set_flowing(self, direction: Direction, *, flowing: bool) -> None:
        for name in ("up", "down") if direction == "both" else (direction,):
            if flowing:
                self._flowing[name].set()
            else:
                self._flowing[name].clear()

    def _cut(self) -> None:
        for connection in list(self._connections):
            connection.abort()
        self._connections.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        number = self.accepted
        pumps = asyncio.ensure_future(self._pumps(reader, writer, up_reader, up_writer, number))
        connection = _Connection(writer, up_writer, pumps)
        self._connections.add(connection)
        try:
            # Not `await pumps`: a cut cancels them, and the stream server's callback would
            # report a cancelled handler as an error.
            await asyncio.wait([pumps])
        finally:
            connection.abort()
            self._connections.discard(connection)

    async def _pumps(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        number: int,
    ) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                up_splitter = MqttSplitter() if self.record_publishes else None
                tg.create_task(self._pump(reader, up_writer, "up", up_splitter, number))
                tg.create_task(self._pump(up_reader, writer, "down", MqttSplitter()))
        except* (OSError, ValueError):
            pass  # a reset connection, or bytes that are not MQTT: the connection ends

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        direction: str,
        splitter: MqttSplitter | None,
        number: int = 0,
    ) -> None:
        while data := await source.read(_CHUNK):
            await self._flowing[direction].wait()
            if splitter is not None and direction == "up":
                for packet in splitter.feed(data):
                    if packet[0] & 0xF0 == _PUBLISH and len(self.publishes) < RECORD_LIMIT:
                        self.publishes.append((number, packet))
            elif splitter is not None:
                packets = splitter.feed(data)
                if self._drop_pubacks:
                    kept = [p for p in packets if p[0] != _PUBACK]
                    self.pubacks_dropped += len(packets) - len(kept)
                    packets = kept
                data = b"".join(packets)
            if sink.transport.is_closing():
                break
            sink.write(data)
            await sink.drain()
        # One side ended: end the other too, as a real connection would.
        with contextlib.suppress(OSError):
            sink.transport.abort()
