"""The contract between citygate's runtime and its drivers.

This module imports nothing from ``agent``: a driver shipped in its own package
depends on ``drivers.api`` only.

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

Errors::

    CitygateError
    └── DriverError          anything a device or its transport did
        ├── TransportError   port gone, timeout, adapter down (retryable)
        ├── DeviceError      the device said no (Modbus exception code, NAK)
        └── DecodeError      bad frame, CRC, length: counted, never fatal
    DriverConfigError        a driver's config is invalid (a list of ConfigIssue)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    "Field",
    "FieldKind",
    "Measurement",
    "PollDriver",
    "PushDriver",
    "SerialLineConfig",
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


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """What the runtime gives a driver besides its own options."""

    device_id: str
    interval: float
    config_dir: Path
    serial_lines: Mapping[str, SerialLineConfig] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


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
