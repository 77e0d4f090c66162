"""The contract between citygate's runtime and its drivers.

This module is the only door between the two: a driver (built-in or shipped in
its own package) imports nothing of citygate but ``citygate.drivers.api``, and
this module imports nothing of the runtime. Every public name is listed, with
its stability promise, in README.md ("Writing a driver").

A driver is found through the entry-point group ``citygate.drivers``; the entry
point names a :class:`DriverFactory`. The factory declares its config keys as a
table of :class:`Field` (the runtime validates them with the same rules and
error positions as the rest of gateway.toml), checks what a table cannot say in
:meth:`DriverFactory.configure`, and builds one driver per device.

Two kinds of driver:

* poll drivers (:class:`PollDriver`): the runtime calls ``poll()`` once per
  interval and stamps the sample's time;
* push drivers (:class:`PushDriver`): ``run(emit)`` runs until cancelled and
  calls ``emit`` for every sample the device sends (a :class:`PushSchedule`
  keeps the latest values, says when to emit and when the device is silent).

Serial lines: the runtime owns each ``[[serial]]`` line (one owner per line,
shared by every device on it) and hands every configured line to drivers as a
:class:`SerialLine` in :attr:`DeviceContext.lines`, also when a tool (``citygate
read``, a scan) runs one driver alone; a driver never opens a port itself. A
driver takes a turn on the wire
(``async with line.turn(device_id) as wire``) and exchanges frames in it
(:meth:`SerialWire.exchange`): the owner writes the request, reads until the
driver's sans-I/O :class:`ReplyFramer` says the reply is complete or the timeout
passes, keeps the silent interval between transactions, gives turns in FIFO
order, and accounts the wire time of every device. A line carries one protocol.

Optional hooks of a factory (a factory without them works; the runtime reads a
missing hook as None):

* :attr:`DriverFactory.hub`: a :class:`HubFactory` building a :class:`Hub`, one
  source shared by every device of the driver (the BLE scanner of the
  ``[ble]`` adapter); the runtime runs it and hands it to the devices in
  :attr:`DeviceContext.hub`;
* :attr:`DriverFactory.scan`: a :class:`ScanCommand`, the driver's ``citygate scan
  <name>`` subcommand (discovery, diagnostics), run with a :class:`ScanContext`.

Units: :data:`CONVERSIONS` maps every unit a :class:`Measurement` may carry to its
canonical unit and factor (quantities.md); :func:`canonical` and
:func:`known_units` read it.

Errors::

    CitygateError
    └── DriverError          anything a device or its transport did
        ├── TransportError   port gone, timeout, adapter down (retryable)
        │   └── SilentDevice a push device sent nothing for 3 intervals
        ├── DeviceError      the device said no (Modbus exception code, NAK)
        └── DecodeError      bad frame, CRC, length: counted, never fatal
    WriteRefused             a write refused before anything was sent (code, message)
    FatalDriverError         a shared resource cannot be healed: restart the agent
    DriverConfigError        a driver's config is invalid (a list of ConfigIssue)
    UsageError               bad arguments of a scan command (exit status 2)
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol, Self, TextIO, runtime_checkable

from citygate.drivers._files import (
    OverlongLine,
    UnsafeFileError,
    bounded_lines,
    open_regular,
    read_regular,
)
from citygate.drivers._floats import (
    add_decimal,
    decimal_exponent,
    scale_decimal,
    shortest_float32,
    shortest_float32_scaled,
)
from citygate.drivers._units import (
    CANONICAL_UNITS,
    CONVERSIONS,
    STANDARD_GRAVITY,
    UnknownUnitError,
    canonical,
    known_units,
)

__all__ = [
    "CANONICAL_UNITS",
    "CONVERSIONS",
    "REQUIRED",
    "STANDARD_GRAVITY",
    "BleSettings",
    "CitygateError",
    "ConfigIssue",
    "CountsDiscarded",
    "DecodeError",
    "DeviceContext",
    "DeviceError",
    "DeviceState",
    "Driver",
    "DriverConfigError",
    "DriverError",
    "DriverFactory",
    "Emit",
    "Episode",
    "FatalDriverError",
    "Field",
    "FieldKind",
    "Hub",
    "HubFactory",
    "Measurement",
    "OverlongLine",
    "PollDriver",
    "PushDriver",
    "PushSchedule",
    "ReplyFramer",
    "ReportsStatus",
    "ScanCommand",
    "ScanConfig",
    "ScanContext",
    "SerialExchange",
    "SerialLine",
    "SerialLineConfig",
    "SerialWire",
    "SilentDevice",
    "TransportError",
    "UnknownUnitError",
    "UnsafeFileError",
    "UsageError",
    "Value",
    "WmbusSettings",
    "WritableDriver",
    "WriteRefused",
    "__version__",
    "add_decimal",
    "bounded_lines",
    "canonical",
    "check_aes_key",
    "check_records",
    "decimal_exponent",
    "known_units",
    "one_of",
    "open_regular",
    "read_regular",
    "scale_decimal",
    "shortest_float32",
    "shortest_float32_scaled",
    "show_value",
]

__version__ = "0.1.0"
"""citygate's version: the runtime's, the built-in drivers' and this API's (the
runtime re-exports it as ``citygate.__version__``)."""

Value = float | int | str | bool


@dataclass(frozen=True, slots=True)
class Measurement:
    """One value read from a device, in the unit the device gave it.

    ``unit`` is a SenML unit symbol (``"kWh"``, ``"Cel"``) or None for a
    dimensionless value or a string; the runtime converts it to the canonical
    unit of quantities.md.
    """

    name: str
    value: Value
    unit: str | None = None


class CitygateError(Exception):
    """Base of every error citygate raises on purpose."""


class DriverError(CitygateError):
    """Something a device or its transport did; never fatal for the agent."""


class TransportError(DriverError):
    """The way to the device failed: port gone, connection refused, timeout."""


class DeviceError(DriverError):
    """The device answered, but refused (a Modbus exception code, a NAK)."""


class DecodeError(DriverError):
    """A frame or payload could not be decoded (CRC, length, bad field)."""


class SilentDevice(TransportError):
    """A push device sent nothing for 3 intervals: it is offline until it speaks."""


class WriteRefused(CitygateError):
    """A :meth:`WritableDriver.write` refused before anything was sent.

    ``code`` is ``"forbidden"`` (no such register, or not ``writable``),
    ``"out_of_range"`` (outside the register's ``min``/``max``, or a raw value its
    type cannot hold) or ``"bad_request"`` (the wrong kind of value: a bool for a
    number, a number for a bool, not finite, not a whole raw value for an integer
    register); ``message`` says why, for the operator.
    """

    CODES: ClassVar[frozenset[str]] = frozenset({"forbidden", "out_of_range", "bad_request"})

    def __init__(self, code: str, message: str) -> None:
        if code not in self.CODES:
            raise ValueError(f"unknown WriteRefused code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message


class FatalDriverError(CitygateError):
    """A shared resource (a radio adapter) cannot be healed: the agent must restart."""


class UsageError(CitygateError):
    """Bad command-line arguments (of a :class:`ScanCommand`): the runtime prints
    ``citygate <command>: <message>`` and exits with status 2."""


# --------------------------------------------------------------------------- config


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of a :class:`Field` that must be given."""

