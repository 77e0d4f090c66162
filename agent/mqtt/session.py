"""The connection to the broker: one client, one MQTT session, for the publisher's whole life.

Session. The client connects with clean start off (protocol 5, with a session expiry of
:data:`SESSION_EXPIRY_S`) or ``clean_session`` off (3.1.1), every time. (paho's "clean start on
the first connection only" cannot be used: aiomqtt's connect resets what paho counts as the first
connection. A new process resuming its predecessor's session costs nothing: a publisher's session
on the broker holds no subscriptions, and what the predecessor had in flight is still in the
buffer and is sent again.) The will is the gateway's ``offline`` status; TLS and credentials come
from ``[mqtt]``.

Faults. A connection that dies silently is found by the keepalive (aiomqtt/paho send PINGREQ and
close after a further keepalive without an answer). A broker that answers pings but stops
acknowledging data is found by the data loop (agent/mqtt/data.py), which raises
:class:`Stalled`. A CONNACK or a status PUBACK that does not come within ``ack_timeout``
(``max(keepalive, 10 s)``) fails the attempt. Every failure leads to a reconnect with capped,
jittered backoff; each distinct error is logged once.

Stopping (:meth:`Session.stop`): the handler flushes data until the deadline, then ``offline`` is
published (for at most ``OFFLINE_TIMEOUT_S``, agent/mqtt/announce.py) and the client
disconnects; if the broker did not answer, the connection is dropped instead (the broker
publishes the will). A stop during a connection attempt abandons it rather than waiting for the
CONNACK.

Health (:meth:`Session.health`): disconnected, the session is healthy while its reconnect loop
keeps trying (a broker outage is not a fault of the agent).

aiomqtt 2.5 can reuse a client only with care, which :func:`_prepare_reconnect`,
:func:`_drop_connection` and :class:`_Client` take (they touch aiomqtt internals: the 2.5 release
line is pinned).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from typing import Any, Protocol

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.types import PahoSocket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citygate.config import MqttSettings
from citygate.status import Counters
from citygate.supervise import Backoff, describe

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 86400
RECONNECT_MAX_S = 60.0
ACK_TIMEOUT_MIN_S = 10.0  # a PUBACK or CONNACK later than max(keepalive, this) means a stall
DROP_TIMEOUT_S = 2.0  # how long dropping a connection waits for the client to notice
HEALTH_SLACK_S = 2.0  # margin on the publisher's own deadlines before it counts as wedged


class Stalled(Exception):
    """The broker stopped answering (no CONNACK, no PUBACK): the connection is dropped."""


class _SessionEnd(Exception):
    """The publisher was asked to stop and has flushed what it could."""


class SessionHandler(Protocol):
    """What runs over each connection (the publisher's data loop and announcements)."""

    async def open(self, client: aiomqtt.Client) -> None:
        """Connected: publish what must be acknowledged before the session counts as up."""
        ...

    def start(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        """The session is up: start its tasks in ``tg`` (one raising ends the session)."""
        ...

    async def flush(self, within: float) -> None:
        """Stopping: let data flow for at most ``within`` seconds, then hand over no more."""
        ...

    async def close(self, client: aiomqtt.Client) -> None:
        """Stopping, flushed: the last words on the connection (raises MqttError if unheard)."""
        ...

    def lost(self) -> None:
        """The connection is gone or going: hand nothing more to the client."""
        ...


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


class Session:
    """Keeps one client connected until :meth:`stop`, running ``handler`` over each connection."""

    def __init__(
        self,
        mqtt: MqttSettings,
        will: aiomqtt.Will,
        counters: Counters,
        handler: SessionHandler,
        ack_timeout: float,
    ) -> None:
        self._mqtt = mqtt
        self._will = will
        self._counters = counters
        self._handler = handler
        self.ack_timeout = ack_timeout
        """How long a CONNACK or a PUBACK may take before the broker counts as stalled."""
        self.connected = False
        self._stopping = asyncio.Event()
        self._stop_deadline = 0.0
        self._last_attempt = time.monotonic()  # the reconnect loop's last tick
        self._connect_watch: _ConnectWatch | None = None

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called."""
        return self._stopping.is_set()

    def stop(self, flush_timeout: float) -> None:
        """End :meth:`run` after flushing for at most ``flush_timeout`` seconds."""
        self._stop_deadline = time.monotonic() + flush_timeout
        self._stopping.set()

    def health(self, now: float) -> str | None:
        """Disconnected: None while the reconnect loop ticked within the longest backoff plus
        the longest attempt (each of its waits is bounded by ``ack_timeout``), else why not."""
        idle = now - self._last_attempt
        # The longest backoff, plus the longest attempt: TCP connect (≤ keepalive) and
        # CONNACK, the online and info PUBACKs, then dropping and leaving the client.
        limit = RECONNECT_MAX_S + 5 * self.ack_timeout + DROP_TIMEOUT_S + HEALTH_SLACK_S
        if idle > limit:
            return f"publisher: disconnected and no connection attempt for {idle:.0f} s"
        return None

    def new_client(self) -> aiomqtt.Client:
        """The session's client (call once, inside the event loop): :meth:`run` connects it."""
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
            will=self._will,
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

    async def run(self, client: aiomqtt.Client) -> None:
        """Connect, run sessions and reconnect until :meth:`stop`."""
        assert self._connect_watch is not None, "client not made by new_client()"
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
                self._handler.lost()
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
            raise Stalled(f"no CONNACK within {self.ack_timeout:g} s") from failure
        raise failure

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connection's life: ends by raising (connection lost, stall, or _SessionEnd)."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_connection(client), name="mqtt-watch")
                tg.create_task(self._begin(client, tg), name="mqtt-announce")
                await self._stopping.wait()
                await self._end_session(client)
        except BaseException as exc:
            self._handler.lost()
            if not any(isinstance(e, _SessionEnd) for e in _leaves(exc)):
                # Leave the connection closed so that leaving `client` does not try a
                # DISCONNECT on a connection that may be stalled.
                await _close_and_wait(client)
            raise

    async def _begin(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        await self._handler.open(client)
        self.connected = True
        self._handler.start(client, tg)

    async def _end_session(self, client: aiomqtt.Client) -> None:
        """Stopping: flush until the deadline, say goodbye, end the session."""
        await self._handler.flush(max(0.0, self._stop_deadline - time.monotonic()))
        try:
            await self._handler.close(client)
        except aiomqtt.MqttError as exc:
            log.warning("stopping: could not publish offline status: %s", _describe(exc))
            await _close_and_wait(client)  # the broker is not answering: no DISCONNECT either
        raise _SessionEnd

    async def _watch_connection(self, client: aiomqtt.Client) -> None:
        # The messages iterator raises MqttError when the connection is lost.
        async for _ in client.messages:
            pass


_CONNECTION_ERRORS = (aiomqtt.MqttError, OSError, ssl.SSLError, _SessionEnd, Stalled)


def _describe(exc: BaseException) -> str:
    """Like :func:`describe`, with the cause aiomqtt hides behind a generic message."""
    if isinstance(exc, Stalled):
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
