"""The connection to the broker: one client, one MQTT session, for the publisher's whole life.

Client. :class:`citygate.mqtt.client.Client`, a small adapter over paho-mqtt's public API
(see its docstring for why not aiomqtt): no private attribute of paho or aiomqtt is touched
(ruff SLF001 is on for agent/mqtt).

Session: kept, not clean. The client connects with clean start off (protocol 5, session expiry
:data:`SESSION_EXPIRY_S`) or ``clean_session`` off (3.1.1), every time, so that the QoS 1
messages in flight at a cut are re-sent by the session (same packet id, DUP) and not a second
time from the buffer: after a cut under load the broker forwards each sample at most twice
(measured: 6.4 duplicate copies per cut, see agent/mqtt/client.py), where a clean session with
the buffer as the session (rewinding the cursor to the oldest unacknowledged row) re-sends
everything fetched but unacknowledged (up to ``max_inflight × max_batch`` readings). The
exception: data messages sent with an MQTT 5 topic alias cannot be re-sent on another
connection, so a cut that catches one starts a new paho session and its rows go again from
the buffer (agent/mqtt/client.py, "Topic aliases"). The
price: a subscription planted in the session by another client using our
client id (e.g. to ``#``) survives and the broker sends us that traffic. It cannot make the
agent hold or process anything: every incoming message is counted (``unsolicited_messages``)
and dropped as paho parses it, nothing is queued; MQTT 5 CONNECT announces a Maximum Packet
Size of 256 KiB and a Receive Maximum of 10, so a broker may send neither large packets nor
many unacknowledged ones. (MQTT 3.1.1 has no maximum packet size: use protocol 5.)
The one exception is the opt-in command channel (``[commands] enabled``, agent/commands.py):
after each CONNACK the session subscribes to its filter (``P/G/cmd/+``, QoS 1) on the same
connection, and messages matching it go to the channel's bounded queue.

Faults. A connection that dies silently is found by the keepalive (paho sends PINGREQ and closes
after a further keepalive without an answer). A broker that answers pings but stops
acknowledging data is found by the data loop (agent/mqtt/data.py), which raises
:class:`Stalled`. A CONNACK or a status PUBACK that does not come within ``ack_timeout``
(``max(keepalive, 10 s)``) fails the attempt. Each distinct error is logged once, with the
name and value of any CONNACK/DISCONNECT reason code.

Reconnecting: with full jitter, capped at :data:`RECONNECT_MAX_S` while the broker is
unreachable or the connection is lost (after an outage the first sample goes out within 5 s of
the broker's return), and growing to :data:`SLOW_RECONNECT_MAX_S` when the broker asks for it
(CONNACK 0x89 server busy, 0x97 quota exceeded, 0x9F connection rate exceeded) or refuses the
credentials (0x86, 0x87, 0x8C). With several urls (a cluster), each new attempt after a failure
or a lost connection goes to the next url.

Stopping (:meth:`Session.stop`): the handler flushes data until the deadline, then ``offline`` is
published (for at most ``OFFLINE_TIMEOUT_S``, agent/mqtt/announce.py) and the client
disconnects; if the broker did not answer, the connection is dropped instead (the broker
publishes the will). A stop during a connection attempt abandons it rather than waiting for the
CONNACK.

Health (:meth:`Session.health`): disconnected, the session is healthy while its reconnect loop
keeps trying (a broker outage is not a fault of the agent).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from typing import Protocol

from citygate.config import MqttSettings
from citygate.mqtt.client import Client, ConnectRefused, Incoming, MqttError, Will, reason_text
from citygate.status import Counters
from citygate.supervise import Backoff, describe

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 86400
RECONNECT_START_S = 0.25
RECONNECT_MAX_S = 4.0  # broker unreachable: full jitter up to this (≤ 5 s, spec: mqtt.md)
SLOW_RECONNECT_START_S = 2.0
SLOW_RECONNECT_MAX_S = 60.0  # the broker asked for it, or refused the credentials
BUSY_CODES = frozenset({0x89, 0x97, 0x9F})  # server busy, quota exceeded, connection rate
CREDENTIAL_CODES = frozenset({0x86, 0x87, 0x8C})  # bad user name or password, not authorized,
# bad authentication method
ACK_TIMEOUT_MIN_S = 10.0  # a PUBACK or CONNACK later than max(keepalive, this) means a stall
DROP_TIMEOUT_S = 2.0  # how long a DISCONNECT may take to leave
HEALTH_SLACK_S = 2.0  # margin on the publisher's own deadlines before it counts as wedged


class Stalled(Exception):
    """The broker stopped answering (no CONNACK, no PUBACK): the connection is dropped."""


class _SessionEnd(Exception):
    """The publisher was asked to stop and has flushed what it could."""


class SessionHandler(Protocol):
    """What runs over each connection (the publisher's data loop and announcements)."""

    async def open(self, client: Client) -> None:
        """Connected: publish what must be acknowledged before the session counts as up."""
        ...

    def start(self, client: Client, tg: asyncio.TaskGroup) -> None:
        """The session is up: start its tasks in ``tg`` (one raising ends the session)."""
        ...

    async def flush(self, within: float) -> None:
        """Stopping: let data flow for at most ``within`` seconds, then hand over no more."""
        ...

    async def close(self, client: Client) -> None:
        """Stopping, flushed: the last words on the connection (raises MqttError if unheard)."""
        ...

    def lost(self) -> None:
        """The connection is gone or going: hand nothing more to the client."""
        ...


class CommandRoute(Protocol):
    """Where the command channel's messages go (agent/commands.py)."""

    @property
    def topic_filter(self) -> str:
        """The subscription: ``P/G/cmd/+``."""
        ...

    def bind(self, client: Client) -> None:
        """The client replies go out on (one per session's life)."""
        ...

    def deliver(self, incoming: Incoming) -> None:
        """A request arrived (on the event loop; must not block)."""
        ...

    def take_stale(self) -> list[str]:
        """Filters of an earlier prefix, to unsubscribe (the session keeps them)."""
        ...

    def keep_stale(self, topic_filter: str) -> None:
        """An unsubscribe that failed: offered again next time."""
        ...


class FullJitter(Backoff):
    """Capped exponential backoff with full jitter: uniform in [0, min(cap, start·2ⁿ)]."""

    def next_delay(self) -> float:
        delay = min(self.cap, self.start * 2**self.attempt)
        self.attempt += 1
        return random.uniform(0.0, delay)


class Session:
    """Keeps one client connected until :meth:`stop`, running ``handler`` over each connection."""

    def __init__(
        self,
        mqtt: MqttSettings,
        will: Will,
        counters: Counters,
        handler: SessionHandler,
        ack_timeout: float,
        commands: CommandRoute | None = None,
    ) -> None:
        self._mqtt = mqtt
        self._commands = commands
        self._subscribe_refused: str | None = None  # logged once per distinct refusal
        self._will = will
        self._counters = counters
        self._handler = handler
        self.ack_timeout = ack_timeout
        """How long a CONNACK or a PUBACK may take before the broker counts as stalled."""
        self.connected = False
        self._stopping = asyncio.Event()
        self._stop_deadline = 0.0
        self._last_attempt = time.monotonic()  # the reconnect loop's last tick
        self._endpoints = mqtt.endpoints
        self._next_endpoint = 0
        self._tls_refusal: str | None = None  # the last TLS alert that ended an attempt
        self.client: Client | None = None
        self._closing = False  # the session sent DISCONNECT: its end is no loss

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
        # The longest backoff, plus the longest attempt: TCP connect and TLS (≤ ack_timeout),
        # CONNACK, the online and info PUBACKs, then dropping the connection.
        limit = SLOW_RECONNECT_MAX_S + 5 * self.ack_timeout + DROP_TIMEOUT_S + HEALTH_SLACK_S
        if idle > limit:
            return f"publisher: disconnected and no connection attempt for {idle:.0f} s"
        return None

    def new_client(self) -> Client:
        """The session's client (call once, inside the event loop): :meth:`run` connects it."""
        m = self._mqtt
        self.client = Client(
            client_id=m.client_id,
            protocol=m.protocol,
            keepalive=m.keepalive,
            will=self._will,
            session_expiry=SESSION_EXPIRY_S,
            max_inflight=m.max_inflight,
            username=m.username,
            password=m.password,
            tls=m.tls,
            ca_file=str(m.ca_file) if m.ca_file else None,
            cert_file=str(m.cert_file) if m.cert_file else None,
            key_file=str(m.key_file) if m.key_file else None,
            connect_timeout=self.ack_timeout,
        )
        if self._commands is not None:
            self.client.route(self._commands.topic_filter, self._commands.deliver)
            self._commands.bind(self.client)
        return self.client

    async def run(self, client: Client) -> None:
        """Connect, run sessions and reconnect until :meth:`stop`."""
        fast = FullJitter(start=RECONNECT_START_S, cap=RECONNECT_MAX_S)
        slow = Backoff(start=SLOW_RECONNECT_START_S, cap=SLOW_RECONNECT_MAX_S)
        last_error: str | None = None
        failures = 0
        while not self._stopping.is_set():
            self._last_attempt = time.monotonic()
            self._closing = False
            url, host, port = self._endpoints[self._next_endpoint]
            slow_down = False
            try:
                if not await self._connect(client, host, port):
                    return
                self._tls_refusal = None
                if failures:
                    log.info("broker %s: connected again after %d attempts", url, failures)
                    self._counters.broker_reconnects += 1
                else:
                    log.info("broker %s: connected", url)
                failures, last_error = 0, None
                fast.reset()
                slow.reset()
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
                client.drop()
                error = "; ".join(dict.fromkeys(self._describe(e) for e in leaves))
                slow_down = any(
                    isinstance(e, ConnectRefused) and e.code in BUSY_CODES | CREDENTIAL_CODES
                    for e in leaves
                )
                failures += 1
                # A cluster: the next attempt goes to the next node.
                self._next_endpoint = (self._next_endpoint + 1) % len(self._endpoints)
                if error != last_error:
                    log.warning("broker %s: %s (retrying with backoff)", url, error)
                    last_error = error
            finally:
                self.connected = False
                self._handler.lost()
            if self._stopping.is_set():
                return
            delay = slow.next_delay() if slow_down else fast.next_delay()
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    async def _connect(self, client: Client, host: str, port: int) -> bool:
        """Connect and wait for CONNACK; False if :meth:`stop` came first.

        The wait for a CONNACK lasts up to ``ack_timeout``; stopping must not wait for it."""
        entering = asyncio.ensure_future(client.connect(host, port, self.ack_timeout))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([entering, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not entering.done():
                # Abandoned for good: the publisher is stopping (or being cancelled).
                entering.cancel()
                await asyncio.wait([entering])
                client.drop()
                if not entering.cancelled():
                    entering.exception()  # it failed meanwhile: nobody is waiting for why
        if entering.cancelled():
            return False
        failure = entering.exception()
        if failure is None:
            return True
        if isinstance(failure, TimeoutError):
            raise Stalled(f"no CONNACK within {self.ack_timeout:g} s") from failure
        raise failure

    async def _session(self, client: Client) -> None:
        """One connection's life: ends by raising (connection lost, stall, or _SessionEnd)."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_connection(client), name="mqtt-watch")
                tg.create_task(client.keep_alive(), name="mqtt-keepalive")
                tg.create_task(self._begin(client, tg), name="mqtt-announce")
                await self._stopping.wait()
                await self._end_session(client)
        except BaseException as exc:
            self._handler.lost()
            if not any(isinstance(e, _SessionEnd) for e in _leaves(exc)):
                client.drop()  # no DISCONNECT on a connection that may be stalled
            raise

    async def _begin(self, client: Client, tg: asyncio.TaskGroup) -> None:
        await self._handler.open(client)
        if self._commands is not None:
            await self._subscribe(client, self._commands.topic_filter)
            for stale in self._commands.take_stale():
                try:
                    await client.unsubscribe(stale, within=self.ack_timeout)
                except MqttError:
                    self._commands.keep_stale(stale)
                    raise
                log.info("commands: unsubscribed from %s (the topic prefix changed)", stale)
        self.connected = True
        self._handler.start(client, tg)

    async def _subscribe(self, client: Client, topic_filter: str) -> None:
        """Subscribe to the commands (a refusal is logged, data flows anyway)."""
        reason = await client.subscribe(topic_filter, 1, within=self.ack_timeout)
        if reason.is_failure:
            refusal = reason_text(reason)
            if refusal != self._subscribe_refused:
                log.warning(
                    "commands: the broker refused the subscription to %s: %s (check its ACL)",
                    topic_filter,
                    refusal,
                )
            self._subscribe_refused = refusal
        else:
            if self._subscribe_refused is not None:
                log.info("commands: subscribed to %s", topic_filter)
            self._subscribe_refused = None

    async def _end_session(self, client: Client) -> None:
        """Stopping: flush until the deadline, say goodbye, end the session."""
        await self._handler.flush(max(0.0, self._stop_deadline - time.monotonic()))
        try:
            await self._handler.close(client)
        except MqttError as exc:
            log.warning("stopping: could not publish offline status: %s", self._describe(exc))
            client.drop()  # the broker is not answering: no DISCONNECT either
        else:
            self._closing = True
            await client.disconnect(DROP_TIMEOUT_S)
        raise _SessionEnd

    async def _watch_connection(self, client: Client) -> None:
        try:
            await client.lost  # raises MqttError: why the connection ended
        except MqttError:
            if not self._closing:
                raise
            await asyncio.Event().wait()  # our own DISCONNECT: _end_session ends the session

    def _describe(self, exc: BaseException) -> str:
        """One line for a failure; a TLS refusal reads the same at every attempt."""
        text = str(exc) if isinstance(exc, Stalled | MqttError) else describe(exc)
        if isinstance(exc, ConnectRefused):
            if exc.code in CREDENTIAL_CODES:
                text += ": the credentials were refused"
            elif exc.code in BUSY_CODES:
                text += ": the broker asks to wait"
        if "closed before CONNACK" in text:
            # A broker refusing a client certificate sends a TLS alert after the handshake;
            # when it closes before the alert can be read, the last refusal is repeated.
            if "[SSL:" in text:
                self._tls_refusal = text
            elif self._tls_refusal is not None:
                text = self._tls_refusal
        return text


_CONNECTION_ERRORS = (MqttError, OSError, ssl.SSLError, _SessionEnd, Stalled)


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    out: list[BaseException] = []
    for inner in exc.exceptions:
        out.extend(_leaves(inner))
    return out
