"""Load and validate gateway.toml (../shared/spec/config.md).

``load(path, factories)`` returns a :class:`Config` or raises :class:`ConfigError`
holding every problem found, each placed on its key or value as
``FILE:LINE:COL: message`` (positions from :mod:`citygate.tomlpos`).

Each section is a declarative table of :class:`citygate.drivers.api.Field` (the same
kind of table a driver declares for its device keys); one walker types a TOML
table by such a schema. What a table cannot say (the MQTT url, unique ids,
references between tables) is checked after it, and a driver's own checks run
in its factory's ``configure``, whose issues are placed like the rest.

Decisions the spec leaves open:

* paths are resolved against the directory of the file that holds them; so is
  the default ``data_dir`` (``./var``) when ``$STATE_DIRECTORY`` is not set;
* durations and sizes must be more than 0 unless their Field sets a minimum;
  a duration is at most 3650 days, a size at most 1024 TiB, a device
  ``interval`` from 1 ms (the agent's own stress tests poll every 4 ms; below
  1 ms a device would only keep the event loop busy) to 7 days;
* an include glob matching no file (or naming a missing directory) is a
  warning; a file matched twice is read once; the globs may look through
  :data:`INCLUDE_MAX_ENTRIES` directory entries in all (``**`` walks below a
  directory without following symbolic links);
* hostile input is refused with a placed error, never read whole: config files
  and secret files must be regular files of at most :data:`CONFIG_MAX_BYTES`
  (:data:`CONFIG_TOTAL_MAX_BYTES` for all config files together) and
  :data:`SECRET_MAX_BYTES`; keys may nest at most :data:`MAX_DEPTH` deep;
  :data:`MAX_PROBLEMS` errors are listed, the rest counted;
  integers must fit in 64 bits (TOML 1.0); strings may hold no control
  character (a secret no NUL) and at most :data:`MAX_TEXT` characters;
* ``mqtt.topic_prefix`` is one topic level of at most 64 characters, not
  starting with ``$`` (the broker's own topics, ``$SYS``); ``client_id`` has
  at most 128 characters and ``username`` 256;
* a ``[[serial]]`` line without ``baudrate`` used only by mbus devices runs at
  2400 baud, any other at 9600;
* warnings (``Problem`` messages starting ``"warning: "``): a secret written
  inline, a secret file open to group or others, TLS files with a plain
  ``mqtt://`` url, an include matching nothing.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import errno
import fnmatch
import glob
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from citygate.drivers.api import (
    REQUIRED,
    BleSettings,
    CitygateError,
    ConfigIssue,
    DeviceContext,
    DriverConfigError,
    DriverFactory,
    Field,
    SerialLineConfig,
    WmbusSettings,
    one_of,
    show_value,
)
from citygate.safefile import UnsafeFileError, read_regular
from citygate.tomlpos import KeyPath, Locator, Position, locate

__all__ = [
    "BLE_FIELDS",
    "BUFFER_FIELDS",
    "CONFIG_MAX_BYTES",
    "CONFIG_TOTAL_MAX_BYTES",
    "DEVICE_FIELDS",
    "GATEWAY_FIELDS",
    "ID_PATTERN",
    "INCLUDE_MAX_ENTRIES",
    "MAX_DEPTH",
    "MAX_PROBLEMS",
    "MAX_TEXT",
    "MQTT_FIELDS",
    "SECRET_MAX_BYTES",
    "SERIAL_FIELDS",
    "WMBUS_FIELDS",
    "BleSettings",
    "BufferSettings",
    "Config",
    "ConfigError",
    "DeviceConfig",
    "GatewaySettings",
    "MqttSettings",
    "Problem",
    "load",
    "parse_duration",
    "parse_size",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One error or warning, placed in a file."""

    file: Path
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class ConfigError(CitygateError):
    """The config is invalid; ``problems`` lists every error, in file order.

    ``warnings`` holds the warnings found on the way (they do not make the
    config invalid). Past :data:`MAX_PROBLEMS` errors, ``problems`` ends with one
    saying how many more were left out; ``count`` is how many were found.
    """

    def __init__(
        self, problems: list[Problem], warnings: Sequence[Problem] = (), count: int | None = None
    ) -> None:
        self.problems = problems
        self.warnings = list(warnings)
        self.count = len(problems) if count is None else count
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """``[gateway]``."""

    id: str
    data_dir: Path
    log_level: str = "info"
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """``[mqtt]``; ``host``, ``port`` and ``tls`` come from ``url``."""

    url: str = "mqtt://127.0.0.1:1883"
    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    client_id: str = ""
    username: str | None = None
    password: str | None = None  # from password or password_file
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    topic_prefix: str = "city"
    qos: int = 1
    protocol: str = "5"
    keepalive: float = 30.0
    max_batch: int = 500
    linger: float = 0.2
    max_inflight: int = 20
    encoding: str = "json"  # data messages: "json" (SenML JSON) or "cbor" (SenML CBOR)
    urls: tuple[str, ...] = ()  # every node of a cluster, ``url`` first; () means (url,)

    @property
    def endpoints(self) -> tuple[tuple[str, str, int], ...]:
        """(url, host, port) of each broker to try, in turn."""
        if not self.urls:
            return ((self.url, self.host, self.port),)
        found = []
        for url in self.urls:
            host, port, _ = _parse_mqtt_url(url)
            found.append((url, host, port))
        return tuple(found)


@dataclass(frozen=True, slots=True)
class BufferSettings:
    """``[buffer]``."""

    max_size: int = 256 * 1024 * 1024
    max_age: float = 30 * 86400.0
    when_full: str = "drop_oldest"
    durability: str = "normal"


@dataclass(frozen=True, slots=True)
class CommandSettings:
    """``[commands]``: the opt-in remote command channel (mqtt.md, Commands)."""

    enabled: bool = False
    status: bool = True
    read: bool = True
    write: bool = False
    scan: bool = False
    config: bool = False
    rollback_after: float = 120.0
    max_per_minute: int = 30


@dataclass(frozen=True, slots=True)
class HomeAssistantSettings:
    """``[homeassistant]``: opt-in Home Assistant MQTT discovery (mqtt.md, Home Assistant)."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """A ``[[device]]`` table: common keys, the driver's typed options and the
    object its factory's ``configure`` returned."""

    id: str
    driver: str
    interval: float
    enabled: bool
    labels: Mapping[str, str]
    options: Mapping[str, Any]
    driver_config: Any
    source: Path


@dataclass(frozen=True, slots=True)
class Config:
    """A valid gateway.toml and everything it includes."""

    path: Path
    gateway: GatewaySettings
    mqtt: MqttSettings
    buffer: BufferSettings
    serial: Mapping[str, SerialLineConfig]
    ble: BleSettings | None  # None: no [ble] table
    devices: tuple[DeviceConfig, ...]
    warnings: tuple[Problem, ...] = ()
    files: tuple[Path, ...] = ()  # every TOML file read: main, includes
    commands: CommandSettings = field(default_factory=CommandSettings)
    homeassistant: HomeAssistantSettings = field(default_factory=HomeAssistantSettings)
    wmbus: Mapping[str, WmbusSettings] = field(default_factory=dict)  # [[wmbus]] by id