FieldKind = Literal[
    "str",  # a string; ``choices`` and ``pattern`` apply
    "int",  # an integer (TOML integer, hex allowed); ``minimum``/``maximum`` apply
    "float",  # a number (integer or float)
    "bool",
    "duration",  # "500ms", "10s", "15m", "1h", "1d" or a number of seconds -> float seconds
    "size",  # "64MiB", "500MB" or a number of bytes -> int bytes
    "path",  # a string, resolved relative to the file that holds it -> pathlib.Path
    "int_or_str",  # an integer or a string (M-Bus address)
    "str_list",  # a list of strings
    "str_table",  # a table of string values (labels)
    "table_list",  # an array of tables, each checked against ``fields``
    "secret",  # a string given inline as KEY or as a file named by KEY_file -> str
]


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a config table, as a driver declares it."""

    kind: FieldKind
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    fields: Mapping[str, Field] | None = None  # for "table_list"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One config error found by a driver.

    ``path`` leads from the device's table to the offending key, for example
    ``("registers", 2, "unit")``; an empty path means the device table itself.
    ``file`` is set when the error lies in another file (a profile); the path
    then starts at that file's top. ``at`` says whether to point at the key or
    at its value.
    """

    path: tuple[str | int, ...]
    message: str
    file: Path | None = None
    at: Literal["key", "value"] = "value"


