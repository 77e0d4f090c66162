"""The contract between citygate's runtime and its drivers.

This module imports nothing from ``agent``: a driver shipped in its own package
depends on ``citygate.drivers.api`` only.

A driver is found through the entry-point group ``citygate.drivers``; the entry
point names a :class:`DriverFactory`. The factory declares its config keys as a
table of :class:`Field` (the runtime validates them with the same rules and
error positions as the rest of gateway.toml), checks what a table cannot say in
:meth:`DriverFactory.configure`, and builds one driver per device.

Two kinds of driver:

* poll drivers (:class:`PollDriver`): the runtime calls ``poll()`` once per
  interval and stamps the sample's time;
* push drivers (:class:`PushDriver`): ``run(emit)`` runs until cancelled and
  calls ``emit`` for every sample the device sends.

Serial lines: the runtime owns each ``[[serial]]`` line (one owner per line,
shared by every device on it) and hands it to drivers as a :class:`SerialLine`
in :attr:`DeviceContext.lines`. A driver takes a turn on the wire
(``async with line.turn(device_id) as wire``) and exchanges frames in it
(:meth:`SerialWire.exchange`): the owner writes the request, reads until the
driver's sans-I/O :class:`ReplyFramer` says the reply is complete or the timeout
passes, keeps the silent interval between transactions, gives turns in FIFO
order, and accounts the wire time of every device. A line carries one protocol.

Errors::

    CitygateError
    └── DriverError          anything a device or its transport did
        ├── TransportError   port gone, timeout, adapter down (retryable)
        │   └── SilentDevice a push device sent nothing for 3 intervals
        ├── DeviceError      the device said no (Modbus exception code, NAK)
        └── DecodeError      bad frame, CRC, length: counted, never fatal
    FatalDriverError         a shared resource cannot be healed: restart the agent
    DriverConfigError        a driver's config is invalid (a list of ConfigIssue)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

__all__ = [
    "REQUIRED",
    "CitygateError",
    "ConfigIssue",
    "DecodeError",
    "DeviceContext",
    "DeviceError",
    "Driver",
    "DriverConfigError",
    "DriverError",
    "DriverFactory",
    "Emit",
    "FatalDriverError",
    "Field",
    "FieldKind",
    "Measurement",
    "PollDriver",
    "PushDriver",
    "ReplyFramer",
    "ReportsStatus",
    "SerialExchange",
    "SerialLine",
    "SerialLineConfig",
    "SerialWire",
    "SilentDevice",
    "TransportError",
    "Value",
]

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


class FatalDriverError(CitygateError):
    """A shared resource (a radio adapter) cannot be healed: the agent must restart."""


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
class DeviceContext:
    """What the runtime gives a driver besides its own options.

    ``lines`` holds the runtime's owner of each ``[[serial]]`` line; it is empty
    when a tool (``citygate read``) runs one driver alone: a serial driver then
    opens a line of its own for its lifetime.
    """

    device_id: str
    interval: float
    config_dir: Path
    serial_lines: Mapping[str, SerialLineConfig] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    lines: Mapping[str, SerialLine] = field(default_factory=dict)
    ble: object | None = None
    """The BLE scanner hub of the adapter, shared by every BLE device (None: a
    driver run alone opens its own)."""


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
class ReportsStatus(Protocol):
    """A driver with facts for its device's status message (an M-Bus meter's id)."""

    def status_facts(self) -> Mapping[str, Any]:
        """Keys merged into ``P/G/D/status`` (``{"meter": {...}}``); asked after every poll."""
        ...


class DriverFactory(Protocol):
    """What the entry point of a driver names."""

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