# --------------------------------------------------------------------------- values

CONFIG_MAX_BYTES: Final = 1 << 20
"""The most bytes one config file (main, included or profile) may hold: 1 MiB."""
CONFIG_TOTAL_MAX_BYTES: Final = 2 << 20
"""The most bytes the main file and its includes may hold together: 2 MiB."""
SECRET_MAX_BYTES: Final = 64 << 10
"""The most bytes a secret file (``*_file``) may hold: 64 KiB."""
MAX_DEPTH: Final = 32
"""The most levels keys may nest (tables, dotted keys, arrays, inline tables)."""
MAX_TEXT: Final = 4096
"""The most characters of a string value (a secret: 65535 UTF-8 bytes, MQTT's limit)."""
MAX_PROBLEMS: Final = 1000
"""The most errors (and warnings) one load lists; more errors are counted."""
INCLUDE_MAX_ENTRIES: Final = 10_000
"""The most directory entries the include globs of one config may look through together."""

_MAX_DURATION_S: Final = 3650 * 86400.0
_MAX_SIZE: Final = 1024 * 2**40
_MAX_SECRET_BYTES: Final = 65535
_INT64: Final = range(-(2**63), 2**63)

_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS: Final = {
    "B": 1,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
_AMOUNT = re.compile(r"\s*(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[A-Za-z]*)\s*")


def _amount(text: str, what: str, units: Mapping[str, float], example: str) -> float:
    match = _AMOUNT.fullmatch(text)
    unit_list = ", ".join(units)
    if match is None:
        raise ValueError(
            f'invalid {what} "{text}": write a number and a unit ({unit_list}), e.g. {example}'
        )
    number, unit = match["number"], match["unit"]
    if not unit:
        raise ValueError(f'{what} "{text}" has no unit: add one ({unit_list}) or drop the quotes')
    if unit not in units:
        raise ValueError(f'unknown unit "{unit}" in {what} "{text}": use {unit_list}')
    return float(number) * units[unit]


def _number(value: str | float) -> str:
    """A number for "found …", also one too large to print."""
    if isinstance(value, int) and value not in _INT64:
        return f"an integer of {value.bit_length()} bits"
    return str(value)


def _as_float(value: float) -> float:
    """``value`` as a float; an integer too large for one becomes infinity."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def parse_duration(value: str | float) -> float:
    """Seconds from ``"500ms"``, ``"10s"``, ``"15m"``, ``"1h"``, ``"1d"`` or a number of seconds.

    Raise ValueError for anything else, including a negative or infinite value
    or one above 3650 days.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f'expected a duration such as "10s", found {type(value).__name__}')
    if isinstance(value, str):
        seconds = _amount(value, "duration", _DURATION_UNITS, '"500ms", "10s", "15m"')
    else:
        seconds = _as_float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f"a duration must be a finite number of seconds, 0 or more, found {_number(value)}"
        )
    if seconds > _MAX_DURATION_S:
        raise ValueError(f"a duration must be at most 3650d (10 years), found {_number(value)}")
    return seconds


def parse_size(value: str | int | float) -> int:
    """Bytes from ``"64MiB"``, ``"500MB"``, ``"1GiB"``, ``"10kB"`` or a number of bytes.

    kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024. Raise
    ValueError for anything else, including a negative or fractional byte count
    or one above 1024 TiB.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f'expected a size such as "64MiB", found {type(value).__name__}')
    if isinstance(value, str):
        size = _amount(value, "size", _SIZE_UNITS, '"64MiB", "500MB"')
    else:
        size = _as_float(value)
    if not math.isfinite(size) or size < 0:
        raise ValueError(f"a size must be a number of bytes, 0 or more, found {_number(value)}")
    if size > _MAX_SIZE:
        raise ValueError(f"a size must be at most 1024TiB, found {_number(value)}")
    if not size.is_integer():
        if isinstance(value, str):
            return round(size)
        raise ValueError(f"a size in bytes must be a whole number, found {value}")
    return int(size)


# --------------------------------------------------------------------------- schemas

ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_ID_HELP: Final = 'an id (1–64 letters, digits, "_" or "-", not starting with "_" or "-")'

GATEWAY_FIELDS: Final[Mapping[str, Field]] = {
    "id": Field("str", REQUIRED, help=_ID_HELP, pattern=ID_PATTERN),
    "data_dir": Field("path", None, help="buffer and state; default $STATE_DIRECTORY or ./var"),
    "log_level": Field("str", "info", choices=("debug", "info", "warning", "error")),
    "labels": Field("str_table", {}, help="free metadata published in the gateway status"),
}

MQTT_FIELDS: Final[Mapping[str, Field]] = {
    "url": Field(
        "str",
        "mqtt://127.0.0.1:1883",
        help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT], or a list of them (a cluster)",
    ),
    "client_id": Field("str", None, help='default "citygate-<gateway.id>"'),
    "username": Field("str", None),
    "password": Field("secret", None),
    "ca_file": Field("path", None, help="TLS trust anchor (PEM)"),
    "cert_file": Field("path", None, help="TLS client certificate (PEM)"),
    "key_file": Field("path", None, help="TLS client key (PEM)"),
    "topic_prefix": Field(
        "str", "city", pattern=r"[^/#+\x00]+", help='one topic level, without "/", "#" or "+"'
    ),
    "qos": Field("int", 1, choices=(0, 1)),
    "protocol": Field("str", "5", choices=("5", "3.1.1")),
    "keepalive": Field("duration", 30.0, maximum=65535),
    "max_batch": Field("int", 500, minimum=1),
    "linger": Field("duration", 0.2, minimum=0),
    "max_inflight": Field("int", 20, minimum=1, maximum=65535),
    "encoding": Field(
        "str", "json", choices=("json", "cbor"), help="data messages: SenML JSON or SenML CBOR"
    ),
}

BUFFER_FIELDS: Final[Mapping[str, Field]] = {
    "max_size": Field("size", 256 * 2**20),
    "max_age": Field("duration", 30 * 86400.0),
    "when_full": Field("str", "drop_oldest", choices=("drop_oldest", "drop_newest")),
    "durability": Field("str", "normal", choices=("normal", "full")),
}

COMMANDS_FIELDS: Final[Mapping[str, Field]] = {
    "enabled": Field("bool", False, help="subscribe to P/G/cmd/+ and answer requests"),
    "status": Field("bool", True),
    "read": Field("bool", True),
    "write": Field("bool", False, help="also needs writable registers"),
    "scan": Field("bool", False),
    "config": Field("bool", False),
    "rollback_after": Field("duration", 120.0, minimum=1, maximum=86400.0),
    "max_per_minute": Field("int", 30, minimum=1, maximum=10_000),
}

HOMEASSISTANT_FIELDS: Final[Mapping[str, Field]] = {
    "enabled": Field("bool", False, help="publish discovery and per-device state"),
    "discovery_prefix": Field(
        "str",
        "homeassistant",
        help="Home Assistant's discovery prefix (letters, digits, _ and -, / between levels)",
        pattern=r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*",
    ),
}

SERIAL_FIELDS: Final[Mapping[str, Field]] = {
    "id": Field("str", REQUIRED, help=_ID_HELP, pattern=ID_PATTERN),
    "port": Field("str", REQUIRED, help="/dev/ttyUSB0, /dev/serial/by-id/…"),
    "baudrate": Field("int", 9600, minimum=50, maximum=4_000_000, help="2400 by default for M-Bus"),
    "parity": Field("str", "N", choices=("N", "E", "O")),
    "stopbits": Field("int", 1, choices=(1, 2)),
    "bytesize": Field("int", 8, choices=(7, 8)),
    "timeout": Field("duration", 1.0, help="reply timeout per request"),
}

BLE_FIELDS: Final[Mapping[str, Field]] = {
    "adapter": Field("str", "hci0"),
    "mode": Field("str", "passive", choices=("passive", "active")),
    "replay": Field("path", None, help="a capture file to read adverts from instead of the radio"),
    "replay_loop": Field("bool", False),
}

WMBUS_FIELDS: Final[Mapping[str, Field]] = {
    "id": Field("str", REQUIRED, help=_ID_HELP, pattern=ID_PATTERN),
    "port": Field("str", None, help="the stick's serial port, /dev/serial/by-id/…"),
    "dongle": Field("str", None, choices=("im871a", "amb8465"), help="the kind of stick"),
    "mode": Field("str", "T1", choices=("T1", "C1", "S1"), help="the radio mode listened in"),
    "replay": Field("path", None, help="a capture file to read telegrams from instead of a stick"),
    "replay_loop": Field("bool", False),
}
"""``[[wmbus]]``: a wireless M-Bus receiver (config.md, driver = "wmbus")."""

DEVICE_FIELDS: Final[Mapping[str, Field]] = {
    "id": Field("str", REQUIRED, help=_ID_HELP, pattern=ID_PATTERN),
    "driver": Field("str", REQUIRED),
    "interval": Field(
        "duration", 10.0, minimum=0.001, maximum=7 * 86400.0, help="default: the driver's"
    ),
    "enabled": Field("bool", True),
    "labels": Field("str_table", {}),
}
"""The keys every ``[[device]]`` has, besides its driver's own."""