class DriverConfigError(CitygateError):
    """A driver's config is invalid."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("; ".join(issue.message for issue in self.issues))


def show_value(value: object) -> str:
    """A scalar as written in TOML (a long string shortened), for error messages."""
    if isinstance(value, str):
        if len(value) > 40:
            value = value[:39] + "…"
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def one_of(choices: Sequence[object]) -> str:
    """``"a"``, ``"a" or "b"``, ``"a", "b" or "c"``: choices as written in TOML."""
    shown = [show_value(c) for c in choices]
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " or " + shown[-1]


class Episode:
    """A run of one kind of trouble (refused adverts, undecodable telegrams, …), for a log
    line when it starts and one when it ends: it ends after ``quiet`` seconds without one."""

    __slots__ = ("count", "last", "quiet")

    def __init__(self, quiet: float) -> None:
        self.quiet = quiet
        self.last: float | None = None
        self.count = 0

    def note(self, now: float, count: int = 1) -> bool:
        """Count ``count`` more at ``now``; True when this starts an episode."""
        started = self.last is None
        self.last = now
        self.count += count
        return started

    def ended(self, now: float) -> int | None:
        """The episode's count when it has just ended (quiet long enough), else None."""
        if self.last is None or now - self.last < self.quiet:
            return None
        count, self.count, self.last = self.count, 0, None
        return count


class PushSchedule:
    """When a push driver emits, and how long its device has been silent (sans-I/O).

    It keeps the latest :class:`Measurement` of each name, at most ``max_names``
    names: values of further names are dropped and counted in :attr:`dropped`, so
    a device that babbles new names cannot grow memory. :meth:`take` returns the
    values to emit at once when nothing was emitted yet or ``interval`` has passed
    since the last emit, else holds them; :meth:`due`, called every :attr:`tick`
    seconds, returns held values once the interval has passed. Silence counts from
    :meth:`listening` or the last :meth:`take`, whichever is later: a driver
    raises its :class:`SilentDevice` once :meth:`silent_for` reaches
    :attr:`silence_limit`. ``now`` is always the caller's monotonic clock, in seconds.
    """

    __slots__ = (
        "_last_emit",
        "_last_taken",
        "_latest",
        "_listening_since",
        "_pending",
        "dropped",
        "interval",
        "max_names",
        "silent_after",
    )

    def __init__(self, interval: float, *, max_names: int = 256, silent_after: int = 3) -> None:
        if max_names < 1:
            raise ValueError(f"max_names must be at least 1, not {max_names}")
        self.interval = interval
        self.max_names = max_names
        self.silent_after = silent_after
        self.dropped = 0
        """Values dropped because ``max_names`` names were already kept."""
        self._latest: dict[str, Measurement] = {}
        self._pending = False
        self._last_emit: float | None = None
        self._last_taken: float | None = None
        self._listening_since = 0.0

    @property
    def tick(self) -> float:
        """Seconds between two calls of :meth:`due` (and silence checks)."""
        return min(1.0, self.interval / 4)

    @property
    def silence_limit(self) -> float:
        """Seconds without values after which the device is silent (also the age up
        to which a value heard before listening started is still worth taking)."""
        return self.silent_after * self.interval

    @property
    def pending(self) -> bool:
        """Whether values taken since the last emit are held."""
        return self._pending

    def listening(self, now: float) -> None:
        """The driver starts listening: silence counts from ``now`` at the earliest."""
        self._listening_since = now

    def take(self, measurements: Iterable[Measurement], now: float) -> list[Measurement] | None:
        """Keep the latest value of each name; the values to emit now, or None (held)."""
        latest = self._latest
        for measurement in measurements:
            if measurement.name in latest or len(latest) < self.max_names:
                latest[measurement.name] = measurement
            else:
                self.dropped += 1
        self._last_taken = now
        self._pending = True
        if self._last_emit is None or now - self._last_emit >= self.interval:
            return self._emitted(now)
        return None

    def due(self, now: float) -> list[Measurement] | None:
        """The held values once ``interval`` has passed since the last emit, else None."""
        if self._pending and self._last_emit is not None and now - self._last_emit >= self.interval:
            return self._emitted(now)
        return None

    def silent_for(self, now: float) -> float:
        """Seconds since the last values, or since listening started if later."""
        since = self._listening_since
        if self._last_taken is not None and self._last_taken > since:
            since = self._last_taken
        return now - since

    def _emitted(self, now: float) -> list[Measurement]:
        self._pending = False
        self._last_emit = now
        return list(self._latest.values())


_AES_KEY = re.compile(r"[0-9a-fA-F]{32}")
_QUANTITY_NAME = re.compile(r"[a-z][a-z0-9_]*")


