"""One BLE advertisement as heard, and its line in a capture file.

A capture file (config.md ``[ble] replay``) is JSON Lines, one advert a line::

    {"t": 1764079200.512, "address": "A4:C1:38:5B:0F:21", "rssi": -67,
     "name": "ATC_5B0F21", "service_data": {"0000181a-…": "<hex>"},
     "manufacturer_data": {"1177": "<hex>"}}

``name`` and the two maps are optional; service data is keyed by the 128-bit
UUID string as bleak reports it, manufacturer data by the company id in decimal.
``rssi`` is a signed byte (-128…127). A line longer than :data:`MAX_LINE_CHARS` is
refused unread; whatever a line holds, :func:`from_line` raises nothing but
:class:`CaptureError`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["MAX_LINE_CHARS", "Advert", "CaptureError", "from_line", "to_line"]

MAX_LINE_CHARS: Final = 64 * 1024
"""Longest capture line read (a real advert's line is a few hundred characters)."""

_ADDRESS: Final = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){5}")
_COMPANY_ID: Final = re.compile(r"[0-9]{1,5}")


class CaptureError(ValueError):
    """A capture line that is not an advert."""


@dataclass(frozen=True, slots=True)
class Advert:
    """What the scanner heard once from one address."""

    address: str
    """Upper case, colon separated."""
    time: float
    """When it was heard: Unix time (seconds)."""
    rssi: int | None = None
    name: str | None = None
    service_data: Mapping[str, bytes] = field(default_factory=dict)
    manufacturer_data: Mapping[int, bytes] = field(default_factory=dict)


def to_line(advert: Advert) -> str:
    """The advert as one capture line (no newline)."""
    record: dict[str, Any] = {"t": round(advert.time, 3), "address": advert.address}
    if advert.rssi is not None:
        record["rssi"] = advert.rssi
    if advert.name is not None:
        record["name"] = advert.name
    if advert.service_data:
        record["service_data"] = {k: v.hex() for k, v in advert.service_data.items()}
    if advert.manufacturer_data:
        record["manufacturer_data"] = {str(k): v.hex() for k, v in advert.manufacturer_data.items()}
    return json.dumps(record, separators=(", ", ": "))


def _hex_map(record: Mapping[str, Any], key: str) -> dict[str, bytes]:
    raw = record.get(key, {})
    if not isinstance(raw, dict):
        raise CaptureError(f'"{key}": expected an object of hex strings')
    out: dict[str, bytes] = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise CaptureError(f'"{key}.{name[:40]}": expected a hex string')
        try:
            out[name] = bytes.fromhex(value)
        except ValueError:
            raise CaptureError(f'"{key}.{name[:40]}": not hex: "{value[:40]}"') from None
    return out


def from_line(line: str) -> Advert:
    """Parse one capture line; raise :class:`CaptureError` saying what is wrong."""
    if len(line) > MAX_LINE_CHARS:
        raise CaptureError(f"line of {len(line)} characters; at most {MAX_LINE_CHARS} are read")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CaptureError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise CaptureError("not an advert: JSON nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise CaptureError(f"not an advert: {str(exc)[:80]}") from None
    if not isinstance(record, dict):
        raise CaptureError("expected a JSON object")
    t = record.get("t")
    if isinstance(t, int) and not isinstance(t, bool) and abs(t) < 2**53:
        t = float(t)  # a larger integer is no time of day (and overflows a float)
    if not isinstance(t, float) or not math.isfinite(t):
        raise CaptureError('"t": expected a number of seconds')
    address = record.get("address")
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address.upper()):
        raise CaptureError('"address": expected a Bluetooth address like "A4:C1:38:5B:0F:21"')
    rssi = record.get("rssi")
    if rssi is not None and (
        not isinstance(rssi, int) or isinstance(rssi, bool) or not -128 <= rssi <= 127
    ):
        raise CaptureError('"rssi": expected an integer from -128 to 127')
    name = record.get("name")
    if name is not None and not isinstance(name, str):
        raise CaptureError('"name": expected a string')
    service_data = {k.lower(): v for k, v in _hex_map(record, "service_data").items()}
    manufacturer_data: dict[int, bytes] = {}
    for key, value in _hex_map(record, "manufacturer_data").items():
        if not _COMPANY_ID.fullmatch(key) or int(key) > 0xFFFF:
            raise CaptureError(
                f'"manufacturer_data": key "{key[:40]}" is not a company id in decimal'
            )
        manufacturer_data[int(key)] = value
    return Advert(
        address=address.upper(),
        time=float(t),
        rssi=rssi,
        name=name,
        service_data=service_data,
        manufacturer_data=manufacturer_data,
    )
