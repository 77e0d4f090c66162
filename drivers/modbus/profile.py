"""Register tables and meter profiles.

A register table (``[[registers]]`` in a profile file, ``[[device.registers]]``
in gateway.toml) has the keys of :data:`REGISTER_FIELDS`. A profile file is a
``[profile]`` table (name, manufacturer, model, description, source, and the
optional read limits max_registers / max_gap the meter's document states) and
one ``[[registers]]`` table per value.

Built-in profiles are found by name in the repository's ``config/profiles/``
and then in ``<sys.prefix>/share/citygate/profiles/``; any other profile is a
path, relative to the directory of the config file that names it.

Errors are :class:`~citygate.drivers.api.ConfigIssue` lists: issues inside a profile file
carry ``file=`` and a path from that file's top, e.g. ``("registers", 3, "unit")``.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from citygate.drivers.api import (
    CONVERSIONS,
    REQUIRED,
    ConfigIssue,
    DriverConfigError,
    Field,
    UnsafeFileError,
    known_units,
    one_of,
    read_regular,
    show_value,
)
from citygate.drivers.modbus.decode import (
    BIT_TABLES,
    BYTE_ORDERS,
    DATA_TYPES,
    TABLES,
    TEXT_TYPES,
    ByteOrder,
    DataType,
    RegisterSpec,
    Table,
    register_width,
)

#: The largest profile file read (the biggest built-in one is a few KiB).
PROFILE_MAX_BYTES = 1024 * 1024

__all__ = [
    "IDENTITY_NAMES",
    "NAME_PATTERN",
    "PROFILE_FIELDS",
    "PROFILE_MAX_BYTES",
    "REGISTER_FIELDS",
    "WRITABLE_TABLES",
    "Profile",
    "builtin_profile_dirs",
    "builtin_profiles",
    "close_matches",
    "find_profile",
    "is_identity",
    "load_profile",
    "merge_registers",
    "parse_registers",
]

NAME_PATTERN: Final = r"[a-z][a-z0-9_]*"
"""Quantity names are snake_case (quantities.md)."""

IDENTITY_NAMES: Final[tuple[str, ...]] = (
    "manufacturer",
    "model",
    "serial_number",
    "firmware_version",
)
"""Register names that identify the meter: read once when the device comes online
(again after a reconnect), reported in its status as ``"meter"``, never sampled."""

MAX_STRING_REGISTERS: Final = 125
"""The most registers a ``string`` may span: one read (FC 03/04)."""


def is_identity(spec: RegisterSpec) -> bool:
    """True for an identity register (:data:`IDENTITY_NAMES`)."""
    return spec.name in IDENTITY_NAMES


REGISTER_FIELDS: Final[dict[str, Field]] = {
    "name": Field(
        "str",
        REQUIRED,
        "a quantity name in snake_case (quantities.md)",
        pattern=NAME_PATTERN,
    ),
    "address": Field(
        "int", REQUIRED, "0-based protocol address (hex allowed: 0x0156)", minimum=0, maximum=65535
    ),
    "table": Field("str", "holding", "input, holding, coil or discrete", choices=TABLES),
    "type": Field(
        "str",
        None,
        "value type; default uint16 on input/holding, bool on coil/discrete",
        choices=DATA_TYPES,
    ),
    "count": Field(
        "int",
        None,
        "for type string only: registers it spans (2 ASCII bytes each)",
        minimum=1,
        maximum=MAX_STRING_REGISTERS,
    ),
    "order": Field(
        "str", None, "byte/word order of register values; default ABCD", choices=BYTE_ORDERS
    ),
    "scale": Field("float", 1.0, "value = raw × scale + offset"),
    "offset": Field("float", 0.0, "value = raw × scale + offset"),
    "unit": Field("str", None, "unit of the scaled value (quantities.md)"),
    "writable": Field(
        "bool", False, "the write command may set it (holding registers and coils only)"
    ),
    "min": Field("float", None, "with writable: the least value a write may set, in unit"),
    "max": Field("float", None, "with writable: the largest value a write may set, in unit"),
}
"""The keys of one register table."""

PROFILE_FIELDS: Final[dict[str, Field]] = {
    "name": Field("str", REQUIRED, "profile name; a built-in's file is <name>.toml"),
    "manufacturer": Field("str", None),
    "model": Field("str", None),
    "description": Field("str", None),
    "source": Field("str", REQUIRED, "the document and version the map was written from"),
    "max_registers": Field(
        "int", None, "most registers the meter answers in one read", minimum=1, maximum=125
    ),
    "max_gap": Field("int", None, "most unused registers one read may bridge", minimum=0),
}
"""The keys of a profile file's ``[profile]`` table."""