def check_aes_key(raw: str | None, key: str, issues: list[ConfigIssue]) -> bytes | None:
    """The AES-128 key written under ``key`` (32 hex digits), or None when absent or wrong
    (an issue is appended). The message says only what shape the text has: never the key."""
    if raw is None:
        return None
    text = raw.strip()
    if _AES_KEY.fullmatch(text):
        return bytes.fromhex(text)
    found = f"{len(text)} characters" if len(text) != 32 else "other characters"
    issues.append(ConfigIssue((key,), f'"{key}": expected 32 hex digits, found {found}'))
    return None


def check_records(raw: Sequence[str] | None, issues: list[ConfigIssue]) -> frozenset[str] | None:
    """A ``records`` list (keep only these quantity names), or None when absent; names that
    are not quantity names, repeated names and an empty list append issues."""
    if raw is None:
        return None
    seen: set[str] = set()
    for index, name in enumerate(raw):
        if not _QUANTITY_NAME.fullmatch(name):
            issues.append(
                ConfigIssue(
                    ("records", index),
                    f'"records": {show_value(name)} is not a quantity name '
                    "(lower-case letters, digits and _, e.g. volume or energy_t1)",
                )
            )
        elif name in seen:
            issues.append(ConfigIssue(("records", index), f'"records": "{name}" is listed twice'))
        seen.add(name)
    if not raw:
        issues.append(
            ConfigIssue(
                ("records",), '"records": empty list keeps nothing; leave it out to keep all'
            )
        )
    return frozenset(raw)


@dataclass(frozen=True, slots=True)
class SerialLineConfig:
    """A ``[[serial]]`` table, validated."""

    id: str
    port: str
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int
    timeout: float

    @property
    def character_time(self) -> float:
        """Seconds one character takes on the wire (start, data, parity, stop bits)."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    @property
    def silent_interval(self) -> float:
        """The Modbus RTU inter-frame gap: 3.5 characters, 1.75 ms above 19200 baud."""
        if self.baudrate > 19200:
            return 0.00175
        return 3.5 * self.character_time


@dataclass(frozen=True, slots=True)
class BleSettings:
    """The ``[ble]`` table, validated: what a :class:`HubFactory` is given."""

    adapter: str = "hci0"
    mode: str = "passive"  # "passive" or "active"
    replay: Path | None = None
    replay_loop: bool = False


@dataclass(frozen=True, slots=True)
class WmbusSettings:
    """A ``[[wmbus]]`` table, validated: one wireless M-Bus receiver (a stick on
    ``port`` of kind ``dongle``, or a ``replay`` capture file)."""

    id: str
    port: str | None = None
    dongle: str | None = None  # "im871a" or "amb8465", with port
    mode: str = "T1"  # "T1", "C1" or "S1"
    replay: Path | None = None
    replay_loop: bool = False


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """What the runtime gives a driver besides its own options.

    ``serial_lines`` holds the settings of every ``[[serial]]`` line, ``lines``
    the runtime's owner of every configured line the devices use: the agent's
    shared owners, or private ones when a tool (``citygate read``) runs one
    driver alone. A driver never opens a line itself; a device whose line has no
    owner here fails with a :class:`TransportError`.

    ``hub`` is the shared source the driver's factory declared
    (:attr:`DriverFactory.hub`), run by the runtime; None when the factory has
    none or the runtime runs no hub (a driver may then use a private one).

    ``state`` keeps a few bytes of the device's memory across driver restarts,
    agent restarts and reloads (see :class:`DeviceState`); None when the runtime
    keeps none (``citygate read``, a scan): the driver then starts afresh each time.
    """

    device_id: str
    interval: float
    config_dir: Path
    serial_lines: Mapping[str, SerialLineConfig] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    lines: Mapping[str, SerialLine] = field(default_factory=dict)
    hub: Hub | None = None
    state: DeviceState | None = None


@runtime_checkable
class DeviceState(Protocol):
    """A device's small memory that outlives its driver (:attr:`DeviceContext.state`).

    What a driver must not forget when it is restarted, the agent restarts or a
    reload rebuilds it: the last encryption counter accepted from a sensor (replay
    protection). The bytes are the driver's own format; keep them small (the agent
    caps them at 64 KiB) and say which device they belong to (an address, a key
    fingerprint), since the config of a device id may change between runs.

    Both calls are synchronous and short and never raise for the store's own
    trouble: an unreadable store reads as None (logged once; bytes the driver
    cannot parse are its to treat as none), a failed write is logged by the runtime
    and the previous bytes stay. Each :meth:`save` is a durable write (the agent
    keeps one file per device in its ``data_dir``): call it seldom, never per advert
    or poll (SD cards wear), e.g. at most every 10 s while something changed and
    once when the driver stops; what changed since the last save is lost in a crash.
    """

    def load(self) -> bytes | None:
        """The bytes last saved for this device, or None (none yet, or unreadable)."""
        ...

    def save(self, data: bytes) -> None:
        """Replace the device's bytes with ``data`` (atomically: the old or the new, never half)."""
        ...


