"""An asyncio client over paho-mqtt's public API (paho's "external event loop" interface).

Why not aiomqtt: its public API drops the PUBACK reason code (a refused publish looks
delivered), queues every incoming message without bound, and reconnecting one client needs its
private attributes. paho's public API has all that is needed: ``on_publish`` gets the PUBACK
reason code (callback API version 2), ``on_message`` sees each incoming message as it is parsed
(it is counted and dropped there, never queued, unless it matches the one routed
subscription: the command channel's, agent/commands.py, with its own bounded queue), the
CONNECT properties carry a Maximum Packet Size, and ``socket()``, ``loop_read()``,
``loop_write()``, ``loop_misc()`` with the ``on_socket_*`` callbacks let the asyncio loop
drive the socket.

Why one client for the publisher's life rather than a fresh client per connection with the
buffer as the session: the paho client's MQTT session (clean start off) keeps the QoS 1
messages in flight at a cut and re-sends them after the next CONNACK with the same packet id and
DUP set, so a cut costs at most the in-flight window in duplicates and the buffer cursor never
goes back (tests/faults/test_mqtt_sessions.py); a fresh client would have to rewind the cursor
and re-send everything fetched and unacknowledged, and would lose the DUP flag. Measured
(3 synthetic devices at 200 samples/s each, 5 proxy cuts under load; then a 20,000-sample
backlog drained to Mosquitto, 2-core VM): 6.4 duplicate copies per cut, never more than 2
copies of a sample, and 3,460 samples/s drained — against 4.4 per cut and 3,520 samples/s with
the aiomqtt client this replaces (the same within this machine's noise).

Topic aliases (MQTT 5, data messages only, when the broker's CONNACK allows them): the first
data message to a topic on a connection sets an alias, the next ones carry only the alias (2
bytes and a 3-byte property instead of a ~30-byte topic; at light load, where each message goes
out at once with one sample, that is ~1.2 B per reading). The session cannot re-send such a
message on another connection — the alias means nothing there, or the next broker allows none —
so when one is cut unacknowledged the next connect starts a new paho session
(:meth:`Client._renew`, same client id, clean start still off) and the data loop sends those
rows again from the buffer: the same at-least-once delivery, without the DUP flag, at most the
in-flight window twice. A cut with no aliased message in flight keeps the session as above.

The TCP connect and the TLS handshake are
blocking in paho: they run in a worker thread (bounded by ``connect_timeout``); everything else
runs on the event loop thread, and callbacks that paho makes from the worker thread are handed
to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

MAX_PACKET_SIZE = 256 * 1024
"""Announced in the MQTT 5 CONNECT: a broker must not send the agent a larger packet."""
RECEIVE_MAXIMUM = 10
"""Announced in the MQTT 5 CONNECT: QoS 1/2 messages the broker may have in flight to us."""
MAX_TOPIC_ALIASES = 64
"""Topic aliases used at most on a connection (fewer if the broker's CONNACK allows fewer);
topics beyond them are sent in full."""


class MqttError(Exception):
    """The connection failed, was lost, or an operation on it did not complete."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(f"connection refused: {reason_text(reason)}")
        self.code = int(reason.value)


class PublishTimeout(MqttError):
    """A publish was not acknowledged in time."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message that matched the routed subscription (see :meth:`Client.route`)."""

    topic: str
    payload: bytes
    retain: bool
    response_topic: str | None = None  # MQTT 5 Response Topic
    correlation_data: bytes | None = None  # MQTT 5 Correlation Data
    mid: int = 0  # the packet id, for :meth:`Client.ack` (manual acknowledgement)
    qos: int = 0


@dataclass(frozen=True, slots=True)
class Will:
    """The connection's will message."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class _PahoSettings:
    """What a new paho client is made with (see :meth:`Client._renew`)."""

    client_id: str
    username: str | None
    password: str | None
    tls: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    will: Will | None
    connect_timeout: float
    max_inflight: int


def reason_text(reason: ReasonCode) -> str:
    """A reason code with its name: ``Server shutting down (0x8B)``."""
    return f"{reason.getName()} (0x{int(reason.value):02X})"


class _PahoLog(logging.Handler):
    """The client's paho logger: keeps the last ERROR (the reason behind a lost connection,
    e.g. a TLS alert), passes lower levels to the ``mqtt`` logger. ERROR lines themselves are
    not logged: the session logs each distinct failure once."""

    def __init__(self, client_logger: logging.Logger) -> None:
        super().__init__()
        self._forward = logging.getLogger("mqtt")
        self.last_error: str | None = None
        client_logger.setLevel(min(logging.ERROR, self._forward.getEffectiveLevel()))
        client_logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.last_error = record.getMessage()
        elif self._forward.isEnabledFor(record.levelno):
            self._forward.handle(record)

    def take(self) -> str | None:
        error, self.last_error = self.last_error, None
        return error


class Client:
    """One paho client (one MQTT session) driven by the running event loop.

    :meth:`connect` makes a connection (and may be called again after it is lost);
    :meth:`publish` waits for the PUBACK and returns its reason code (QoS 1 publishes wait
    across reconnects: the session re-sends them); :attr:`lost` ends with the reason the
    connection ended. Incoming messages are counted in :attr:`unsolicited` and dropped, except
    those matching the filter given to :meth:`route`, which go to its sink.
    """

    def __init__(
        self,
        *,
        client_id: str,
        protocol: str,
        keepalive: float,
        will: Will | None,
        session_expiry: int,
        max_inflight: int,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        connect_timeout: float = 10.0,
        manual_ack: bool = False,
        receive_maximum: int = RECEIVE_MAXIMUM,
        max_packet_size: int = MAX_PACKET_SIZE,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.v5 = protocol == "5"
        self._keepalive = max(1, round(keepalive))
        self._settings = _PahoSettings(
            client_id=client_id,
            username=username,
            password=password,
            tls=tls,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            will=will,
            connect_timeout=connect_timeout,
            max_inflight=max_inflight,
        )
        self._manual_ack = manual_ack
        client_logger = logging.Logger("mqtt")  # this client's own, not registered
        self._log = _PahoLog(client_logger)
        self._client_logger = client_logger
        self._properties: Properties | None = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = session_expiry
            props.MaximumPacketSize = max_packet_size
            props.ReceiveMaximum = receive_maximum
            self._properties = props
        self._paho = self._new_paho()
        self._alias_limit = 0  # topic aliases this connection may use (the broker's maximum)
        self._aliases: dict[str, int] = {}  # topic -> alias, on this connection
        self._alias_properties: dict[int, tuple[Properties | None, Properties]] = {}
        self._aliased: set[int] = set()  # mids of QoS 1 publishes sent with a topic alias
        self._renew_pending = False  # some were cut: the next connect starts a new session
        self.renewals = 0
        """Times the paho session was replaced because aliased publishes were cut (see
        :meth:`publish`)."""
        self._sock: Any = None  # the socket the event loop watches
        self._paused = False  # pause_reading()
        self._connack: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = self._loop.create_future()
        """Fails with :class:`MqttError` (the reason) when the current connection ends."""
        self.lost.set_exception(MqttError("not connected"))
        self.lost.exception()  # retrieved: nobody need wait for the first one
        self._publishes: dict[int, asyncio.Future[ReasonCode]] = {}
        self.unsolicited = 0
        """Messages the broker sent that nobody asked for (counted, dropped at once)."""
        self.unsolicited_bytes = 0
        self._routes: dict[str, Callable[[Incoming], None]] = {}
        self._subscribes: dict[int, asyncio.Future[list[ReasonCode]]] = {}

    def _new_paho(self) -> paho.Client:
        settings = self._settings
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else False,
            reconnect_on_failure=False,
            manual_ack=self._manual_ack,
        )
        client.enable_logger(self._client_logger)
        client.connect_timeout = settings.connect_timeout
        client.max_inflight_messages_set(settings.max_inflight)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            client.tls_set(
                ca_certs=settings.ca_file, certfile=settings.cert_file, keyfile=settings.key_file
            )
        will = settings.will
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    def _renew(self) -> None:
        """Start a new paho session: the old one holds publishes sent with a topic alias of a
        connection that is gone, which it would re-send as they are (an alias the next
        connection does not know, or may not allow). Their waits fail with :class:`MqttError`;
        the data loop sends those rows again from the buffer."""
        log.info(
            "%d publishes sent with a topic alias were cut: a new MQTT session sends them again",
            len(self._aliased),
        )
        self._paho = self._new_paho()
        self._aliased.clear()
        self.renewals += 1
        error = MqttError("the session was renewed (aliased publishes were cut): sent again")
        for waiting in (self._publishes, self._subscribes):
            for future in waiting.values():
                if not future.done():
                    future.set_exception(error)
            waiting.clear()

    # ----------------------------------------------------------------- connection

    async def connect(self, host: str, port: int, within: float) -> None:
        """Connect and wait up to ``within`` seconds for a successful CONNACK.

        Raises :class:`ConnectRefused`, :class:`MqttError`, ``OSError`` (incl. TLS errors), or
        ``TimeoutError`` when no CONNACK came in time (the connection is then dropped)."""
        self._unwatch()
        if self._renew_pending:
            self._renew_pending = False
            self._renew()
        self._alias_limit = 0  # until this connection's CONNACK says how many
        self._aliases.clear()
        self._log.take()
        self.lost = self._loop.create_future()
        connack = self._connack = self._loop.create_future()
        try:
            rc = await asyncio.to_thread(
                self._paho.connect,
                host,
                port,
                keepalive=self._keepalive,
                clean_start=False if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                properties=self._properties,
            )
        except TimeoutError:  # paho's connect_timeout: TCP connect or TLS handshake
            raise MqttError(
                f"no answer to connect within {self._paho.connect_timeout:g} s"
            ) from None
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"connect failed: {paho.error_string(rc)}")
        sock = self._paho.socket()
        if sock is None:
            raise MqttError(f"connection closed: {self._log.take() or 'no reason given'}")
        self._watch(sock)
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(connack)
        except BaseException:
            self.drop()
            raise

    @property
    def is_connected(self) -> bool:
        """A CONNACK was accepted and the connection has not ended since."""
        return self._paho.is_connected() and not self.lost.done()

    def drop(self) -> None:
        """Close the connection at once, without DISCONNECT (the broker publishes the will);
        :attr:`lost` fails with "dropped" unless it has a reason already."""
        self._unwatch()
        sock = self._paho.socket()
        if isinstance(sock, socket.socket | ssl.SSLSocket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, ValueError):
            # paho reads EOF: it closes the socket and reports the loss (on_disconnect).
            self._paho.loop_read()
        self._fail_connection(MqttError("connection dropped"))

    async def disconnect(self, within: float) -> None:
        """Send DISCONNECT (normal: no will) and wait at most ``within`` for it to leave."""
        self._paho.disconnect()
        with contextlib.suppress(MqttError, TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.shield(self.lost)
        self.drop()

    async def keep_alive(self) -> None:
        """Run paho's periodic work (PINGREQ, keepalive timeout) while connected."""
        period = min(1.0, self._keepalive / 4)
        while not self.lost.done():
            self._paho.loop_misc()
            await asyncio.sleep(period)

    # ----------------------------------------------------------------- publishing

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        within: float | None = None,
        properties: Properties | None = None,
        alias: bool = False,
    ) -> ReasonCode | None:
        """Publish; for QoS 1 wait for the PUBACK and return its reason code (check
        ``is_failure``). A QoS 1 message handed over stays in the session until acknowledged,
        also across reconnects; ``within`` seconds (None: no limit) or :class:`PublishTimeout`.
        QoS 0 returns None once written; when not connected it raises :class:`MqttError`.

        ``alias`` (QoS 1, MQTT 5, connected, and the broker's CONNACK allows topic aliases):
        the first publish to ``topic`` on this connection carries the topic and an alias, later
        ones only the alias (3 bytes instead of the topic). A session cannot re-send such a
        message on another connection, so when one is cut unacknowledged the next connect
        starts a new session (:meth:`_renew`) and this wait fails with :class:`MqttError`:
        the caller sends it again."""
        sent_topic = topic
        aliased = False
        if alias and qos > 0 and self._alias_limit and self.is_connected:
            number = self._aliases.get(topic)
            if number is not None:
                sent_topic = ""  # the broker knows the alias on this connection
            elif len(self._aliases) < self._alias_limit:
                number = self._aliases[topic] = len(self._aliases) + 1
            if number is not None:
                properties = self._aliased_properties(properties, number)
                aliased = True
        if qos == 0:
            info = self._paho.publish(topic, payload, qos=0, retain=retain, properties=properties)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise MqttError(f"publish failed: {paho.error_string(info.rc)}")
            return None
        info = self._paho.publish(
            sent_topic, payload, qos=qos, retain=retain, properties=properties
        )
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish failed: {paho.error_string(info.rc)}")
        if aliased:
            self._aliased.add(info.mid)
        # NO_CONN: paho keeps the message and sends it after the next CONNACK. Its PUBACK can
        # only be read later on this thread, so registering now cannot miss it.
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._publishes[info.mid] = future
        try:
            async with asyncio.timeout(within):
                return await asyncio.shield(future)
        except TimeoutError:
            raise PublishTimeout(f"no PUBACK within {within:g} s") from None
        finally:
            if self._publishes.get(info.mid) is future:
                del self._publishes[info.mid]  # answered, or nobody waits any more

    def _aliased_properties(self, properties: Properties | None, number: int) -> Properties:
        cached = self._alias_properties.get(number)
        if cached is not None and cached[0] is properties:
            return cached[1]
        aliased = (
            copy.copy(properties) if properties is not None else Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        )
        aliased.TopicAlias = number
        self._alias_properties[number] = (properties, aliased)
        return aliased

    # ----------------------------------------------------------------- subscribing

    def route(self, topic_filter: str, sink: Callable[[Incoming], None]) -> None:
        """Hand messages whose topic matches ``topic_filter`` (``+`` and ``#`` wildcards) to
        ``sink``, called on the event loop thread; it must not block or queue without bound."""
        self._routes[topic_filter] = sink

    def unroute(self, topic_filter: str) -> None:
        """Messages matching ``topic_filter`` are unsolicited again."""
        self._routes.pop(topic_filter, None)

    async def subscribe(self, topic_filter: str, qos: int, within: float) -> ReasonCode:
        """Subscribe and wait up to ``within`` seconds for the SUBACK; its reason code (check
        ``is_failure``). Raises :class:`MqttError` when not connected or not answered."""
        rc, mid = self._paho.subscribe(topic_filter, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe failed: {paho.error_string(rc)}")
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subscribes[mid] = future
        try:
            async with asyncio.timeout(within):
                codes = await asyncio.shield(future)
        except TimeoutError:
            raise MqttError(f"no SUBACK within {within:g} s") from None
        finally:
            self._subscribes.pop(mid, None)
        return codes[0]

    async def unsubscribe(self, topic_filter: str, within: float) -> ReasonCode | None:
        """Unsubscribe and wait up to ``within`` seconds for the UNSUBACK; its reason code
        (MQTT 5; None for 3.1.1, whose UNSUBACK has none). Raises :class:`MqttError` when not
        connected or not answered."""
        rc, mid = self._paho.unsubscribe(topic_filter)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"unsubscribe failed: {paho.error_string(rc)}")
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subscribes[mid] = future  # one packet id space: SUBACK and UNSUBACK by mid
        try:
            async with asyncio.timeout(within):
                codes = await asyncio.shield(future)
        except TimeoutError:
            raise MqttError(f"no UNSUBACK within {within:g} s") from None
        finally:
            self._subscribes.pop(mid, None)
        return codes[0] if codes else None

    def ack(self, incoming: Incoming) -> bool:
        """With ``manual_ack``: send the PUBACK of a routed QoS 1 message (call on the event
        loop, in the order the messages came, on the connection that brought it). False when
        it could not be sent (no connection): the broker will send the message again."""
        if not self._manual_ack or incoming.qos == 0:
            return True
        return self._paho.ack(incoming.mid, incoming.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def pause_reading(self) -> None:
        """Read nothing more from the broker until :meth:`resume_reading` (backpressure: TCP
        holds what the broker sends meanwhile; a pause longer than the keepalive ends the
        connection). A new connection reads again."""
        if self._sock is not None and not self._paused:
            self._paused = True
            self._loop.remove_reader(self._sock)

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`."""
        sock = self._sock
        if not self._paused or sock is None:
            return
        self._paused = False
        self._loop.add_reader(sock, self._read)
        if isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
            self._loop.call_soon(self._read)  # decrypted bytes the selector cannot see

    # ----------------------------------------------------------------- paho callbacks

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        self._dispatch(self._subscribed, mid, codes)

    def _on_unsubscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any
    ) -> None:
        self._dispatch(self._subscribed, mid, codes)

    def _subscribed(self, mid: int, codes: list[ReasonCode]) -> None:
        future = self._subscribes.get(mid)
        if future is not None and not future.done():
            future.set_result(codes)

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._dispatch(self._connected, reason, props)

    def _connected(self, reason: ReasonCode, props: Any) -> None:
        connack = self._connack
        if connack is None or connack.done():
            return
        if reason.is_failure:
            connack.set_exception(ConnectRefused(reason))
        else:
            self._aliases.clear()
            maximum = getattr(props, "TopicAliasMaximum", 0) if self.v5 else 0
            self._alias_limit = min(int(maximum or 0), MAX_TOPIC_ALIASES)
            connack.set_result(None)

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        props: Any,
    ) -> None:
        from_server = flags.is_disconnect_packet_from_server
        self._dispatch(self._disconnected, reason, from_server)

    def _disconnected(self, reason: ReasonCode, from_server: bool) -> None:
        self._unwatch()
        detail = self._log.take()
        if from_server:
            error = MqttError(f"the broker closed the connection: {reason_text(reason)}")
        elif reason.getName() == "Unspecified error":  # paho's code for a lost socket
            error = MqttError(f"connection lost ({detail or 'closed by the peer'})")
        elif reason.getName() == "Success":
            error = MqttError("disconnected")
        else:
            error = MqttError(f"connection lost ({reason.getName()})")
        self._fail_connection(error)

    def _fail_connection(self, error: MqttError) -> None:
        self._alias_limit = 0
        if self._aliased:
            self._renew_pending = True
        connack = self._connack
        if connack is not None and not connack.done():
            connack.set_exception(
                MqttError(f"closed before CONNACK: {str(error).removeprefix('connection ')}")
            )
            connack.exception()
        if not self.lost.done():
            self.lost.set_exception(error)
            self.lost.exception()  # a reason, not an error nobody saw

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._dispatch(self._published, mid, reason)

    def _published(self, mid: int, reason: ReasonCode) -> None:
        self._aliased.discard(mid)
        future = self._publishes.get(mid)  # None: QoS 0 written, or nobody waits any more
        if future is None or future.done():
            return
        future.set_result(reason)
        # A broker acknowledges QoS 1 publishes in the order it received them (MQTT 3.1.1 and
        # 5, "Message ordering"), and paho sends and re-sends them in publish order: an older
        # publish still unanswered means its PUBACK was lost. Only a new connection makes the
        # session re-send it, so end this one.
        for other_mid, other in self._publishes.items():
            if other_mid == mid:
                break
            if not other.done():
                self._loop.call_soon(
                    self._fail_connection,
                    MqttError(f"no PUBACK for message {other_mid}, later ones acknowledged"),
                )
                break

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # Only the routed subscription (commands) is wanted: any other message is counted and
        # dropped here (paho has parsed it; it is acknowledged when QoS 1 and then forgotten).
        route = next(
            ((f, s) for f, s in self._routes.items() if paho.topic_matches_sub(f, message.topic)),
            None,
        )
        if route is not None:
            props = message.properties if self.v5 else None
            response = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
            incoming = Incoming(
                message.topic,
                bytes(message.payload),
                bool(message.retain),
                response if isinstance(response, str) else None,
                bytes(correlation) if isinstance(correlation, bytes | bytearray) else None,
                message.mid,
                message.qos,
            )
            self._dispatch(route[1], incoming)
            return
        self.unsolicited += 1
        self.unsolicited_bytes += len(message.payload)
        if self._manual_ack:
            self._paho.ack(message.mid, message.qos)

    # ----------------------------------------------------------------- the socket

    def _dispatch(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _watch(self, sock: Any) -> None:
        self._sock = sock
        self._paused = False
        self._loop.add_reader(sock, self._read)
        if self._paho.want_write():
            self._loop.add_writer(sock, self._write)

    def _unwatch(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _read(self) -> None:
        sock = self._sock
        if sock is None or self._paused:
            return
        self._paho.loop_read()
        # TLS: bytes already decrypted wait in the SSL object, invisible to the selector.
        while sock is self._sock and not self._paused and isinstance(sock, ssl.SSLSocket):
            if sock.pending() <= 0:
                break
            self._paho.loop_read()

    def _write(self) -> None:
        self._paho.loop_write()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._loop_thread and sock is self._sock:
            self._unwatch()

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        def watch() -> None:
            if sock is self._sock and self._paho.want_write():
                self._loop.add_writer(sock, self._write)

        self._dispatch(watch)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if threading.get_ident() == self._loop_thread and sock is self._sock:
            self._loop.remove_writer(sock)