WRITABLE_TABLES: Final[frozenset[Table]] = frozenset({"holding", "coil"})
"""The tables a register marked ``writable`` may be in."""

_BUILTIN_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Profile:
    """A meter profile file, validated."""

    name: str
    path: Path
    source: str
    registers: tuple[RegisterSpec, ...]
    manufacturer: str | None = None
    model: str | None = None
    description: str | None = None
    max_registers: int | None = None
    max_gap: int | None = None


def close_matches(word: str, choices: Iterable[str]) -> list[str]:
    """Choices ``word`` was probably meant to be: case-insensitive equals first."""
    options = list(choices)
    folded = [choice for choice in options if choice.casefold() == word.casefold()]
    similar = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    return folded + [choice for choice in similar if choice not in folded]


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    matches = close_matches(word, choices)
    if not matches:
        return ""
    return "; did you mean " + " or ".join(f'"{match}"' for match in matches) + "?"


def _kind_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


class _Checker:
    """Collects issues while reading raw TOML values against a Field table."""

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self.issues: list[ConfigIssue] = []

    def issue(self, path: Path_, message: str, at: str = "value") -> None:
        self.issues.append(
            ConfigIssue(path, message, file=self.file, at="key" if at == "key" else "value")
        )

    def table(
        self, raw: Mapping[str, Any], fields: Mapping[str, Field], path: Path_, what: str
    ) -> dict[str, Any] | None:
        """Check the keys and the kinds of ``raw``; return it with defaults or None."""
        ok = True
        for key in raw:
            if key not in fields:
                self.issue(
                    (*path, key),
                    f'unknown key "{key}" in {what}{_did_you_mean(key, fields)}',
                    "key",
                )
                ok = False
        checked: dict[str, Any] = {}
        for key, field in fields.items():
            value = raw.get(key)
            if value is None:
                if field.default is REQUIRED:
                    self.issue(path, f'missing required key "{key}" in {what}', "key")
                    ok = False
                checked[key] = None if field.default is REQUIRED else field.default
                continue
            if not self._value(value, field, (*path, key), key):
                ok = False
            checked[key] = float(value) if field.kind == "float" else value
        return checked if ok else None

    def _value(self, value: object, field: Field, path: Path_, key: str) -> bool:
        if field.kind == "str":
            if not isinstance(value, str):
                self.issue(path, f'"{key}": expected a string, found {_kind_name(value)}')
                return False
            if field.choices is not None and value not in field.choices:
                choices = [str(choice) for choice in field.choices]
                hint = _did_you_mean(value, choices)
                self.issue(path, f'"{key}": expected {one_of(choices)}, found "{value}"{hint}')
                return False
            if field.pattern is not None and not re.fullmatch(field.pattern, value):
                self.issue(path, f'"{key}": expected {field.help}, found "{value}"')
                return False
            return True
        if field.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                self.issue(path, f'"{key}": expected an integer, found {_kind_name(value)}')
                return False
            return self._range(value, field, path, key)
        if field.kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.issue(path, f'"{key}": expected a number, found {_kind_name(value)}')
                return False
            if not math.isfinite(value):
                self.issue(path, f'"{key}": expected a finite number, found {show_value(value)}')
                return False
            return self._range(value, field, path, key)
        if field.kind == "bool":
            if not isinstance(value, bool):
                self.issue(path, f'"{key}": expected true or false, found {_kind_name(value)}')
                return False
            return True
        raise AssertionError(f"field kind {field.kind} is not used in register tables")

    def _range(self, value: float, field: Field, path: Path_, key: str) -> bool:
        low, high = field.minimum, field.maximum
        if (low is None or value >= low) and (high is None or value <= high):
            return True
        if low is not None and high is not None:
            limits = f"from {low:g} to {high:g}"
        else:
            limits = f"at least {low:g}" if low is not None else f"at most {high:g}"
        self.issue(path, f'"{key}": expected {limits}, found {show_value(value)}')
        return False


def _unit_issue(unit: str) -> str:
    hint = _did_you_mean(unit, known_units())
    return f'unknown unit "{unit}"{hint or "; quantities.md lists the units citygate knows"}'