# --------------------------------------------------------------------------- serial lines


@runtime_checkable
class ReplyFramer(Protocol):
    """Sans-I/O: tells a line owner when the reply to a request is complete.

    One framer serves one exchange. The owner feeds it every byte received after
    the request went out, in arrival order and in any chunking.
    """

    def feed(self, data: bytes) -> bool:
        """Take received bytes; True once the reply is complete (or can never
        become valid: the driver then reads the framer's verdict)."""
        ...


@runtime_checkable
class CountsDiscarded(Protocol):
    """Optional for a :class:`ReplyFramer`: it counts the bytes it dropped as framing
    nothing (garbage, noise); the line owner adds them to the device's figures."""

    @property
    def discarded_bytes(self) -> int:
        """Bytes dropped so far."""
        ...


@dataclass(frozen=True, slots=True)
class SerialExchange:
    """What one exchange on the wire gave.

    ``complete`` is the framer's verdict; when False the timeout passed with
    ``received`` holding what arrived (nothing: a silent device; some bytes: a
    truncated frame). ``stale`` counts bytes found waiting on the line before the
    request went out (late replies, noise): they were discarded.
    """

    received: bytes
    complete: bool
    elapsed: float
    stale: int = 0


@runtime_checkable
class SerialWire(Protocol):
    """Exclusive use of a serial line for one turn (see :meth:`SerialLine.turn`)."""

    async def exchange(
        self,
        request: bytes,
        framer: ReplyFramer,
        timeout: float,  # noqa: ASYNC109 - the reply timeout of this request
    ) -> SerialExchange:
        """Write ``request`` (after the line's silent interval) and read until
        ``framer`` is satisfied or ``timeout`` seconds passed since the request
        started going out.

        An exchange that timed out with nothing received ends the turn: the next
        exchange of the same turn first waits behind the devices already
        waiting, so a silent device never holds the line for more than one
        timeout at a time. Raises :class:`TransportError` when the port is gone
        (the owner reopens it when it returns).
        """
        ...

    async def send(self, request: bytes) -> None:
        """Write a frame that gets no reply (a broadcast), then keep the silent interval."""
        ...

    def note(self, problem: str) -> None:
        """Count a bad reply of this turn's device by kind (``"crc"``,
        ``"wrong_unit"``, ``"exception"``, …) in the line's per-device figures."""
        ...


@runtime_checkable
class SerialLine(Protocol):
    """The runtime's owner of one ``[[serial]]`` line."""

    @property
    def config(self) -> SerialLineConfig:
        """The line's settings."""
        ...

    def turn(self, device_id: str) -> AbstractAsyncContextManager[SerialWire]:
        """Wait (FIFO among the line's devices) for exclusive use of the wire.

        Hold a turn for one poll's transactions, never across sleeps. Raises
        :class:`TransportError` if the port cannot be opened.
        """
        ...


# --------------------------------------------------------------------------- runtime

Emit = Callable[[Sequence[Measurement]], None]


