"""Remote commands over MQTT (mqtt.md "Commands", config.md ``[commands]``); opt-in.

A request on ``P/G/cmd/<name>`` (QoS 1) is answered once, on the request's MQTT 5 Response
Topic with its Correlation Data, else on ``P/G/cmd/<name>/reply`` (QoS 1, not retained).

The sans-I/O parts: :func:`parse_request` (validation), :class:`RateLimit`,
:class:`ReplyStore` (the answered ids, SQLite in the data dir: a repeated id within
:data:`DEDUPE_S` gets the first reply again and runs nothing, also across restarts) and
:func:`reply_payload`. :class:`CommandChannel` ties them to the broker connection and the
agent: the client hands it requests on the event loop (:meth:`CommandChannel.deliver`); a
bounded queue (:data:`QUEUE_SIZE`) holds them, and one more is counted (``overflow``) and
dropped without a reply (answering needs a publish the full queue is waiting for). Its
:meth:`CommandChannel.run` takes requests one by one and runs each command in a task of its
own TaskGroup, with a timeout, so that a command never holds up data delivery or polling.

Outcomes, counted in the metrics' ``commands`` and logged one line per request: ``ok``,
``duplicate`` (the first reply sent again), the error codes of :data:`ERROR_CODES`, and
``retained`` / ``dropped`` / ``overflow`` for requests not answered (a retained request is
never executed; a malformed one whose id cannot be read, or one over :data:`MAX_PAYLOAD`, is
dropped).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citygate.config import CommandSettings
from citygate.drivers.api import WriteRefused
from citygate.mqtt.client import Client, Incoming, MqttError
from citygate.status import Counters
from citygate.supervise import Busy, DeviceSupervisor, NoData, Readout, describe

log = logging.getLogger(__name__)

COMMANDS: Final = ("status", "read", "write", "scan", "config")
UNSUPPORTED: Final = frozenset({"scan", "config"})  # without their handler (app.py gives them)
ERROR_CODES: Final = (
    "bad_request",
    "expired",
    "unknown_command",
    "forbidden",
    "unknown_device",
    "busy",
    "unsupported",
    "out_of_range",
    "no_data",
    "device_error",
    "timeout",
    "invalid_config",
    "rolled_back",
)
MAX_PAYLOAD: Final = 64 * 1024
MAX_ID: Final = 128
MAX_RESPONSE_TOPIC: Final = 1024
MAX_CORRELATION: Final = 1024
QUEUE_SIZE: Final = 64
DEDUPE_S: Final = 24 * 3600.0
DEDUPE_MAX_ROWS: Final = 100_000
RUN_TIMEOUT_S: Final = 30.0  # the longest a command may run before it answers "timeout"
# config: rollback_after plus this (a check, two reloads: agent/cmd_config.py bounds each).
CONFIG_MARGIN_S: Final = 600.0
SCAN_TIMEOUT_S: Final = 300.0  # a scan (agent/cmd_scan.py) is cancelled after this
SCAN_MARGIN_S: Final = 10.0  # the channel's own limit of a scan: it ends and answers first
REPLY_TIMEOUT_S: Final = 30.0  # a reply not acknowledged by then is given up (logged)
STATUS_TIMEOUT_S: Final = 5.0
STORE_FILE: Final = "commands.sqlite"
_KEYS: Final = frozenset({"id", "device", "args", "expires"})


class CommandError(Exception):
    """A request refused or failed: the reply's ``error``."""

    def __init__(self, code: str, message: str, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = dict(fields or {})  # more top-level keys of the reply


class Malformed(CommandError):
    """A request that is not valid; ``request_id`` is its id when one could be read."""

    def __init__(self, message: str, request_id: str | None) -> None:
        super().__init__("bad_request", message)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    """A valid request (the reply destination comes with it)."""

    id: str
    name: str
    device: str | None = None
    args: Mapping[str, Any] = field(default_factory=dict)
    expires: float | None = None


def parse_request(name: str, payload: bytes) -> Request:
    """The request in ``payload`` for the command ``name``, or :class:`Malformed`."""
    if len(payload) > MAX_PAYLOAD:
        raise Malformed(f"request larger than {MAX_PAYLOAD} bytes", None)
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Malformed("not JSON", None) from None
    if not isinstance(data, dict):
        raise Malformed("not a JSON object", None)
    request_id = data.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise Malformed('"id": expected a non-empty string', None)
    if len(request_id) > MAX_ID:
        raise Malformed(f'"id": longer than {MAX_ID} characters', None)
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise Malformed(f"unknown key {json.dumps(unknown[0])[:80]}", request_id)
    device = data.get("device")
    if device is not None and not isinstance(device, str):
        raise Malformed('"device": expected a string', request_id)
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise Malformed('"args": expected an object', request_id)
    expires = data.get("expires")
    if expires is not None and (
        isinstance(expires, bool)
        or not isinstance(expires, int | float)
        or not math.isfinite(expires)
    ):
        raise Malformed('"expires": expected Unix seconds (a number)', request_id)
    return Request(request_id, name, device, args, None if expires is None else float(expires))


def run_timeout(name: str, settings: CommandSettings) -> float:
    """How long the command ``name`` may run before it answers ``timeout``."""
    if name == "config":
        return settings.rollback_after + CONFIG_MARGIN_S
    if name == "scan":
        return SCAN_TIMEOUT_S + SCAN_MARGIN_S
    return RUN_TIMEOUT_S


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def reply_payload(request_id: str, result: Any = None, error: CommandError | None = None) -> bytes:
    """The JSON reply: ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error"}``."""
    body: dict[str, Any] = {"id": request_id, "ok": error is None}
    if error is None:
        body["result"] = result
    else:
        body.update(error.fields)
        body["error"] = {"code": error.code, "message": error.message}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


class RateLimit:
    """At most ``per_minute`` requests in any 60 s (a sliding window)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: collections.deque[float] = collections.deque()

    def allow(self, now: float) -> bool:
        """Whether a request at ``now`` (monotonic seconds) may run; counts it if so."""
        while self._times and now - self._times[0] >= 60.0:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            return False
        self._times.append(now)
        return True


class ReplyStore:
    """The replies sent in the last :data:`DEDUPE_S`, by request id (SQLite, 0600)."""

    def __init__(self, path: Path, *, max_rows: int = DEDUPE_MAX_ROWS) -> None:
        self.path = path
        self.max_rows = max_rows
        # Created 0600 (the agent's umask is 0077 too), before sqlite opens it.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies"
            " (id TEXT PRIMARY KEY, at REAL NOT NULL, reply BLOB NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS replies_at ON replies (at)")
        self._added = 0

    def get(self, request_id: str, now: float) -> bytes | None:
        """The reply already sent for ``request_id`` within :data:`DEDUPE_S` of ``now``."""
        row = self._db.execute(
            "SELECT reply FROM replies WHERE id = ? AND at > ?", (request_id, now - DEDUPE_S)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, request_id: str, reply: bytes, now: float) -> None:
        """Remember ``reply``; prunes entries older than :data:`DEDUPE_S` and the oldest rows
        beyond ``max_rows``."""
        self._db.execute(
            "INSERT OR REPLACE INTO replies (id, at, reply) VALUES (?, ?, ?)",
            (request_id, now, reply),
        )
        self._added += 1
        if self._added % 100 == 1:
            self.prune(now)

    def prune(self, now: float) -> None:
        """Forget entries older than :data:`DEDUPE_S`, and the oldest beyond ``max_rows``."""
        self._db.execute("DELETE FROM replies WHERE at <= ?", (now - DEDUPE_S,))
        self._db.execute(
            "DELETE FROM replies WHERE id IN (SELECT id FROM replies ORDER BY at DESC"
            " LIMIT -1 OFFSET ?)",
            (self.max_rows,),
        )

    def count(self) -> int:
        """Entries held."""
        return int(self._db.execute("SELECT count(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        self._db.close()


@dataclass(frozen=True, slots=True)
class _Job:
    incoming: Incoming
    received: float  # wall time


class CommandChannel:
    """The agent's side of the command channel (see the module docstring).

    ``settings`` gives the current ``[commands]`` (a reload changes permissions and the rate
    at once), ``status`` what ``citygate status --json`` prints, ``supervisor`` the running
    supervisor of a device id (None: no such device), ``handlers`` the commands run
    elsewhere (``config``: agent/cmd_config.py; ``scan``: agent/cmd_scan.py), by name."""

    def __init__(
        self,
        prefix: str,
        gateway_id: str,
        data_dir: Path,
        counters: Counters,
        settings: Callable[[], CommandSettings],
        status: Callable[[], Awaitable[dict[str, Any]]],
        supervisor: Callable[[str], DeviceSupervisor | None],
        *,
        handlers: Mapping[str, Callable[[Request], Awaitable[Any]]] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._handlers = dict(handlers or {})
        self._base = f"{prefix}/{gateway_id}/cmd"
        self._stale: set[str] = set()
        self._store_path = data_dir / STORE_FILE
        self._counters = counters
        self._settings = settings
        self._status = status
        self._supervisor = supervisor
        self._wall = wall
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._client: Client | None = None
        self._rate = RateLimit(settings().max_per_minute)
        self._running: dict[str, asyncio.Future[bytes]] = {}  # id → its reply, while it runs
        self._overflowing = False

    @property
    def topic_filter(self) -> str:
        """``P/G/cmd/+``."""
        return f"{self._base}/+"

    def retarget(self, prefix: str, gateway_id: str) -> None:
        """Listen on ``prefix/gateway_id/cmd/+`` from the next session on (a reload changed
        ``mqtt.topic_prefix``); the old filter becomes stale (see :meth:`take_stale`)."""
        base = f"{prefix}/{gateway_id}/cmd"
        if base != self._base:
            self._stale.add(self.topic_filter)
            self._base = base
            self._stale.discard(self.topic_filter)

    def take_stale(self) -> list[str]:
        """Filters an earlier session subscribed and nobody wants any more: the broker keeps
        them in the persistent session until they are unsubscribed."""
        stale = sorted(self._stale)
        self._stale.clear()
        return stale

    def keep_stale(self, topic_filter: str) -> None:
        """An unsubscribe that did not go through: try again with the next session."""
        self._stale.add(topic_filter)

    def bind(self, client: Client) -> None:
        """Replies go out on ``client`` (the publisher's, for its life)."""
        self._client = client

    def deliver(self, incoming: Incoming) -> None:
        """A request from the broker (on the event loop): queued, or counted and dropped."""
        try:
            self._queue.put_nowait(_Job(incoming, self._wall()))
        except asyncio.QueueFull:
            self._counters.command("overflow")
            if not self._overflowing:
                log.warning("command: more than %d requests waiting; dropping", QUEUE_SIZE)
            self._overflowing = True
        else:
            self._overflowing = False

    async def run(self) -> None:
        """Answer requests until cancelled."""
        store = ReplyStore(self._store_path)  # small and local: its calls do not block
        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    job = await self._queue.get()
                    await self._take(job, store, tg)
        finally:
            store.close()

    async def _take(self, job: _Job, store: ReplyStore, tg: asyncio.TaskGroup) -> None:
        """Check one request; answer it at once or start its command, in ``tg``."""
        incoming = job.incoming
        name = incoming.topic.rsplit("/", 1)[-1]
        if incoming.retain:
            self._outcome("retained", None, name, None, "retained request ignored")
            return
        try:
            request = parse_request(name, incoming.payload)
        except Malformed as exc:
            if exc.request_id is None:
                self._outcome("dropped", None, name, None, f"malformed: {exc.message}")
                return
            request = Request(exc.request_id, name)
            payload = self._reply(request, store, error=exc)
            tg.create_task(self._send(incoming, name, payload), name="cmd-reply")
            return
        now = self._wall()
        first = store.get(request.id, now)
        running = self._running.get(request.id)
        if first is not None or running is not None:
            self._outcome("duplicate", request.id, name, request.device, "first reply sent again")
            tg.create_task(self._send_again(incoming, name, first, running), name="cmd-reply")
            return
        settings = self._settings()
        self._rate.per_minute = settings.max_per_minute
        error = self._refusal(request, settings, now)
        if error is not None:
            payload = self._reply(request, store, error=error)
            tg.create_task(self._send(incoming, name, payload), name="cmd-reply")
            return
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._running[request.id] = future
        tg.create_task(self._execute(request, incoming, store, future), name=f"cmd {name}")

    async def _send_again(
        self,
        incoming: Incoming,
        name: str,
        first: bytes | None,
        running: asyncio.Future[bytes] | None,
    ) -> None:
        if first is None and running is not None:
            try:
                limit = run_timeout(name, self._settings()) + REPLY_TIMEOUT_S
                async with asyncio.timeout(limit):
                    first = await asyncio.shield(running)
            except TimeoutError:
                return
        if first:
            await self._send(incoming, name, first)

    def _refusal(
        self, request: Request, settings: CommandSettings, now: float
    ) -> CommandError | None:
        """Why ``request`` must not run, or None."""
        if request.expires is not None and request.expires < now:
            return CommandError("expired", "the request expired before it arrived")
        if request.name not in COMMANDS:
            return CommandError("unknown_command", f"no command {request.name[:64]!r}")
        if not getattr(settings, request.name):
            return CommandError(
                "forbidden", f"{request.name!r} is not allowed ([commands] {request.name} = false)"
            )
        if not self._rate.allow(time.monotonic()):
            return CommandError(
                "busy", f"more than {settings.max_per_minute} requests per minute; retry later"
            )
        if request.name in UNSUPPORTED and request.name not in self._handlers:
            return CommandError(
                "unsupported", f"{request.name!r} is not implemented in this version of citygate"
            )
        if request.name in ("read", "write"):
            if request.device is None:
                return CommandError("bad_request", f'{request.name!r} needs "device"')
            if self._supervisor(request.device) is None:
                return CommandError("unknown_device", f"no device {request.device[:64]!r}")
        return None

    async def _execute(
        self, request: Request, incoming: Incoming, store: ReplyStore, done: asyncio.Future[bytes]
    ) -> None:
        payload = b""
        limit = run_timeout(request.name, self._settings())
        try:
            try:
                async with asyncio.timeout(limit):
                    result = await self._run_command(request)
            except CommandError as exc:
                payload = self._reply(request, store, error=exc)
            except TimeoutError:
                error = CommandError("timeout", f"no result within {limit:g} s")
                payload = self._reply(request, store, error=error)
            else:
                payload = self._reply(request, store, result=result)
        finally:
            self._running.pop(request.id, None)
            if not done.done():
                done.set_result(payload)
        await self._send(incoming, request.name, payload)

    async def _run_command(self, request: Request) -> Any:
        if request.name == "status":
            return await self._status()
        handler = self._handlers.get(request.name)
        if handler is not None:
            return await handler(request)
        assert request.device is not None
        supervisor = self._supervisor(request.device)
        if supervisor is None:
            raise CommandError("unknown_device", f"no device {request.device[:64]!r}")
        if request.name == "read":
            return await _read(supervisor)
        return await _write(supervisor, request.args)

    def _reply(
        self,
        request: Request,
        store: ReplyStore,
        *,
        result: Any = None,
        error: CommandError | None = None,
    ) -> bytes:
        """The reply, logged, counted and remembered (all but ``busy``: nothing ran)."""
        try:
            payload = reply_payload(request.id, result, error)
        except ValueError:  # a NaN in a result: never valid JSON
            error = CommandError("device_error", "the result is not valid JSON")
            payload = reply_payload(request.id, None, error)
        outcome = "ok" if error is None else error.code
        detail = "" if error is None else error.message
        self._outcome(outcome, request.id, request.name, request.device, detail)
        if outcome != "busy":
            store.put(request.id, payload, self._wall())
        return payload

    async def _send(self, incoming: Incoming, name: str, payload: bytes) -> None:
        client = self._client
        if client is None:
            return
        topic = incoming.response_topic
        properties = None
        if topic is None or not _usable_topic(topic):
            topic = f"{self._base}/{name}/reply"
        elif client.v5 and incoming.correlation_data is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = incoming.correlation_data[:MAX_CORRELATION]
        try:
            await client.publish(
                topic, payload, qos=1, retain=False, within=REPLY_TIMEOUT_S, properties=properties
            )
        except MqttError as exc:
            log.warning("command: reply to %s not delivered: %s", topic[:128], exc)

    def _outcome(
        self, outcome: str, request_id: str | None, name: str, device: str | None, detail: str
    ) -> None:
        self._counters.command(outcome)
        log.info(
            "command %s: id %s, device %s: %s%s",
            json.dumps(name[:64]),
            "-" if request_id is None else json.dumps(request_id),
            "-" if device is None else json.dumps(device[:64]),
            outcome,
            f" ({detail})" if detail else "",
        )


def _usable_topic(topic: str) -> bool:
    return 0 < len(topic) <= MAX_RESPONSE_TOPIC and not any(c in topic for c in "+#\x00")


def readings_result(readout: Readout) -> dict[str, Any]:
    """``{"readings": [{"n", "v"|"vs"|"vb", "u"?}], "t"}``."""
    readings: list[dict[str, Any]] = []
    for reading in readout.readings:
        value = reading.value
        record: dict[str, Any] = {"n": reading.name}
        if isinstance(value, bool):
            record["vb"] = value
        elif isinstance(value, int | float):
            record["v"] = value
        else:
            record["vs"] = str(value)
        if reading.unit is not None:
            record["u"] = reading.unit
        readings.append(record)
    return {"readings": readings, "t": round(readout.time, 3)}


async def _read(supervisor: DeviceSupervisor) -> dict[str, Any]:
    try:
        readout = await supervisor.request_read()
    except NoData as exc:
        raise CommandError("no_data", str(exc)) from None
    except Busy as exc:
        raise CommandError("busy", str(exc)) from None
    except (Exception, TimeoutError) as exc:
        raise CommandError("device_error", describe(exc)) from None
    return readings_result(readout)


async def _write(supervisor: DeviceSupervisor, args: Mapping[str, Any]) -> dict[str, Any]:
    name, value = args.get("name"), args.get("value")
    if set(args) != {"name", "value"} or not isinstance(name, str):
        raise CommandError("bad_request", '"args": expected {"name": "<register>", "value": …}')
    if not isinstance(value, int | float | bool) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise CommandError("bad_request", '"args.value": expected a number or a boolean')
    try:
        written = await supervisor.request_write(name, value)
    except Busy as exc:
        raise CommandError("busy", str(exc)) from None
    except WriteRefused as exc:
        raise CommandError(exc.code, exc.message) from None
    except Exception as exc:
        raise CommandError("device_error", describe(exc)) from None
    return {"name": name, "value": written}
