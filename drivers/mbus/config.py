"""The config of one ``driver = "mbus"`` device (config.md, "driver = mbus").

``FIELDS`` is the key table the runtime checks types and defaults with;
:func:`configure` checks what a table cannot say and returns an
:class:`MbusConfig`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from citygate.drivers.api import (
    REQUIRED,
    ConfigIssue,
    DeviceContext,
    DriverConfigError,
    Field,
    SerialLineConfig,
    check_records,
)

__all__ = [
    "DEFAULT_INTERVAL",
    "FIELDS",
    "MAX_PRIMARY_ADDRESS",
    "MbusConfig",
    "PrimaryAddress",
    "SecondaryAddress",
    "configure",
    "parse_address",
]

DEFAULT_INTERVAL = 900.0
"""Seconds between two reads of a meter (``"15m"``)."""

MAX_PRIMARY_ADDRESS = 250
"""Primary addresses 251–255 are reserved (253: secondary addressing, 254/255: broadcast)."""

FIELDS: dict[str, Field] = {
    "serial": Field("str", REQUIRED, help="id of the [[serial]] line the meter hangs on"),
    "address": Field(
        "int_or_str",
        REQUIRED,
        help="primary address 0–250, or secondary address: 8 BCD digits of the id, optionally "
        "followed by manufacturer, version and medium (16 hex digits); F is a wildcard digit",
    ),
    "records": Field("str_list", None, help="keep only these quantity names (default: all)"),
}

_SECONDARY = re.compile(r"[0-9F]{8}(?:[0-9A-F]{8})?")


@dataclass(frozen=True, slots=True)
class PrimaryAddress:
    """A primary address, 0–250."""

    value: int


@dataclass(frozen=True, slots=True)
class SecondaryAddress:
    """A secondary address for selection; an ``F`` digit matches any digit.

    ``id`` is the 8 BCD digits of the identification number; ``manufacturer``
    (4 hex digits), ``version`` and ``medium`` (2 hex digits each) are None when
    only the id was given (they then match anything).
    """

    id: str
    manufacturer: str | None = None
    version: str | None = None
    medium: str | None = None

    def __str__(self) -> str:
        rest = (self.manufacturer or "") + (self.version or "") + (self.medium or "")
        return self.id + rest


@dataclass(frozen=True, slots=True)
class MbusConfig:
    """A validated mbus device: its line, its address, the records it keeps."""

    serial: SerialLineConfig
    address: PrimaryAddress | SecondaryAddress
    records: frozenset[str] | None
    """None: keep every record."""


def parse_address(value: int | str) -> PrimaryAddress | SecondaryAddress:
    """Read a primary (int) or secondary (8 or 16 hex digits) address.

    Raise ValueError saying what is wrong; lower-case hex digits are accepted.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected an integer 0–250 or a string of 8 or 16 digits")
    if isinstance(value, int):
        if not 0 <= value <= MAX_PRIMARY_ADDRESS:
            raise ValueError(f"a primary address is 0–{MAX_PRIMARY_ADDRESS}, found {value}")
        return PrimaryAddress(value)
    digits = value.upper()
    if len(digits) not in (8, 16):
        hint = (
            " (for a primary address write the number without quotes)" if digits.isdigit() else ""
        )
        raise ValueError(
            f'a secondary address has 8 or 16 hex digits, found {len(value)} in "{value}"{hint}'
        )
    if not _SECONDARY.fullmatch(digits):
        if not re.fullmatch(r"[0-9F]{8}", digits[:8]):
            raise ValueError(f'the id part of "{value}" must be 8 BCD digits 0–9 (F: any digit)')
        raise ValueError(f'"{value}" holds a character that is not a hex digit')
    if len(digits) == 8:
        return SecondaryAddress(digits)
    return SecondaryAddress(digits[:8], digits[8:12], digits[12:14], digits[14:16])


def configure(options: Mapping[str, Any], context: DeviceContext) -> MbusConfig:
    """Check typed ``options`` of one device; raise DriverConfigError listing every issue."""
    issues: list[ConfigIssue] = []

    line_id: str = options["serial"]
    line = context.serial_lines.get(line_id)
    if line is None:
        known = sorted(context.serial_lines)
        close = difflib.get_close_matches(line_id, known, n=1)
        if close:
            hint = f'; did you mean "{close[0]}"?'
        elif known:
            hint = "; defined: " + ", ".join(f'"{k}"' for k in known)
        else:
            hint = "; no [[serial]] line is defined"
        issues.append(ConfigIssue(("serial",), f'"serial": no [[serial]] line "{line_id}"{hint}'))

    address: PrimaryAddress | SecondaryAddress | None = None
    try:
        address = parse_address(options["address"])
    except ValueError as exc:
        issues.append(ConfigIssue(("address",), f'"address": {exc}'))

    records = check_records(options.get("records"), issues)

    if issues or line is None or address is None:
        raise DriverConfigError(issues)
    return MbusConfig(serial=line, address=address, records=records)