def _register(checker: _Checker, raw: object, path: Path_) -> RegisterSpec | None:
    if not isinstance(raw, Mapping):
        checker.issue(path, f"a register must be a table, found {_kind_name(raw)}")
        return None
    what = "[[registers]]" if checker.file is not None else "[[device.registers]]"
    checked = checker.table(raw, REGISTER_FIELDS, path, what)
    if checked is None:
        return None
    table = cast(Table, checked["table"])
    bits = table in BIT_TABLES
    data_type = cast(DataType, checked["type"] or ("bool" if bits else "uint16"))
    order = cast(ByteOrder, checked["order"] or "ABCD")
    scale: float = checked["scale"]
    offset: float = checked["offset"]
    unit: str | None = checked["unit"]
    issues_before = len(checker.issues)
    if bits and data_type != "bool":
        checker.issue(
            (*path, "type"),
            f'type "{data_type}" needs a register table: coils and discrete inputs'
            ' hold single bits (type = "bool")',
        )
    if bits and checked["order"] is not None:
        checker.issue((*path, "order"), "order has no meaning for coils and discrete inputs", "key")
    count: int | None = checked["count"]
    if data_type in TEXT_TYPES and not bits and count is None:
        checker.issue(
            path,
            f'a {data_type} register needs "count": the registers it spans (2 characters each)',
            "key",
        )
    elif data_type not in TEXT_TYPES and count is not None:
        checker.issue(
            (*path, "count"),
            f'"count" is for type "string" only; a {data_type} spans a fixed number of registers',
            "key",
        )
    if data_type in ("bool", *TEXT_TYPES):
        what = f"a {data_type} value"
        if scale != 1.0:
            checker.issue((*path, "scale"), f"{what} takes no scale", "key")
        if offset != 0.0:
            checker.issue((*path, "offset"), f"{what} takes no offset", "key")
        if unit is not None:
            checker.issue((*path, "unit"), f"{what} takes no unit", "key")
    elif scale == 0.0:
        checker.issue((*path, "scale"), "scale must not be 0")
    if unit is not None and unit not in CONVERSIONS:
        checker.issue((*path, "unit"), _unit_issue(unit))
    width = 1 if bits else register_width(data_type, count)
    address: int = checked["address"]
    if address + width > 65536:
        checker.issue(
            (*path, "address"),
            f"a {data_type} at 0x{address:04X} runs past the last address 0xFFFF",
        )
    writable: bool = checked["writable"]
    minimum: float | None = checked["min"]
    maximum: float | None = checked["max"]
    _check_writable(checker, path, table, data_type, writable, minimum, maximum)
    if len(checker.issues) > issues_before:
        return None
    return RegisterSpec(
        checked["name"],
        address,
        table,
        data_type,
        order,
        scale,
        offset,
        unit,
        writable,
        minimum,
        maximum,
        count if data_type in TEXT_TYPES else None,
    )


def _check_writable(
    checker: _Checker,
    path: Path_,
    table: Table,
    data_type: DataType,
    writable: bool,
    minimum: float | None,
    maximum: float | None,
) -> None:
    """writable only on holding registers and coils; min and max with it, for numbers."""
    if writable and table not in WRITABLE_TABLES:
        what = "input registers" if table == "input" else "discrete inputs"
        checker.issue(
            (*path, "writable"),
            f"{what} are read-only: only holding registers and coils can be written",
        )
        return
    if data_type in TEXT_TYPES:
        if writable:
            checker.issue((*path, "writable"), "a string register cannot be written", "key")
        for key, given in (("min", minimum), ("max", maximum)):
            if given is not None:
                checker.issue((*path, key), f"a string value takes no {key}", "key")
        return
    limits = [key for key, given in (("min", minimum), ("max", maximum)) if given is not None]
    if data_type == "bool":
        for key in limits:
            checker.issue((*path, key), f"a bool value takes no {key}", "key")
        return
    if not writable:
        for key in limits:
            checker.issue((*path, key), f"{key} only applies with writable = true", "key")
        return
    missing = [key for key in ("min", "max") if key not in limits]
    if missing:
        keys = " and ".join(f'"{key}"' for key in missing)
        checker.issue(
            (*path, "writable"),
            f"a writable register needs {keys}: the range a written value must lie in,"
            " in the register's unit",
            "key",
        )
    elif minimum is not None and maximum is not None and minimum > maximum:
        checker.issue(
            (*path, "max"),
            f'"max" ({show_value(maximum)}) is less than "min" ({show_value(minimum)})',
        )


def parse_registers(
    raw: object, *, path: Path_ = ("registers",), file: Path | None = None
) -> tuple[tuple[RegisterSpec, ...], list[ConfigIssue]]:
    """Check a list of raw register tables (from TOML or the loader).

    Returns the registers and the issues (duplicate names included); the
    registers are only complete when there are no issues.
    """
    checker = _Checker(file)
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        checker.issue(path, f"registers must be an array of tables, found {_kind_name(raw)}")
        return (), checker.issues
    registers: list[RegisterSpec] = []
    first_at: dict[str, int] = {}
    for index, item in enumerate(raw):
        spec = _register(checker, item, (*path, index))
        if spec is None:
            continue
        if spec.name in first_at:
            checker.issue(
                (*path, index, "name"),
                f'register name "{spec.name}" is used twice'
                f" (also register {first_at[spec.name] + 1} of this list)",
            )
            continue
        first_at[spec.name] = index
        registers.append(spec)
    return tuple(registers), checker.issues


