"""One wireless M-Bus receiver per ``[[wmbus]]``, shared by every meter it hears.

A :class:`Receiver` runs one :class:`TelegramSource` — a USB stick on a serial port
(:class:`StickSource`: iM871A or AMB8465, through the sans-I/O codecs of
:mod:`~citygate.drivers.wmbus.im871a` and :mod:`~citygate.drivers.wmbus.amb8465`) or
a capture file (:class:`ReplaySource`) — and routes each telegram by its meter id
(:func:`~citygate.drivers.wmbus.decode.inspect`, no key needed: the long transport
header's id when there is one, else the link layer's) to the devices listening for
it. Telegrams of ids nobody listens to are counted (:attr:`Receiver.unknown_telegrams`),
never stored.

Healing. A stick is configured when its port opens (link mode in RAM) and then
watched: when nothing came for :data:`PING_AFTER_S`, it is asked something harmless
(iM871A ping, AMB8465 firmware version) and must answer within
:data:`REPLY_TIMEOUT_S`. A port that vanishes, a stick that refuses the mode or
stops answering is closed and reopened with capped exponential backoff; after
``restarts`` failures without a telegram in between the receiver gives up:
:class:`ReceiverGaveUp`, a fatal error that ends the agent so that systemd restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import random
import select
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, Protocol

import serial

from citygate.drivers.api import (
    FatalDriverError,
    OverlongLine,
    TransportError,
    bounded_lines,
    open_regular,
)
from citygate.drivers.wmbus import amb8465, im871a
from citygate.drivers.wmbus.decode import Envelope, inspect
from citygate.drivers.wmbus.frame import WmbusError
from citygate.drivers.wmbus.im871a import RadioTelegram

__all__ = [
    "MAX_LINE_CHARS",
    "PING_AFTER_S",
    "REPLY_TIMEOUT_S",
    "CaptureError",
    "CaptureWriter",
    "Heard",
    "Receiver",
    "ReceiverGaveUp",
    "ReplaySource",
    "StickSource",
    "TelegramSource",
    "from_line",
    "to_line",
]

log = logging.getLogger(__name__)

PING_AFTER_S: Final = 60.0
"""Nothing from the stick for this long: ask it something; it must answer."""
REPLY_TIMEOUT_S: Final = 2.0
"""How long a stick may take to answer a request."""
TRIES: Final = 3
"""Requests sent before a stick counts as not answering."""
MAX_LINE_CHARS: Final = 64 * 1024
"""The longest capture line read; a longer one is skipped unread (counted)."""
_YIELD_EVERY: Final = 1000

Sleep = Callable[[float], Awaitable[None]]


class ReceiverGaveUp(FatalDriverError):
    """The receiver could not be healed; fatal: the agent exits, systemd restarts it."""


class ReceiverError(TransportError):
    """The stick failed: port gone, mode refused, no answer."""


@dataclass(frozen=True, slots=True)
class Heard:
    """A telegram as a receiver hands it on: when, and its layers when readable."""

    telegram: RadioTelegram
    time: float
    """Wall-clock seconds."""
    envelope: Envelope | None
    """None: the link or transport layer cannot be read (:attr:`error` says why)."""
    error: str | None = None

    @property
    def meter_id(self) -> str | None:
        return None if self.envelope is None else self.envelope.meter.id


Listener = Callable[[Heard], None]


class TelegramSource(Protocol):
    """Where telegrams come from: a stick or a capture file."""

    @property
    def radio(self) -> bool:
        """True for a real stick."""
        ...

    async def run(
        self, deliver: Callable[[RadioTelegram], None], started: Callable[[], None]
    ) -> None:
        """Call ``deliver`` for every telegram until cancelled (a finite source: until it
        ends); call ``started`` once telegrams can come; raise when the source fails."""
        ...


# --------------------------------------------------------------------------- the stick


class _Codec(Protocol):
    def feed(self, data: bytes) -> list[Any]: ...


class StickSource:
    """A receiver stick on a serial port: ``dongle`` ``im871a`` or ``amb8465``."""

    radio = True

    def __init__(
        self,
        port: str,
        dongle: str,
        mode: str = "T1",
        *,
        ping_after: float = PING_AFTER_S,
        reply_timeout: float = REPLY_TIMEOUT_S,
    ) -> None:
        if dongle not in ("im871a", "amb8465"):
            raise ValueError(f"unknown dongle {dongle!r}")
        self.port = port
        self.dongle = dongle
        self.mode = mode
        self.ping_after = ping_after
        self.reply_timeout = reply_timeout
        self._codec: _Codec = (
            im871a.Im871aDecoder() if dongle == "im871a" else amb8465.Amb8465Decoder()
        )
        self._fd: int | None = None
        self._lost: str | None = None
        self._activity = asyncio.Event()
        self._waiting: tuple[type, asyncio.Future[Any]] | None = None
        self._deliver: Callable[[RadioTelegram], None] = lambda _: None
        self.crc_errors = 0
        self.discarded_bytes = 0
        self.device_info: str | None = None

    def _open(self) -> serial.Serial:
        baudrate = im871a.BAUDRATE if self.dongle == "im871a" else amb8465.BAUDRATE
        try:
            return serial.Serial(
                port=self.port, baudrate=baudrate, timeout=0, write_timeout=0, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            code = getattr(exc, "errno", None)
            if code == errno.ENOENT or not os.path.exists(self.port):
                why = "no such port (stick unplugged?)"
            elif code == errno.EACCES:
                why = "permission denied (is the agent in the dialout group?)"
            else:
                why = str(exc)
            raise ReceiverError(f"cannot open {self.port}: {why}") from None

    async def run(
        self, deliver: Callable[[RadioTelegram], None], started: Callable[[], None]
    ) -> None:
        self._deliver = deliver
        self._lost = None
        port = self._open()
        fd = port.fileno()
        self._fd = fd
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._readable)
        try:
            await self._configure()
            started()
            await self._watch()
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            with contextlib.suppress(Exception):
                port.close()
            self._fd = None
            self._fail_waiter(ReceiverError("the port closed"))

    async def _configure(self) -> None:
        if self.dongle == "im871a":
            info = await self._ask(im871a.device_info_request(), im871a.DeviceInfo)
            self.device_info = (
                f"iM871A firmware 0x{info.firmware_version:02X}, module 0x{info.module_type:02X}"
            )
            ack = await self._ask(im871a.set_config_request(self.mode), im871a.ConfigAck)
            if not ack.ok:
                raise ReceiverError(
                    f"the stick refused link mode {self.mode} (status {ack.status})"
                )
            return
        read = await self._ask(amb8465.get_config_request(), amb8465.ConfigRead)
        assert isinstance(self._codec, amb8465.Amb8465Decoder)
        rssi = read.setting(amb8465.RSSI_ENABLE)
        self._codec.rssi = bool(rssi)
        out = read.setting(amb8465.UART_CMD_OUT_ENABLE)
        self.device_info = (
            f"AMB8465, {'command' if out else 'transparent'} output, RSSI {'on' if rssi else 'off'}"
        )
        mode_ack = await self._ask(amb8465.set_mode_request(self.mode), amb8465.ModeAck)
        if not mode_ack.ok:
            raise ReceiverError(f"the stick refused mode {self.mode} (status {mode_ack.status})")

    async def _watch(self) -> None:
        while True:
            self._activity.clear()
            try:
                async with asyncio.timeout(self.ping_after):
                    await self._activity.wait()
            except TimeoutError:
                # Quiet: no meter near, or a stuck stick. Ask it.
                request = (
                    im871a.ping_request() if self.dongle == "im871a" else amb8465.firmware_request()
                )
                kind: type = im871a.Pong if self.dongle == "im871a" else amb8465.CommandReply
                await self._ask(request, kind)
            if self._lost is not None:
                raise ReceiverError(f"{self.port} lost: {self._lost}")

    async def _ask(self, request: bytes, kind: type[Any]) -> Any:
        """Send ``request`` until the answer of ``kind`` comes (``TRIES`` times)."""
        for _ in range(TRIES):
            if self._lost is not None:
                raise ReceiverError(f"{self.port} lost: {self._lost}")
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiting = (kind, future)
            try:
                self._write(request)
                async with asyncio.timeout(self.reply_timeout):
                    return await future
            except TimeoutError:
                continue
            finally:
                self._waiting = None
        raise ReceiverError(f"the stick on {self.port} does not answer")

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            raise ReceiverError(f"{self.port} lost: {exc.strerror or exc}") from None
        if written != len(data):
            raise ReceiverError(f"{self.port}: the stick does not take requests")

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._port_lost(exc.strerror or str(exc))
            return
        if not data:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            events = poller.poll(0)
            if events and events[0][1] & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self._port_lost("the port hung up")
            return
        self._activity.set()
        for event in self._codec.feed(data):
            self._event(event)

    def _event(self, event: Any) -> None:
        if isinstance(event, RadioTelegram):
            self._deliver(event)
            return
        if isinstance(event, im871a.Discarded):
            self.discarded_bytes += event.size
            if event.reason == "crc":
                self.crc_errors += 1
            return
        waiting = self._waiting
        if waiting is not None and isinstance(event, waiting[0]) and not waiting[1].done():
            waiting[1].set_result(event)

    def _port_lost(self, reason: str) -> None:
        self._lost = reason
        fd = self._fd
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
        self._activity.set()
        self._fail_waiter(ReceiverError(f"{self.port} lost: {reason}"))

    def _fail_waiter(self, exc: Exception) -> None:
        waiting = self._waiting
        if waiting is not None and not waiting[1].done():
            waiting[1].set_exception(exc)


# --------------------------------------------------------------------------- captures


class CaptureError(ValueError):
    """A capture line that is not a telegram."""


@dataclass(frozen=True, slots=True)
class CaptureLine:
    """One telegram of a capture file."""

    time: float
    telegram: RadioTelegram


def to_line(heard: Heard) -> str:
    """The telegram as one capture line (no newline)."""
    record: dict[str, Any] = {"t": round(heard.time, 3), "hex": heard.telegram.data.hex().upper()}
    if heard.telegram.rssi is not None:
        record["rssi"] = heard.telegram.rssi
    return json.dumps(record, separators=(", ", ": "))


def from_line(line: str) -> CaptureLine:
    """Parse one capture line; raise :class:`CaptureError` saying what is wrong."""
    if len(line) > MAX_LINE_CHARS:
        raise CaptureError(f"line of {len(line)} characters; at most {MAX_LINE_CHARS} are read")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CaptureError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise CaptureError(f"not a telegram: {str(exc)[:80]}") from None
    if not isinstance(record, dict):
        raise CaptureError("expected a JSON object")
    t = record.get("t")
    if isinstance(t, int) and not isinstance(t, bool) and abs(t) < 2**53:
        t = float(t)
    if not isinstance(t, float) or not math.isfinite(t):
        raise CaptureError('"t": expected a number of seconds')
    raw = record.get("hex")
    if not isinstance(raw, str):
        raise CaptureError('"hex": expected the telegram as a hex string')
    try:
        data = bytes.fromhex(raw)
    except ValueError:
        raise CaptureError(f'"hex": not hex: "{raw[:40]}"') from None
    if not 2 <= len(data) <= 256:
        raise CaptureError(f'"hex": {len(data)} bytes; a telegram has 2 to 256')
    rssi = record.get("rssi")
    if rssi is not None and (
        not isinstance(rssi, int) or isinstance(rssi, bool) or not -200 <= rssi <= 50
    ):
        raise CaptureError('"rssi": expected an integer of dBm')
    return CaptureLine(t, RadioTelegram(data, rssi))


def _read_lines(stream: BinaryIO) -> Iterator[str | CaptureError]:
    for line in bounded_lines(stream, MAX_LINE_CHARS):
        if isinstance(line, OverlongLine):
            yield CaptureError(
                f"line longer than {MAX_LINE_CHARS} bytes ({line.size}); skipped unread"
            )
        else:
            yield line


class ReplaySource:
    """Telegrams from a capture file (config.md ``[[wmbus]] replay``), same relative
    timing, the first at once; bad lines counted (:attr:`bad_lines`), the first logged."""

    radio = False

    def __init__(self, path: Path, loop: bool = False, *, sleep: Sleep = asyncio.sleep) -> None:
        self.path = path
        self.loop = loop
        self._sleep = sleep
        self.bad_lines = 0
        self.replayed = 0

    async def run(
        self, deliver: Callable[[RadioTelegram], None], started: Callable[[], None]
    ) -> None:
        started()
        while True:
            delivered = await self._play_once(deliver)
            if not self.loop:
                return
            if not delivered:
                log.warning("wmbus replay %s: no telegram in the file; nothing to loop", self.path)
                return

    async def _play_once(self, deliver: Callable[[RadioTelegram], None]) -> int:
        delivered = 0
        previous: float | None = None
        with open_regular(self.path, "wmbus capture") as stream:
            for number, line in enumerate(_read_lines(stream), start=1):
                if number % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                if isinstance(line, str) and not line.strip():
                    continue
                try:
                    if isinstance(line, CaptureError):
                        raise line
                    entry = from_line(line)
                except CaptureError as exc:
                    self.bad_lines += 1
                    if self.bad_lines == 1:
                        log.warning("%s:%d: skipped: %s", self.path, number, exc)
                    continue
                if previous is not None and entry.time > previous:
                    await self._sleep(entry.time - previous)
                previous = entry.time
                deliver(entry.telegram)
                delivered += 1
                self.replayed += 1
        return delivered


class CaptureWriter:
    """Appends telegrams to a capture file, one JSON line each."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self.written = 0

    def __call__(self, heard: Heard) -> None:
        self._stream.write(to_line(heard) + "\n")
        self.written += 1