_SERIAL_BAUDRATE_BY_DRIVER: Final = {"mbus": 2400}
"""A line used only by devices of this driver defaults to this baud rate."""

_MAIN_KEYS: Final = (
    "gateway",
    "mqtt",
    "buffer",
    "commands",
    "homeassistant",
    "serial",
    "ble",
    "wmbus",
    "device",
    "include",
)
_INCLUDED_KEYS: Final = ("serial", "device")
_ARRAYS_OF_TABLES: Final = ("serial", "wmbus", "device")

_MISPLACED: Final = {"include": '; "include" belongs at the top, before the first [table]'}
"""Hints for top-level keys written under a table."""

_INVALID: Final[Any] = object()

_INTEGER_RANGE: Final = (
    "integer out of range: TOML integers must fit in 64 bits"
    " (-9223372036854775808 to 9223372036854775807)"
)
_TEXT_LIMITS: Final = {
    ("[mqtt]", "topic_prefix"): 64,
    ("[mqtt]", "client_id"): 128,
    ("[mqtt]", "username"): 256,
    ("[homeassistant]", "discovery_prefix"): 128,
}
"""Strings shorter than MAX_TEXT: (table, key) → the most characters."""
_TOO_DEEP: Final = (
    f"nested more than {MAX_DEPTH} levels deep (tables, dotted keys, arrays and inline"
    " tables inside each other)"
)
_LONG_NUMBER: Final = re.compile(r"[0-9][0-9_]{4299,}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# --------------------------------------------------------------------------- messages


def _quote(text: str) -> str:
    return show_value(text)  # quoted as in TOML, a long string shortened


def _found(value: object) -> str:
    """What a TOML value is, for "found …"."""
    if isinstance(value, bool):
        return f"a boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"an integer {value}"
    if isinstance(value, float):
        return f"a float {value}"
    if isinstance(value, str):
        return f"a string {_quote(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime):
        return "a date-time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, time):
        return "a time"
    return type(value).__name__


def _closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``word`` was probably meant to be (same letters in another case first)."""
    options = list(candidates)
    for option in options:
        if option.lower() == word.lower():
            return option
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = _closest(word, candidates)
    return f"; did you mean {_quote(close)}?" if close is not None else ""


def _text_problem(text: str, *, secret: bool = False, limit: int = MAX_TEXT) -> str | None:
    """What makes ``text`` unfit for a config string, or None.

    No string may hold a NUL (a path with one crashes the OS call that gets it);
    other strings no control character either, and at most ``limit`` characters;
    a secret at most 65535 bytes of UTF-8 (the most an MQTT password may have).
    """
    if secret:
        if "\x00" in text:
            return "must not contain a NUL character"
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > _MAX_SECRET_BYTES:
            return f"too long: {size} bytes of UTF-8, at most {_MAX_SECRET_BYTES}"
        return None
    control = _CONTROL.search(text)
    if control is not None:
        char = control.group()
        what = "a NUL character" if char == "\x00" else f"a control character (U+{ord(char):04X})"
        return f"must not contain {what}; found one at character {control.start() + 1}"
    if len(text) > limit:
        return f"too long: {len(text)} characters, at most {limit}"
    return None


def _why(exc: OSError, path: Path) -> str:
    """Why ``path`` cannot be read, for "cannot read …: <why>"."""
    if isinstance(exc, UnsafeFileError):
        with contextlib.suppress(OSError, ValueError):
            if stat.S_ISDIR(os.stat(path).st_mode):
                return os.strerror(errno.EISDIR)
        return f"it {exc.strerror}"
    return exc.strerror or str(exc)


def _bound(kind: str, value: float) -> str:
    if kind == "duration" and 0 < value < 1:
        return f"{value * 1000:g}ms"
    if kind == "duration" and value >= 86400 and value % 86400 == 0:
        return f"{int(value // 86400)}d"
    text = str(int(value)) if float(value).is_integer() else str(value)
    return text + "s" if kind == "duration" else text


_EXPECTED: Final[Mapping[str, str]] = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "duration": 'a duration such as "10s" or a number of seconds',
    "size": 'a size such as "64MiB" or a number of bytes',
    "path": "a path (a string)",
    "int_or_str": "an integer or a string",
    "str_list": "an array of strings",
    "str_table": "a table of strings",
    "secret": "a string",
}


# --------------------------------------------------------------------------- loader


@dataclass(slots=True)
class _Source:
    """One TOML file read."""

    path: Path
    data: dict[str, Any]
    locator: Locator

    @property
    def base_dir(self) -> Path:
        """Where relative paths in this file lead from."""
        return self.path.absolute().parent


@dataclass(frozen=True, slots=True)
class _Place:
    """A table being checked: its file, its path there, and how to name it."""

    source: _Source
    path: KeyPath
    table: str  # "[mqtt]", "[[serial]]", "[[device.registers]]"
    note: str = ""  # ' (driver "modbus")'

    @property
    def label(self) -> str:
        return self.table + self.note

    def nested(self, name: str) -> str:
        return f"[[{self.table.strip('[]')}.{name}]]"


def load(
    path: Path,
    factories: Mapping[str, DriverFactory],
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read ``path`` (and its includes) and validate it; raise ConfigError.

    ``factories`` maps driver names to their factories; ``environ`` (default
    ``os.environ``) is where ``$STATE_DIRECTORY`` is looked up.
    """
    loader = _Loader(factories, os.environ if environ is None else environ)
    return loader.load(Path(path))


class _Loader:
    def __init__(self, factories: Mapping[str, DriverFactory], environ: Mapping[str, str]) -> None:
        self.factories = factories
        self.environ = environ
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.files: list[Path] = []
        self.file_order: dict[Path, int] = {}
        self.other_sources: dict[Path, _Source | None] = {}
        self.bytes_read = 0
        self.errors_left_out = 0

    # ---------------------------------------------------------------- reporting

    def error(self, file: Path, position: Position, message: str) -> None:
        if len(self.errors) < MAX_PROBLEMS:
            self.errors.append(Problem(file, position[0], position[1], message))
        else:
            self.errors_left_out += 1

    def warn(self, file: Path, position: Position, message: str) -> None:
        if len(self.warnings) < MAX_PROBLEMS:
            self.warnings.append(Problem(file, position[0], position[1], "warning: " + message))

    def problems(self, main: Path) -> list[Problem]:
        """The errors in file order, and a last line counting those left out."""
        found = self.in_order(self.errors)
        if self.errors_left_out:
            found.append(
                Problem(
                    main,
                    1,
                    1,
                    f"{self.errors_left_out} more errors not listed (only the first"
                    f" {MAX_PROBLEMS} found are)",
                )
            )
        return found

    def at_key(self, place: _Place, path: KeyPath, message: str) -> None:
        self.error(place.source.path, place.source.locator.key(place.path + path), message)

    def at_value(self, place: _Place, path: KeyPath, message: str) -> None:
        self.error(place.source.path, place.source.locator.value(place.path + path), message)

    def at_table(self, place: _Place, message: str) -> None:
        self.error(place.source.path, place.source.locator.table(place.path), message)

    def in_order(self, problems: list[Problem]) -> list[Problem]:
        last = len(self.file_order)
        return sorted(
            problems,
            key=lambda p: (
                self.file_order.get(p.file, last),
                str(p.file),
                p.line,
                p.col,
                p.message,
            ),
        )

    # ---------------------------------------------------------------- files

    def read(self, path: Path) -> _Source | None:
        """Parse one TOML file; report why not and return None if it cannot be."""
        self.file_order.setdefault(path, len(self.file_order))
        try:
            raw = read_regular(path, max_bytes=CONFIG_MAX_BYTES)
        except OSError as exc:
            self.error(path, (1, 1), f"cannot read the file: {_why(exc, path)}")
            return None
        self.bytes_read += len(raw)
        if self.bytes_read > CONFIG_TOTAL_MAX_BYTES:
            self.error(
                path,
                (1, 1),
                f"not read: the config files hold more than {CONFIG_TOTAL_MAX_BYTES} bytes"
                " (2 MiB) together",
            )
            return None
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line_start = raw.rfind(b"\n", 0, exc.start) + 1
            column = len(raw[line_start : exc.start].decode("utf-8", "replace")) + 1
            line = raw.count(b"\n", 0, exc.start) + 1
            self.error(path, (line, column), f"not UTF-8 text (byte 0x{raw[exc.start]:02X})")
            return None
        self.files.append(path)
        locator = locate(text, max_depth=MAX_DEPTH)
        if locator.too_deep is not None:  # tomllib would take time and stack in proportion
            self.error(path, locator.position(locator.too_deep), _TOO_DEEP)
            return None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            self.syntax_error(path, text, locator, str(exc))
            return None
        except ValueError:  # int() refuses more than 4300 digits
            long_number = _LONG_NUMBER.search(text)
            position = locator.position(long_number.start()) if long_number else (1, 1)
            self.error(path, position, _INTEGER_RANGE)
            return None
        except RecursionError:  # missed by the scan above (it stopped early): no position
            self.error(path, (1, 1), _TOO_DEEP)
            return None
        if not self.integers_fit(path, data, locator):
            return None
        return _Source(path, data, locator)

    def integers_fit(self, path: Path, data: dict[str, Any], locator: Locator) -> bool:
        """Report every integer beyond 64 bits (TOML 1.0 says a parser must refuse them)."""
        fit = True
        stack: list[tuple[object, KeyPath]] = [(data, ())]
        while stack:
            value, where = stack.pop()
            if isinstance(value, dict):
                stack.extend((v, (*where, k)) for k, v in value.items())
            elif isinstance(value, list):
                stack.extend((v, (*where, i)) for i, v in enumerate(value))
            elif isinstance(value, int) and value not in _INT64:
                self.error(path, locator.value(where), _INTEGER_RANGE)
                fit = False
        return fit

    def syntax_error(self, path: Path, text: str, locator: Locator, message: str) -> None:
        """Turn tomllib's "… (at line L, column C)" into FILE:L:C: …."""
        match = re.fullmatch(
            r"(?P<what>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)", message
        )
        if match:
            what = match["what"]
            position = (int(match["line"]), int(match["col"]))
        else:
            what = message.removesuffix(" (at end of document)")
            position = locator.position(len(text.rstrip()))
            if what != message:
                what += " at the end of the file"
        if what.startswith("Cannot overwrite a value") and locator.duplicates:
            duplicate = locator.duplicates[0]
            what = f"duplicate key {_quote(str(duplicate.path[-1]))}"
            what += f" (first set at line {duplicate.first[0]})"
            position = duplicate.second
        self.error(path, position, what[:1].lower() + what[1:])

    def other_source(self, path: Path) -> _Source | None:
        """A file a driver read (a profile), to place its issues."""
        if path not in self.other_sources:
            try:
                text = read_regular(path, max_bytes=CONFIG_MAX_BYTES).decode("utf-8-sig")
            except (OSError, ValueError):  # UnicodeDecodeError, a NUL in the path
                self.other_sources[path] = None
            else:
                locator = locate(text, max_depth=MAX_DEPTH)
                data: dict[str, Any] = {}
                if locator.too_deep is None:
                    with contextlib.suppress(ValueError, RecursionError):  # TOMLDecodeError too
                        data = tomllib.loads(text)
                self.other_sources[path] = _Source(path, data, locator)
        return self.other_sources[path]

    # ---------------------------------------------------------------- the walk

    def load(self, path: Path) -> Config:
        main = self.read(path)
        if main is None:
            raise ConfigError(self.problems(path), count=len(self.errors) + self.errors_left_out)
        self.check_top_level(main, _MAIN_KEYS, "")
        sources = [main, *self.includes(main)]

        gateway = self.gateway(main)
        mqtt = self.mqtt(main, gateway.id if gateway else "")
        buffer, _ = self.section(main, "buffer", BUFFER_FIELDS)
        commands, _ = self.section(main, "commands", COMMANDS_FIELDS)
        homeassistant, _ = self.section(main, "homeassistant", HOMEASSISTANT_FIELDS)
        ble = self.ble(main)
        serial_tables = [t for s in sources for t in self.array_of_tables(s, "serial")]
        device_tables = [t for s in sources for t in self.array_of_tables(s, "device")]
        serial = self.serial_lines(serial_tables, device_tables)
        devices = self.devices(device_tables, serial)
        wmbus = self.wmbus_receivers(main, device_tables, devices)

        warnings = self.in_order(self.warnings)
        if self.errors:
            raise ConfigError(
                self.problems(path), warnings, count=len(self.errors) + self.errors_left_out
            )
        assert gateway is not None
        assert mqtt is not None
        return Config(
            path=path,
            gateway=gateway,
            mqtt=mqtt,
            buffer=BufferSettings(**buffer),
            serial=serial,
            ble=ble,
            devices=tuple(d for d in devices if d is not None),
            warnings=tuple(warnings),
            files=tuple(self.files),
            commands=CommandSettings(**commands),
            homeassistant=HomeAssistantSettings(**homeassistant),
            wmbus=wmbus,
        )

    def check_top_level(self, source: _Source, allowed: Sequence[str], where: str) -> None:
        for key, value in source.data.items():
            if key in allowed:
                continue
            position = source.locator.key((key,))
            if where and key in _MAIN_KEYS:
                only = " and ".join(_TOP_LEVEL_NAMES[k] for k in allowed)
                shown = _written(key, value)[1]
                self.error(
                    source.path, position, f"{shown} is not allowed in {where} (only {only})"
                )
                continue
            what, shown = _written(key, value)
            close = _closest(key, allowed)
            hint = f"; did you mean {_TOP_LEVEL_NAMES[close]}?" if close is not None else ""
            self.error(source.path, position, f"unknown {what} {shown}{hint}")

    def includes(self, main: _Source) -> list[_Source]:
        raw = main.data.get("include")
        if raw is None:
            return []
        place = _Place(main, (), "the top level")
        patterns = self.typed(raw, Field("str_list"), place, ("include",), "include")
        if patterns is _INVALID:
            return []
        seen = {os.path.realpath(main.path)}  # Path.resolve() raises on a symlink loop
        included: list[_Source] = []
        base = main.path.parent
        walk = _IncludeGlob(INCLUDE_MAX_ENTRIES)  # one budget for every pattern
        for index, pattern in enumerate(patterns):
            position = main.locator.value(("include", index))
            try:
                matches = walk.files(base, pattern)
            except _TooWide:
                self.error(
                    main.path,
                    position,
                    f'"include[{index}]": {_quote(pattern)} looks through too many directory'
                    f" entries (the include globs may look through {INCLUDE_MAX_ENTRIES} in"
                    ' all); name the directories to include from, e.g. "devices.d/*.toml"',
                )
                break
            if not matches:
                self.warn(main.path, position, f"include {_quote(pattern)} matches no file")
            for match in matches:
                real = os.path.realpath(match)
                if real in seen:
                    continue
                seen.add(real)
                source = self.read(match)
                if source is not None:
                    self.check_top_level(source, _INCLUDED_KEYS, "an included file")
                    included.append(source)
        return included

    def array_of_tables(self, source: _Source, key: str) -> list[tuple[_Place, dict[str, Any]]]:
        raw = source.data.get(key)
        if raw is None:
            return []
        place = _Place(source, (), "the top level")
        if not isinstance(raw, list):
            self.at_value(
                place,
                (key,),
                f'"{key}": expected an array of tables ([[{key}]]), found {_found(raw)}',
            )
            return []
        tables: list[tuple[_Place, dict[str, Any]]] = []
        for index, item in enumerate(raw):
            if isinstance(item, dict):
                tables.append((_Place(source, (key, index), f"[[{key}]]"), item))
            else:
                self.at_value(
                    place, (key, index), f'"{key}[{index}]": expected a table, found {_found(item)}'
                )
        return tables

    def section(
        self, source: _Source, key: str, fields: Mapping[str, Field]
    ) -> tuple[dict[str, Any], bool]:
        """A single ``[table]`` of the main file: its valid values and whether all were."""
        raw = source.data.get(key, {})
        if not isinstance(raw, dict):
            self.at_value(
                _Place(source, (), ""), (key,), f'"{key}": expected a table, found {_found(raw)}'
            )
            return {}, False
        return self.check_table(raw, fields, _Place(source, (key,), f"[{key}]"))

    # ---------------------------------------------------------------- sections

    def gateway(self, main: _Source) -> GatewaySettings | None:
        if "gateway" not in main.data:
            self.error(main.path, (1, 1), 'missing [gateway] table (it needs at least id = "…")')
            return None
        values, ok = self.section(main, "gateway", GATEWAY_FIELDS)
        if not ok:
            return None
        if values["data_dir"] is None:
            state_dir = self.environ.get("STATE_DIRECTORY", "").split(":")[0]
            values["data_dir"] = Path(state_dir) if state_dir else main.base_dir / "var"
        return GatewaySettings(**values)

    def mqtt(self, main: _Source, gateway_id: str) -> MqttSettings | None:
        table = main.data.get("mqtt")
        fields = MQTT_FIELDS
        if isinstance(table, dict) and isinstance(table.get("url"), list):
            # A list of urls: the nodes of a cluster, tried in turn.
            fields = {**MQTT_FIELDS, "url": replace(MQTT_FIELDS["url"], kind="str_list")}
        values, ok = self.section(main, "mqtt", fields)
        place = _Place(main, ("mqtt",), "[mqtt]")
        host, port, tls = "", 0, False
        urls: tuple[str, ...] = ()
        if isinstance(values.get("url"), list):
            urls = tuple(values["url"])
            if not urls:
                self.at_value(place, ("url",), '"url": expected at least one url, found []')
                return None
            values["url"] = urls[0]
        for index, url in enumerate(urls or (values.get("url"),)):
            if url is None:
                continue
            path: KeyPath = ("url", index) if urls else ("url",)
            try:
                parsed = _parse_mqtt_url(url)
            except ValueError as exc:
                self.at_value(place, path, f'"url": {exc}')
                ok = False
                continue
            if index == 0:
                host, port, tls = parsed
            elif parsed[2] != tls:
                self.at_value(
                    place, path, '"url": every url of the list must be mqtt:// or every mqtts://'
                )
                ok = False
        for key in ("ca_file", "cert_file", "key_file"):
            file = values.get(key)
            if file is None:
                continue
            if not tls and host:
                self.warn(
                    main.path,
                    main.locator.key(("mqtt", key)),
                    f'"{key}" is not used: url {_quote(values["url"])} is not TLS (mqtts://)',
                )
            ok &= self.check_readable(place, key, file)
        if values.get("key_file") is not None and "cert_file" not in main.data.get("mqtt", {}):
            self.at_key(place, ("key_file",), '"key_file" needs "cert_file"')
            ok = False
        ok &= self.mqtt_strings(place, values)
        if not ok:
            return None
        if values["client_id"] is None:
            values["client_id"] = f"citygate-{gateway_id}"
        return MqttSettings(
            host=host, port=port, tls=tls, urls=urls if len(urls) > 1 else (), **values
        )

    def mqtt_strings(self, place: _Place, values: Mapping[str, Any]) -> bool:
        """What MQTT says about ``topic_prefix`` besides its Field and length."""
        ok = True
        prefix = values.get("topic_prefix")
        if isinstance(prefix, str) and prefix.startswith("$"):
            self.at_value(
                place,
                ("topic_prefix",),
                '"topic_prefix": must not start with "$" (topics starting with "$" are the'
                f" broker's own, like $SYS), found {show_value(prefix)}",
            )
            ok = False
        return ok

    def ble(self, main: _Source) -> BleSettings | None:
        if "ble" not in main.data:
            return None
        values, ok = self.section(main, "ble", BLE_FIELDS)
        if values.get("replay") is not None:
            ok &= self.check_readable(_Place(main, ("ble",), "[ble]"), "replay", values["replay"])
        return BleSettings(**values) if ok else None

    def wmbus_receivers(
        self,
        main: _Source,
        device_tables: list[tuple[_Place, dict[str, Any]]],
        devices: Sequence[DeviceConfig | None],
    ) -> dict[str, WmbusSettings]:
        """Every ``[[wmbus]]`` (exactly one of port / replay; dongle with port), and
        that each wmbus device names one."""
        receivers: dict[str, WmbusSettings] = {}
        first_seen: dict[str, str] = {}
        for place, table in self.array_of_tables(main, "wmbus"):
            values, ok = self.check_table(table, WMBUS_FIELDS, place)
            receiver_id = values.get("id")
            if receiver_id is None or not self.unique(
                "wmbus receiver", receiver_id, place, first_seen
            ):
                continue
            port, replay = values.get("port"), values.get("replay")
            if (port is None) == (replay is None):
                self.at_table(
                    place, f'[[wmbus]] "{receiver_id}": give exactly one of "port" or "replay"'
                )
                ok = False
            elif port is not None and values.get("dongle") is None:
                self.at_table(
                    place,
                    f'[[wmbus]] "{receiver_id}": missing required key "dongle" with "port" '
                    '("im871a" or "amb8465")',
                )
                ok = False
            if replay is not None:
                ok &= self.check_readable(place, "replay", replay)
            defaults = {k: f.default for k, f in WMBUS_FIELDS.items() if f.default is not REQUIRED}
            receivers[receiver_id] = WmbusSettings(**{**defaults, **values})
        for (place, _table), device in zip(device_tables, devices, strict=True):
            if device is None or device.driver != "wmbus":
                continue
            name = device.options.get("receiver")
            if isinstance(name, str) and name not in receivers:
                known = ", ".join(_quote(k) for k in receivers) or "none is defined"
                self.at_value(
                    place,
                    ("receiver",),
                    f'"receiver": no [[wmbus]] receiver {_quote(name)}'
                    f"{_did_you_mean(name, receivers)} (defined: {known})",
                )
        return receivers

    def check_readable(self, place: _Place, key: str, path: Path) -> bool:
        """Whether ``path`` is a regular file this process may open (reported if not)."""
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise UnsafeFileError(0, "is not a regular file", str(path))
            finally:
                os.close(fd)
        except OSError as exc:
            self.at_value(place, (key,), f'"{key}": cannot read {path}: {_why(exc, path)}')
            return False
        return True

    def serial_lines(
        self,
        serial_tables: list[tuple[_Place, dict[str, Any]]],
        device_tables: list[tuple[_Place, dict[str, Any]]],
    ) -> dict[str, SerialLineConfig]:
        """Every ``[[serial]]``; a line with errors is kept (with defaults where it
        is wrong) so that devices naming it do not report it as missing."""
        drivers_by_line: dict[str, set[str]] = {}
        first_driver: dict[str, str] = {}
        for place, table in device_tables:
            line, driver = table.get("serial"), table.get("driver")
            if isinstance(line, str) and isinstance(driver, str):
                drivers_by_line.setdefault(line, set()).add(driver)
                first = first_driver.setdefault(line, driver)
                if driver != first:
                    self.at_value(
                        place,
                        ("serial",),
                        f"serial line {_quote(line)} carries {first} devices; a line carries one "
                        f"protocol, so this {driver} device needs a line of its own",
                    )
        lines: dict[str, SerialLineConfig] = {}
        first_seen: dict[str, str] = {}
        for place, table in serial_tables:
            values, _ = self.check_table(table, SERIAL_FIELDS, place)
            line_id = values.get("id")
            if line_id is None:
                continue
            if not self.unique("serial line", line_id, place, first_seen):
                continue
            if "baudrate" not in table:
                users = drivers_by_line.get(line_id, set())
                if len(users) == 1:
                    (driver,) = users
                    values["baudrate"] = _SERIAL_BAUDRATE_BY_DRIVER.get(driver, values["baudrate"])
            defaults = {k: f.default for k, f in SERIAL_FIELDS.items() if f.default is not REQUIRED}
            lines[line_id] = SerialLineConfig(**{"port": "", **defaults, **values})
        return lines

    def unique(self, kind: str, ident: str, place: _Place, first_seen: dict[str, str]) -> bool:
        """Record an id; report it (and return False) if it was seen before."""
        line, col = place.source.locator.value((*place.path, "id"))
        first = first_seen.get(ident)
        if first is not None:
            self.error(
                place.source.path,
                (line, col),
                f"duplicate {kind} id {_quote(ident)} (first at {first})",
            )
            return False
        first_seen[ident] = f"{place.source.path}:{line}"
        return True

    def devices(
        self,
        device_tables: list[tuple[_Place, dict[str, Any]]],
        serial: Mapping[str, SerialLineConfig],
    ) -> list[DeviceConfig | None]:
        first_seen: dict[str, str] = {}
        return [self.device(place, table, serial, first_seen) for place, table in device_tables]

    def device(
        self,
        place: _Place,
        table: dict[str, Any],
        serial: Mapping[str, SerialLineConfig],
        first_seen: dict[str, str],
    ) -> DeviceConfig | None:
        name = table.get("driver")
        factory = self.factories.get(name) if isinstance(name, str) else None
        fields = dict(DEVICE_FIELDS)
        own_fields: dict[str, Field] = {}
        if factory is not None:
            fields["interval"] = replace(fields["interval"], default=factory.default_interval)
            own_fields = {k: f for k, f in factory.fields.items() if k not in DEVICE_FIELDS}
            fields.update(own_fields)
            place = replace(place, note=f' (driver "{name}")')
        values, ok = self.check_table(table, fields, place, strict=factory is not None)
        if isinstance(name, str) and name and factory is None:
            installed = ", ".join(sorted(self.factories)) or "none"
            self.at_value(
                place,
                ("driver",),
                f"unknown driver {_quote(name)}{_did_you_mean(name, self.factories)}"
                f" (installed: {installed})",
            )
        device_id = values.get("id")
        if device_id is not None and not self.unique("device", device_id, place, first_seen):
            ok = False
        if not ok or factory is None:
            return None
        options = {k: values[k] for k in own_fields}
        context = DeviceContext(
            device_id=values["id"],
            interval=values["interval"],
            config_dir=place.source.base_dir,
            serial_lines=serial,
            labels=values["labels"],
        )
        try:
            driver_config = factory.configure(options, context)
        except DriverConfigError as exc:
            for issue in exc.issues:
                self.place_issue(issue, place, table, own_fields)
            if not exc.issues:
                self.at_table(place, f'driver "{name}" rejects this device: {exc}')
            return None
        except Exception as exc:  # a plugin's bug must not hide the other errors
            self.at_table(place, f'driver "{name}" failed to check this device: {exc!r}')
            return None
        return DeviceConfig(
            id=values["id"],
            driver=values["driver"],
            interval=values["interval"],
            enabled=values["enabled"],
            labels=values["labels"],
            options=options,
            driver_config=driver_config,
            source=place.source.path,
        )

    def place_issue(
        self,
        issue: ConfigIssue,
        place: _Place,
        table: Mapping[str, Any],
        fields: Mapping[str, Field],
    ) -> None:
        """Put a driver's ConfigIssue on its key or value."""
        if issue.file is not None:
            source = self.other_source(issue.file)
            base: KeyPath = ()
        else:
            source = place.source
            base = place.path
        if source is None:
            self.error(issue.file or place.source.path, (1, 1), issue.message)
            return
        path, message = issue.path, issue.message
        if path and isinstance(path[0], str) and issue.file is None:
            # An issue about a secret read from KEY_file belongs on KEY_file.
            secret = fields.get(path[0])
            if secret is not None and secret.kind == "secret" and path[0] not in table:
                file_key = f"{path[0]}_file"
                path = (file_key, *path[1:])
                message += f" (read from {place.source.base_dir / str(table.get(file_key))})"
        if not path:
            position = source.locator.table(base)
        elif issue.at == "key":
            position = source.locator.key(base + path)
        else:
            position = source.locator.value(base + path)
        self.error(source.path, position, message)

    # ---------------------------------------------------------------- the schema walker

    def check_table(
        self,
        table: Mapping[str, Any],
        fields: Mapping[str, Field],
        place: _Place,
        *,
        strict: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """Type ``table`` by ``fields``: the valid values (defaults filled in) and
        whether every key was valid. ``strict=False`` lets unknown keys pass."""
        ok = True
        known = list(fields) + [f"{k}_file" for k, f in fields.items() if f.kind == "secret"]
        if strict:
            for key in table:
                if key not in known:
                    hint = _MISPLACED.get(key) or _did_you_mean(key, known)
                    self.at_key(place, (key,), f"unknown key {_quote(key)} in {place.label}{hint}")
                    ok = False
        values: dict[str, Any] = {}
        for name, spec in fields.items():
            if spec.kind == "secret":
                value = self.secret(table, name, spec, place)
            elif name in table:
                value = self.typed(table[name], spec, place, (name,), name)
            elif spec.default is REQUIRED:
                self.at_table(place, f"missing required key {_quote(name)} in {place.label}")
                value = _INVALID
            else:
                value = copy.deepcopy(spec.default)
            if value is _INVALID:
                ok = False
            else:
                values[name] = value
        return values, ok

    def typed(self, raw: Any, spec: Field, place: _Place, path: KeyPath, name: str) -> Any:
        """``raw`` typed by ``spec``, or _INVALID after reporting why not."""
        kind = spec.kind

        def expected(what: str | None = None) -> Any:
            self.at_value(
                place, path, f'"{name}": expected {what or _EXPECTED[kind]}, found {_found(raw)}'
            )
            return _INVALID

        def bad(message: str) -> Any:
            self.at_value(place, path, f'"{name}": {message}')
            return _INVALID

        value: Any
        if kind in ("str", "secret"):
            if not isinstance(raw, str):
                return expected()
            limit = _TEXT_LIMITS.get((place.table, name), MAX_TEXT)
            problem = _text_problem(raw, secret=kind == "secret", limit=limit)
            if problem is not None:
                return bad(problem)
            if spec.default is REQUIRED and not raw.strip():
                return bad("must not be empty")
            if spec.pattern is not None and not re.fullmatch(spec.pattern, raw):
                wanted = spec.help or f"text matching {spec.pattern}"
                return bad(f"expected {wanted}, found {show_value(raw)}")
            value = raw
        elif kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, int):
                return expected()
            value = raw
        elif kind == "float":
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                return expected()
            if not math.isfinite(raw):
                return expected("a finite number")
            value = float(raw)
        elif kind == "bool":
            if not isinstance(raw, bool):
                return expected()
            value = raw
        elif kind in ("duration", "size"):
            if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                return expected()
            try:
                value = parse_duration(raw) if kind == "duration" else parse_size(raw)
            except ValueError as exc:
                return bad(str(exc))
            if (spec.minimum is None or spec.minimum > 0) and value <= 0:
                return bad(f"must be more than 0, found {show_value(raw)}")
        elif kind == "path":
            if not isinstance(raw, str):
                return expected()
            problem = _text_problem(raw)
            if problem is not None:
                return bad(problem)
            if not raw.strip():
                return bad("must not be empty")
            value = place.source.base_dir / raw
        elif kind == "int_or_str":
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                return expected()
            value = raw
        elif kind == "str_list":
            if not isinstance(raw, list):
                return expected()
            item_spec = replace(spec, kind="str", default=None)
            items = [
                self.typed(item, item_spec, place, (*path, i), f"{name}[{i}]")
                for i, item in enumerate(raw)
            ]
            return _INVALID if _INVALID in items else items
        elif kind == "str_table":
            if not isinstance(raw, dict):
                return expected()
            item_spec = Field("str")
            keys_ok = True
            for key in raw:
                problem = _text_problem(key)
                if problem is not None:
                    self.at_key(place, (*path, key), f'"{name}": key {_quote(key)} {problem}')
                    keys_ok = False
            entries = {
                key: self.typed(item, item_spec, place, (*path, key), f"{name}.{key}")
                for key, item in raw.items()
            }
            return _INVALID if not keys_ok or _INVALID in entries.values() else entries
        elif kind == "table_list":
            label = place.nested(name)
            if not isinstance(raw, list):
                return expected(f"an array of tables ({label})")
            rows: list[dict[str, Any]] = []
            ok = True
            for index, item in enumerate(raw):
                if not isinstance(item, dict):
                    self.at_value(
                        place,
                        (*path, index),
                        f'"{name}[{index}]": expected a table, found {_found(item)}',
                    )
                    ok = False
                    continue
                row_place = _Place(place.source, (*place.path, *path, index), label)
                row, row_ok = self.check_table(item, spec.fields or {}, row_place)
                rows.append(row)
                ok &= row_ok
            return rows if ok else _INVALID
        else:
            return bad(f"unknown kind of value {kind!r} (a driver bug)")
        return self.in_range(value, raw, spec, bad)

    def in_range(self, value: Any, raw: Any, spec: Field, bad: Any) -> Any:
        if spec.choices is not None and value not in spec.choices:
            hint = _did_you_mean(raw, map(str, spec.choices)) if isinstance(raw, str) else ""
            return bad(f"expected {one_of(spec.choices)}, found {show_value(raw)}{hint}")
        low, high = spec.minimum, spec.maximum
        if isinstance(value, int | float) and not isinstance(value, bool):
            too_low = low is not None and value < low
            too_high = high is not None and value > high
            if too_low or too_high:
                if low is not None and high is not None:
                    limits = f"from {_bound(spec.kind, low)} to {_bound(spec.kind, high)}"
                elif low is not None:
                    limits = f"at least {_bound(spec.kind, low)}"
                else:
                    assert high is not None
                    limits = f"at most {_bound(spec.kind, high)}"
                return bad(f"expected {limits}, found {show_value(raw)}")
        return value

    def secret(self, table: Mapping[str, Any], name: str, spec: Field, place: _Place) -> Any:
        """A secret given inline as NAME or in the file named by NAME_file."""
        file_key = f"{name}_file"
        if name in table and file_key in table:
            later = max((place.source.locator.key((*place.path, k)), k) for k in (name, file_key))
            self.error(place.source.path, later[0], f'give "{name}" or "{file_key}", not both')
            return _INVALID
        if name in table:
            value = self.typed(table[name], spec, place, (name,), name)
            if value is not _INVALID:
                self.warn(
                    place.source.path,
                    place.source.locator.key((*place.path, name)),
                    f'"{name}" is written in the config; put it in a file named by "{file_key}"',
                )
            return value
        if file_key not in table:
            if spec.default is REQUIRED:
                self.at_table(
                    place, f'missing required key "{name}" (or "{file_key}") in {place.label}'
                )
                return _INVALID
            return copy.deepcopy(spec.default)
        path = self.typed(table[file_key], Field("path"), place, (file_key,), file_key)
        if path is _INVALID:
            return _INVALID
        position = place.source.locator.value((*place.path, file_key))
        try:
            content = read_regular(path, max_bytes=SECRET_MAX_BYTES)
            mode = path.stat().st_mode
        except OSError as exc:
            self.error(
                place.source.path,
                position,
                f'"{file_key}": cannot read {path}: {_why(exc, path)}',
            )
            return _INVALID
        try:
            secret = content.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            self.error(place.source.path, position, f'"{file_key}": {path} is not UTF-8 text')
            return _INVALID
        if not secret:
            self.error(place.source.path, position, f'"{file_key}": {path} is empty')
            return _INVALID
        problem = _text_problem(secret, secret=True)
        if problem is not None:
            self.error(place.source.path, position, f'"{file_key}": {path}: {problem}')
            return _INVALID
        if mode & 0o077:
            self.warn(
                place.source.path,
                position,
                f'"{file_key}": {path} is open to group or others (mode {mode & 0o777:04o});'
                " chmod 600 it",
            )
        return secret


_TOP_LEVEL_NAMES: Final = {
    "gateway": "[gateway]",
    "mqtt": "[mqtt]",
    "buffer": "[buffer]",
    "commands": "[commands]",
    "homeassistant": "[homeassistant]",
    "serial": "[[serial]]",
    "ble": "[ble]",
    "wmbus": "[[wmbus]]",
    "device": "[[device]]",
    "include": '"include"',
}


def _written(key: str, value: object) -> tuple[str, str]:
    """How a top-level key was written: ("table", "[x]"), ("table", "[[x]]") or ("key", '"x"')."""
    if isinstance(value, dict):
        return "table", f"[{key}]"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "table", f"[[{key}]]"
    return "key", _quote(key)


def _parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``."""
    form = "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{form}, found {_quote(url)}")
    if parts.username is not None or parts.password is not None:
        raise ValueError('put the user name and password in "username" and "password_file"')
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{form}, found a bad port in {_quote(url)}") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{form}, found {_quote(url)}")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port if port is not None else (8883 if tls else 1883), tls


class _TooWide(Exception):
    """An include glob looks through more directory entries than allowed."""


class _IncludeGlob:
    """Expand an include glob as ``glob.glob(recursive=True)`` does, with a budget.

    A name starting with "." matches only a pattern part starting with "."; a
    part ``**`` matches any number of directories (symbolic links to directories
    are not followed there). Every directory entry looked at counts against
    ``limit``; past it, :class:`_TooWide` is raised.
    """

    def __init__(self, limit: int) -> None:
        self.left = limit

    def files(self, base: Path, pattern: str) -> list[Path]:
        """The regular files ``pattern`` (relative to ``base`` unless absolute) matches, sorted."""
        parts = [p for p in pattern.split(os.sep) if p not in ("", ".")]
        current = [Path(os.sep) if os.path.isabs(pattern) else base]
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "**":
                current = list(dict.fromkeys(d for c in current for d in self.below(c)))
                if not last:
                    continue
            wanted = "*" if part == "**" else part  # "dir/**": every file at any depth
            if not glob.has_magic(wanted):
                current = [d / wanted for d in current if _is(d / wanted, regular=last)]
                continue
            hidden_too = wanted.startswith(".")
            current = [
                d / entry.name
                for d in current
                for entry in self.entries(d)
                if (hidden_too or not entry.name.startswith("."))
                and fnmatch.fnmatchcase(entry.name, wanted)
                and _entry_is(entry, regular=last)
            ]
        return sorted(set(current)) if parts else []

    def entries(self, directory: Path) -> list[os.DirEntry[str]]:
        found: list[os.DirEntry[str]] = []
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    self.left -= 1
                    if self.left < 0:
                        raise _TooWide
                    found.append(entry)
        except (OSError, ValueError):  # missing, not a directory, not allowed: nothing there
            return []
        return found

    def below(self, directory: Path) -> list[Path]:
        """``directory`` and every directory under it (not hidden, not through a symlink)."""
        found = [directory]
        pending = [directory]
        while pending:
            for entry in self.entries(pending.pop()):
                if not entry.name.startswith(".") and _entry_is(entry, regular=False, follow=False):
                    found.append(Path(entry.path))
                    pending.append(Path(entry.path))
        return found


def _is(path: Path, *, regular: bool) -> bool:
    """Whether ``path`` is a regular file (or a directory), following symlinks."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(mode) if regular else stat.S_ISDIR(mode)


def _entry_is(entry: os.DirEntry[str], *, regular: bool, follow: bool = True) -> bool:
    """Whether ``entry`` is a regular file (or a directory)."""
    try:
        return (
            entry.is_file(follow_symlinks=follow)
            if regular
            else entry.is_dir(follow_symlinks=follow)
        )
    except OSError:
        return False