def merge_registers(
    base: Sequence[RegisterSpec], overrides: Sequence[RegisterSpec]
) -> tuple[RegisterSpec, ...]:
    """A profile's registers with a device's: a device register replaces the
    profile register of the same name (in place); the others are appended."""
    by_name = {spec.name: spec for spec in overrides}
    merged = [by_name.pop(spec.name, spec) for spec in base]
    merged.extend(spec for spec in overrides if spec.name in by_name)
    return tuple(merged)


def builtin_profile_dirs() -> list[Path]:
    """Where built-in profiles live, searched in this order."""
    return [
        Path(__file__).resolve().parents[2] / "config" / "profiles",
        Path(sys.prefix) / "share" / "citygate" / "profiles",
    ]


def builtin_profiles() -> dict[str, Path]:
    """Every built-in profile by name (the first directory wins)."""
    found: dict[str, Path] = {}
    for directory in builtin_profile_dirs():
        if directory.is_dir():
            for path in sorted(directory.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def find_profile(reference: str, config_dir: Path) -> Path:
    """The file ``profile = reference`` names: a built-in name or a path.

    Raises DriverConfigError with an issue on the device's ``profile`` key.
    """
    looks_like_path = "/" in reference or "\\" in reference or reference.endswith(".toml")
    if looks_like_path or not _BUILTIN_NAME.fullmatch(reference):
        path = Path(reference).expanduser()
        path = path if path.is_absolute() else config_dir / path
        if not path.is_file():
            problem = "is not a regular file" if path.exists() else "does not exist"
            raise DriverConfigError([ConfigIssue(("profile",), f"profile file {path} {problem}")])
        return path
    available = builtin_profiles()
    if reference in available:
        return available[reference]
    listed = ", ".join(sorted(available)) or "none installed"
    raise DriverConfigError(
        [
            ConfigIssue(
                ("profile",),
                f'unknown profile "{reference}"{_did_you_mean(reference, available)}'
                f" (built-in: {listed}; or give the path of a profile file)",
            )
        ]
    )


def load_profile(path: Path) -> Profile:
    """Read and check a profile file; raise DriverConfigError listing every issue.

    A file is parsed once however many devices use it (cached by path, size and
    modification time, so an edited profile is read again).
    """
    try:
        stat = path.stat()
    except OSError:
        return _load_profile(path, None)
    return _load_profile(path, (stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=64)
def _load_profile(path: Path, version: tuple[int, int] | None) -> Profile:
    try:
        text = read_regular(path, max_bytes=PROFILE_MAX_BYTES).decode("utf-8")
    except UnsafeFileError as exc:
        raise DriverConfigError(
            [ConfigIssue(("profile",), f"cannot read profile {path}: {exc.strerror}")]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DriverConfigError(
            [ConfigIssue(("profile",), f"cannot read profile {path}: {reason}")]
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DriverConfigError([ConfigIssue((), f"invalid TOML: {exc}", file=path)]) from None
    except RecursionError:
        raise DriverConfigError(
            [ConfigIssue((), "invalid profile: arrays or tables nested too deeply", file=path)]
        ) from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise DriverConfigError(
            [ConfigIssue((), f"invalid profile: {str(exc)[:100]}", file=path)]
        ) from None
    checker = _Checker(path)
    for key in document:
        if key not in ("profile", "registers"):
            hint = _did_you_mean(key, ["profile", "registers"])
            checker.issue((key,), f'unknown key "{key}" in a profile file{hint}', "key")
    header: dict[str, Any] | None = None
    raw_header = document.get("profile")
    if raw_header is None:
        checker.issue((), "a profile file needs a [profile] table", "key")
    elif not isinstance(raw_header, dict):
        checker.issue(("profile",), f"profile must be a table, found {_kind_name(raw_header)}")
    else:
        header = checker.table(raw_header, PROFILE_FIELDS, ("profile",), "[profile]")
    raw_registers = document.get("registers")
    registers: tuple[RegisterSpec, ...] = ()
    if raw_registers is None:
        checker.issue((), "a profile file needs at least one [[registers]] table", "key")
    else:
        registers, issues = parse_registers(raw_registers, path=("registers",), file=path)
        checker.issues.extend(issues)
        if not raw_registers:
            checker.issue(("registers",), "a profile needs at least one register")
    if checker.issues or header is None:
        raise DriverConfigError(checker.issues)
    return Profile(
        name=header["name"],
        path=path,
        source=header["source"],
        registers=registers,
        manufacturer=header["manufacturer"],
        model=header["model"],
        description=header["description"],
        max_registers=header["max_registers"],
        max_gap=header["max_gap"],
    )