# --------------------------------------------------------------------------- the hub


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ReceiverError):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Receiver:
    """One ``[[wmbus]]`` receiver shared by the meters it hears; see the module docstring.

    ``clock`` (monotonic), ``wall_clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        make_source: Callable[[], TelegramSource],
        *,
        name: str,
        restarts: int = 5,
        backoff_start: float = 2.0,
        backoff_cap: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.name = name
        self._make_source = make_source
        self.restarts = restarts
        self._backoff_start = backoff_start
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._by_meter: dict[str, list[Listener]] = {}
        self._everything: list[Listener] = []
        self._latest: dict[str, Heard] = {}
        self._known: set[str] = set()
        self.source: TelegramSource | None = None
        self.running = False
        self.problem: str | None = None
        """What is wrong with the receiver right now (None: fine)."""
        self.gave_up = False
        self.telegrams = 0
        self.unknown_telegrams = 0
        """Telegrams of meter ids no device listens to (counted, never stored)."""
        self.unreadable_telegrams = 0
        """Telegrams whose link or transport layer cannot be read (noise, truncation)."""
        self.listener_errors = 0
        self.failures_total = 0
        self._told_unknown = False

    def facts(self) -> dict[str, Any]:
        """The receiver's counts, for its devices' status."""
        facts: dict[str, Any] = {
            "id": self.name,
            "telegrams": self.telegrams,
            "unknown_telegrams": self.unknown_telegrams,
            "unreadable_telegrams": self.unreadable_telegrams,
            "reopened": self.failures_total,
        }
        if isinstance(self.source, StickSource):  # since the port was (re)opened
            facts["crc_errors"] = self.source.crc_errors
        if self.problem is not None:
            facts["problem"] = self.problem
        return facts

    @contextlib.contextmanager
    def subscribe(self, meter_id: str | None, listener: Listener) -> Iterator[None]:
        """Call ``listener`` with each telegram of ``meter_id`` (None: every telegram)."""
        key = meter_id.upper() if meter_id is not None else None
        listeners = self._everything if key is None else self._by_meter.setdefault(key, [])
        listeners.append(listener)
        if key is not None:
            self._known.add(key)
        try:
            yield
        finally:
            listeners.remove(listener)
            if key is not None and not listeners:
                del self._by_meter[key]

    def latest(self, meter_id: str) -> Heard | None:
        """The last telegram of a meter ever subscribed (a restarted driver starts from it)."""
        return self._latest.get(meter_id.upper())

    def deliver(self, telegram: RadioTelegram) -> None:
        """Route one telegram (what a source calls)."""
        self.telegrams += 1
        if self.problem is not None and self.running:
            log.info("wmbus %s: telegrams arrive again", self.name)
            self.problem = None
        try:
            envelope: Envelope | None = inspect(telegram.data, crc_present=False)
            error = None
        except WmbusError as exc:
            envelope, error = None, str(exc)
        heard = Heard(telegram, self._wall_clock(), envelope, error)
        if envelope is None:
            self.unreadable_telegrams += 1
        else:
            meter_id = envelope.meter.id.upper()
            if meter_id in self._known:
                self._latest[meter_id] = heard
            listeners = self._by_meter.get(meter_id)
            if listeners:
                for listener in tuple(listeners):
                    self._call(listener, heard)
            else:
                self.unknown_telegrams += 1
                if not self._told_unknown and self._by_meter:
                    self._told_unknown = True
                    log.info(
                        "wmbus %s: hearing meters no device is configured for; counting them in "
                        "unknown_telegrams (citygate scan wmbus lists them)",
                        self.name,
                    )
        for listener in tuple(self._everything):
            self._call(listener, heard)

    def _call(self, listener: Listener, heard: Heard) -> None:
        # One device's bug must not stop the receiver the others listen to.
        try:
            listener(heard)
        except Exception:
            self.listener_errors += 1
            if self.listener_errors == 1:
                log.exception("wmbus %s: a listener failed on a telegram of %s", self.name,
                              heard.meter_id)  # fmt: skip

    def _started(self) -> None:
        self.running = True

    async def run(self) -> None:
        """Receive until cancelled, healing the stick; raise :class:`ReceiverGaveUp`."""
        failures = 0  # since the last telegram
        delay = self._backoff_start
        while True:
            heard_before = self.telegrams
            source = self._make_source()
            self.source = source
            self.running = False
            try:
                await source.run(self.deliver, self._started)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever the port or the stick did
                error = _describe(exc)
            else:
                log.info("wmbus %s: the capture ended", self.name)
                self.problem = "the capture ended"
                return
            finally:
                self.running = False
            self.failures_total += 1
            if self.telegrams > heard_before:
                failures, delay = 0, self._backoff_start
            failures += 1
            if failures > self.restarts:
                self.gave_up = True
                self._set_problem(f"{error}; gave up")
                raise ReceiverGaveUp(f"wmbus receiver {self.name}: could not be reopened ({error})")
            self._set_problem(f"{error}; reopening (try {failures})")
            await self._sleep(random.uniform(delay / 2, delay))
            delay = min(self._backoff_cap, delay * 2)

    def _set_problem(self, problem: str) -> None:
        if self.problem is None or ("gave up" in problem) != ("gave up" in self.problem):
            log.warning("wmbus %s: %s", self.name, problem)
        else:
            log.debug("wmbus %s: %s", self.name, problem)
        self.problem = problem