@runtime_checkable
class Driver(Protocol):
    """One device. ``async with driver:`` opens and closes its transport."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class PollDriver(Driver, Protocol):
    """A device the runtime asks, once per interval."""

    async def poll(self) -> Sequence[Measurement]:
        """Read the device once; raise :class:`DriverError` on failure."""
        ...


@runtime_checkable
class PushDriver(Driver, Protocol):
    """A device that sends when it wants (BLE adverts)."""

    async def run(self, emit: Emit) -> None:
        """Call ``emit`` for each sample until cancelled."""
        ...


@runtime_checkable
class WritableDriver(Protocol):
    """Optional for a :class:`PollDriver`: it can write one named value (provisional).

    ``write`` is called on an entered driver, possibly while a poll runs (the
    driver keeps its requests apart; on a serial line it takes a turn like a
    poll). ``value`` is in the unit the device's config gives the value (a
    Modbus register's ``unit``, before its scale and offset are undone).
    """

    async def write(self, name: str, value: float | int | bool) -> Value:
        """Write ``value`` to ``name``, read it back and return what was read, as
        :meth:`PollDriver.poll` gives it (canonical unit).

        Raises :class:`WriteRefused` (nothing sent) for what the config does not
        allow, else a :class:`DriverError` as a poll does (:class:`DeviceError`
        when the device refuses the write).
        """
        ...


@runtime_checkable
class ReportsStatus(Protocol):
    """A driver with facts for its device's status message (an M-Bus meter's id)."""

    def status_facts(self) -> Mapping[str, Any]:
        """Keys merged into ``P/G/D/status`` (``{"meter": {...}}``); asked after every
        poll (a push driver: after every sample and when it stops)."""
        ...


class Hub(Protocol):
    """A source shared by every device of one driver (the BLE scanner of an adapter)."""

    async def run(self) -> None:
        """Run until cancelled; the runtime runs it while the driver's devices run."""
        ...


class HubFactory(Protocol):
    """The :attr:`DriverFactory.hub` hook: builds the driver's shared :class:`Hub`."""

    def __call__(self, settings: BleSettings) -> Hub:
        """The hub for the ``[ble]`` settings (defaults when the table is absent)."""
        ...


@dataclass(frozen=True, slots=True)
class ScanConfig:
    """The pieces of gateway.toml a scan command may read.

    ``device_configs`` holds what the factory's ``configure`` returned for each
    ``[[device]]`` of this driver (disabled ones included), in file order.
    """

    path: Path
    serial_lines: Mapping[str, SerialLineConfig]
    ble: BleSettings | None
    device_configs: Sequence[Any]
    wmbus: Mapping[str, WmbusSettings] = field(default_factory=dict)
    """The ``[[wmbus]]`` receivers by id."""


class ScanContext(Protocol):
    """What the runtime gives a :class:`ScanCommand`; it loads the config only when asked."""

    @property
    def out(self) -> TextIO:
        """Where results go (standard output)."""
        ...

    @property
    def err(self) -> TextIO:
        """Where progress and errors go (standard error)."""
        ...

    def config(self) -> ScanConfig:
        """The config named by ``-c``, loaded on first use (an invalid one ends the
        command with exit status 2, its errors printed)."""
        ...

    def has_config(self) -> bool:
        """Whether the file named by ``-c`` exists (for commands where it is optional)."""
        ...

    def serial_line(self, line_id: str) -> SerialLine:
        """A private owner of the config's ``[[serial]]`` line ``line_id`` for this
        command, closed by the runtime when the command returns; raises
        :class:`UsageError` naming the known lines when there is none by that id."""
        ...

    def setup_logging(self, level: str) -> None:
        """Send log records of ``level`` and above to standard error as the agent does."""
        ...


class ScanCommand(Protocol):
    """The :attr:`DriverFactory.scan` hook: the driver's ``citygate scan <name>``."""

    @property
    def help(self) -> str:
        """One line for ``citygate scan --help``."""
        ...

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's options; the runtime has added ``-c/--config``."""
        ...

    async def run(self, args: argparse.Namespace, context: ScanContext) -> int:
        """Run the command; return its exit status (0 done, 1 failed). Raise
        :class:`UsageError` for bad arguments (exit status 2)."""
        ...


class DriverFactory(Protocol):
    """What the entry point of a driver names.

    ``hub`` and ``scan`` are optional hooks: a factory without them works (the
    runtime reads a missing one as None); define them as None to satisfy a type
    checker.
    """

    name: str
    """The value of ``driver = "…"`` in gateway.toml."""

    version: str
    default_interval: float
    """Seconds; used when a device gives no ``interval``."""

    fields: Mapping[str, Field]
    """The driver's own keys of a ``[[device]]`` table (not id, driver, interval,
    enabled, labels)."""

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> Any:
        """Check ``options`` (already typed by ``fields``) and return the driver's
        own config object; raise :class:`DriverConfigError` for what is wrong."""
        ...

    def create(self, config: Any, context: DeviceContext) -> PollDriver | PushDriver:
        """Build the driver of one device from what ``configure`` returned."""
        ...

    @property
    def hub(self) -> HubFactory | None:
        """Optional: builds the source shared by the driver's devices (default None)."""
        ...

    @property
    def scan(self) -> ScanCommand | None:
        """Optional: the driver's ``citygate scan <name>`` subcommand (default None)."""
        ...
