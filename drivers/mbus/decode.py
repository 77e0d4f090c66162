"""EN 13757-3 application layer of wired M-Bus, sans-I/O: user data in, records out.

:func:`decode_frame` reads the user data of an RSP_UD frame (from
:mod:`citygate.drivers.mbus.link`) into a :class:`Telegram`: the fixed header and one
:class:`Record` per data record, named per quantities.md: the base name of the
VIF (plus what combinable VIFEs add, e.g. ``energy_forward``), then
``_max``/``_min``/``_err``, ``_t<n>``, ``_s<n>``, ``_u<n>``, and ``_2``, ``_3``…
for a name already used. :func:`combine` joins the telegrams of a
multi-telegram readout; :func:`to_measurements` turns a telegram into the
driver's :class:`~citygate.drivers.api.Measurement` list (units are SenML symbols
before canonical conversion; ``meter_status`` first).

Supported: CI 0x72/0x76 (variable data, LSB/MSB first), 0x78 (no header), 0x7A
(short header), 0x73/0x77 (fixed data), 0x70 (the slave's application error).
Every DIF/DIFE, every data type (integers 8–64 bit, BCD 2–12 digits with
negative BCD, real32, variable length, dates G/F/I, time J), the primary VIF
table, the FB and FD extension tables, plain-text VIFs, combinable VIFEs
(record error codes, correction factors, qualifiers), manufacturer-specific
VIFs and VIFEs (value decoded by the DIF's type) and data after DIF 0x0F/0x1F
(kept as bytes). Unknown VIFs keep their record under a generic name
(``vif_6f``, ``vif_fd_3b``, ``vif_fb_40``).

Errors::

    DecodeError                 the reply cannot be read: a record running past
    │                           the end, > 10 DIFEs or VIFEs, a reserved DIF or
    │                           LVAR, a CI that carries no data
    └── MeterApplicationError   CI 0x70: the meter reported an application error
                                (also a DeviceError: the meter said no)

A record that is readable but holds no valid value (an invalid date, a BCD
digit A–E, a NaN, a record error code) is kept with ``value`` None and
``problem`` saying why; :func:`to_measurements` leaves it out.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

from citygate.drivers.api import DecodeError, DeviceError, Measurement, shortest_float32
from citygate.drivers.mbus.link import Frame

__all__ = [
    "MEDIUMS",
    "Function",
    "Header",
    "MeterApplicationError",
    "Record",
    "Telegram",
    "combine",
    "decode_frame",
    "decode_user_data",
    "to_measurements",
]

MAX_DIFES: Final = 10
MAX_VIFES: Final = 10

Function = Literal["instantaneous", "maximum", "minimum", "error"]
_FUNCTIONS: Final[tuple[Function, ...]] = ("instantaneous", "maximum", "minimum", "error")
_FUNCTION_SUFFIX: Final = {
    "instantaneous": "",
    "maximum": "_max",
    "minimum": "_min",
    "error": "_err",
}

MEDIUMS: Final[dict[int, str]] = {
    0x00: "other",
    0x01: "oil",
    0x02: "electricity",
    0x03: "gas",
    0x04: "heat",
    0x05: "steam",
    0x06: "warm_water",
    0x07: "water",
    0x08: "heat_cost_allocator",
    0x09: "compressed_air",
    0x0A: "cooling_outlet",
    0x0B: "cooling_inlet",
    0x0C: "heat_inlet",
    0x0D: "heat_cooling",
    0x0E: "bus_system",
    0x0F: "unknown",
    0x15: "hot_water",
    0x16: "cold_water",
    0x17: "dual_water",
    0x18: "pressure",
    0x19: "ad_converter",
    0x1A: "smoke_detector",
    0x1B: "room_sensor",
    0x1C: "gas_detector",
    0x20: "breaker",
    0x21: "valve",
    0x25: "customer_unit",
    0x28: "waste_water",
    0x29: "garbage",
    0x2A: "carbon_dioxide",
    0x31: "communication_controller",
    0x32: "unidirectional_repeater",
    0x33: "bidirectional_repeater",
    0x36: "radio_converter_system",
    0x37: "radio_converter_meter",
}
"""EN 13757-3 medium codes (header byte 8) as lower-case words; others are ``medium_0xNN``."""

_FIXED_MEDIUMS: Final = (
    "other", "oil", "electricity", "gas", "heat", "steam", "warm_water", "water",
    "heat_cost_allocator", "reserved", "gas", "heat", "warm_water", "water",
    "heat_cost_allocator", "reserved",
)  # fmt: skip

_APPLICATION_ERRORS: Final = {
    0: "unspecified error",
    1: "unimplemented CI field",
    2: "buffer too long, truncated",
    3: "too many records",
    4: "premature end of record",
    5: "more than 10 DIFEs",
    6: "more than 10 VIFEs",
    7: "reserved",
    8: "application too busy for handling readout request",
    9: "too many readouts",
}

_RECORD_ERRORS: Final = {
    0x00: None,
    0x01: "too many DIFEs",
    0x02: "storage number not implemented",
    0x03: "unit number not implemented",
    0x04: "tariff number not implemented",
    0x05: "function not implemented",
    0x06: "data class not implemented",
    0x07: "data size not implemented",
    0x0B: "too many VIFEs",
    0x0C: "illegal VIF group",
    0x0D: "illegal VIF exponent",
    0x0E: "VIF/DIF mismatch",
    0x0F: "unimplemented action",
    0x15: "no data available",
    0x16: "data overflow",
    0x17: "data underflow",
    0x18: "data error",
    0x1C: "premature end of record",
}


class MeterApplicationError(DeviceError, DecodeError):
    """The meter answered with CI 0x70: an application error instead of data.

    Both a :class:`DeviceError` (the meter said no) and a :class:`DecodeError`
    (the reply holds no telegram).
    """

    def __init__(self, code: int | None) -> None:
        self.code = code
        text = "unspecified error" if code is None else _APPLICATION_ERRORS.get(code, "reserved")
        shown = "" if code is None else f" {code}"
        super().__init__(f"the meter reported application error{shown}: {text}")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed header of a telegram; fields a CI does not carry are None."""

    id: str
    """The identification number as its 8 BCD digits (hex digits if not BCD)."""
    manufacturer: str | None
    version: int | None
    medium: str
    medium_code: int | None
    access_number: int | None
    status: int | None
    signature: int | None = None

    def meter_info(self) -> dict[str, str | int]:
        """The ``"meter"`` object of the device status message (quantities.md)."""
        info: dict[str, str | int] = {"id": self.id}
        if self.manufacturer is not None:
            info["manufacturer"] = self.manufacturer
        if self.version is not None:
            info["version"] = self.version
        info["medium"] = self.medium
        return info


RecordValue = int | float | str


@dataclass(frozen=True, slots=True)
class Record:
    """One data record, decoded.

    ``value`` is in ``unit`` (a SenML symbol, None for dimensionless numbers and
    strings); dates are ISO 8601 strings in the meter's local time, bytes that
    have no numeric meaning are a hex string. ``value`` is None when the record
    holds no valid value; ``problem`` then says why.
    """

    name: str
    value: RecordValue | None
    unit: str | None
    quantity: str
    """The base name of the VIF (``volume``, ``energy``, ``vif_fd_3b``)."""
    qualifier: str
    """What combinable VIFEs add to the base name (``_forward``, ``_lower_limit``), or ""."""
    function: Function
    storage: int
    tariff: int
    subunit: int
    dib: bytes
    """DIF and DIFEs as received."""
    vib: bytes
    """VIF, VIFEs (and a plain-text unit) as received."""
    data: bytes
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Telegram:
    """A decoded RSP_UD: header, records and manufacturer-specific data."""

    ci: int
    header: Header | None
    records: tuple[Record, ...]
    manufacturer_data: bytes = b""
    more_records_follow: bool = False
    """DIF 0x1F: the meter holds more records; ask again with FCB toggled."""


# --------------------------------------------------------------------------- value types


def _bcd(data: bytes) -> int | None:
    """Decode little-endian packed BCD; a top nibble F means negative. None: not BCD."""
    digits = data[::-1].hex()
    negative = digits[0] == "f"
    if negative:
        digits = digits[1:]
    if not digits.isdigit():
        return 0 if negative and not digits else None
    value = int(digits)
    return -value if negative else value


def _int(data: bytes) -> int:
    return int.from_bytes(data, "little", signed=True)


def _century(two_digit_year: int) -> int:
    # the 7-bit year of types F/G/I: 0–80 are 2000–2080, 81–99 are 1981–1999 (libmbus, OMS)
    return two_digit_year + (2000 if two_digit_year <= 80 else 1900)


def _date_g(data: bytes) -> tuple[str | None, str | None]:
    day = data[0] & 0x1F
    month = data[1] & 0x0F
    year = ((data[0] & 0xE0) >> 5) | ((data[1] & 0xF0) >> 1)
    if not (1 <= day <= 31 and 1 <= month <= 12):
        return None, "invalid date (type G)"
    return f"{_century(year):04d}-{month:02d}-{day:02d}", None


def _datetime_f(data: bytes) -> tuple[str | None, str | None]:
    if data[0] & 0x80:
        return None, "date and time marked invalid (type F)"
    minute = data[0] & 0x3F
    hour = data[1] & 0x1F
    day = data[2] & 0x1F
    month = data[3] & 0x0F
    year = ((data[2] & 0xE0) >> 5) | ((data[3] & 0xF0) >> 1)
    if not (1 <= day <= 31 and 1 <= month <= 12 and hour < 24 and minute < 60):
        return None, "invalid date and time (type F)"
    return f"{_century(year):04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:00", None


def _datetime_i(data: bytes) -> tuple[str | None, str | None]:
    if data[1] & 0x80:
        return None, "date and time marked invalid (type I)"
    second = data[0] & 0x3F
    minute = data[1] & 0x3F
    hour = data[2] & 0x1F
    day = data[3] & 0x1F
    month = data[4] & 0x0F
    year = ((data[3] & 0xE0) >> 5) | ((data[4] & 0xF0) >> 1)
    if not (1 <= day <= 31 and 1 <= month <= 12 and hour < 24 and minute < 60 and second < 60):
        return None, "invalid date and time (type I)"
    return (
        f"{_century(year):04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}",
        None,
    )


def _time_j(data: bytes) -> tuple[str | None, str | None]:
    second, minute, hour = data[0] & 0x3F, data[1] & 0x3F, data[2] & 0x1F
    if not (hour < 24 and minute < 60 and second < 60):
        return None, "invalid time (type J)"
    return f"{hour:02d}:{minute:02d}:{second:02d}", None


# data field -> fixed length (0x0D variable, 0x0F special: absent)
_DATA_LENGTH: Final = {
    0x0: 0, 0x1: 1, 0x2: 2, 0x3: 3, 0x4: 4, 0x5: 4, 0x6: 6, 0x7: 8,
    0x8: 0, 0x9: 1, 0xA: 2, 0xB: 3, 0xC: 4, 0xE: 6,
}  # fmt: skip
_BCD_FIELDS: Final = frozenset((0x9, 0xA, 0xB, 0xC, 0xE))

# --------------------------------------------------------------------------- VIF tables


@dataclass(frozen=True, slots=True)
class _Meaning:
    """What a VIF (with its table) says: base name, unit, decimal exponent, value kind."""

    base: str
    unit: str | None = None
    exponent: int = 0
    kind: Literal["number", "date", "datetime"] = "number"
    factor: float = 1.0
    """value = raw × 10^exponent × factor + offset: converts units SenML lacks (J/h, °F, gal)."""
    offset: float = 0.0


_DURATION_UNITS: Final = ("s", "min", "h", "d")


def _primary(code: int) -> _Meaning:
    n = code & 0x07
    nn = code & 0x03
    if code <= 0x07:
        return _Meaning("energy", "Wh", n - 3)
    if code <= 0x0F:
        return _Meaning("energy", "J", n)
    if code <= 0x17:
        return _Meaning("volume", "m3", n - 6)
    if code <= 0x1F:
        return _Meaning("mass", "kg", n - 3)
    if code <= 0x23:
        return _Meaning("on_time", _DURATION_UNITS[nn])
    if code <= 0x27:
        return _Meaning("operating_time", _DURATION_UNITS[nn])
    if code <= 0x2F:
        return _Meaning("power", "W", n - 3)
    if code <= 0x37:
        return _Meaning("power", "W", n, factor=1 / 3600)  # J/h
    if code <= 0x3F:
        return _Meaning("volume_flow", "m3/h", n - 6)
    if code <= 0x47:
        return _Meaning("volume_flow", "m3/min", n - 7)
    if code <= 0x4F:
        return _Meaning("volume_flow", "m3/s", n - 9)
    if code <= 0x57:
        return _Meaning("mass_flow", "kg/h", n - 3)
    if code <= 0x5B:
        return _Meaning("flow_temperature", "Cel", nn - 3)
    if code <= 0x5F:
        return _Meaning("return_temperature", "Cel", nn - 3)
    if code <= 0x63:
        return _Meaning("temperature_difference", "K", nn - 3)
    if code <= 0x67:
        return _Meaning("external_temperature", "Cel", nn - 3)
    if code <= 0x6B:
        return _Meaning("pressure", "bar", nn - 3)
    if code == 0x6C:
        return _Meaning("date", kind="date")
    if code == 0x6D:
        return _Meaning("datetime", kind="datetime")
    if code == 0x6E:
        return _Meaning("hca", "count")
    if code <= 0x73 and code >= 0x70:
        return _Meaning("averaging_duration", _DURATION_UNITS[nn])
    if 0x74 <= code <= 0x77:
        return _Meaning("actuality_duration", _DURATION_UNITS[nn])
    if code == 0x78:
        return _Meaning("fabrication_number")
    if code == 0x79:
        return _Meaning("enhanced_id")
    if code == 0x7A:
        return _Meaning("bus_address")
    return _Meaning(f"vif_{code:02x}")


_LONG_DURATIONS: Final = ("h", "d", "months", "years")


def _duration(base: str, unit: str) -> _Meaning:
    if unit in ("months", "years"):
        return _Meaning(f"{base}_{unit}")
    return _Meaning(base, unit)


def _table_fd(code: int) -> _Meaning:
    nn = code & 0x03
    simple = {
        0x08: "access_number", 0x09: "medium", 0x0A: "manufacturer",
        0x0B: "parameter_set_id", 0x0C: "model_version", 0x0D: "hardware_version",
        0x0E: "firmware_version", 0x0F: "software_version", 0x10: "customer_location",
        0x11: "customer", 0x12: "access_code_user", 0x13: "access_code_operator",
        0x14: "access_code_system_operator", 0x15: "access_code_developer",
        0x16: "password", 0x18: "error_mask", 0x1A: "digital_output",
        0x1B: "digital_input", 0x1C: "baudrate", 0x1D: "response_delay", 0x1E: "retry",
        0x20: "first_storage_number", 0x21: "last_storage_number",
        0x22: "storage_block_size", 0x3A: "dimensionless", 0x61: "cumulation_counter",
        0x62: "control_signal", 0x63: "day_of_week", 0x64: "week_number",
        0x65: "day_change_time", 0x66: "parameter_activation_state",
        0x67: "special_supplier_information",
    }  # fmt: skip
    if code in simple:
        return _Meaning(simple[code])
    if code <= 0x03:
        return _Meaning("credit", None, nn - 3)
    if code <= 0x07:
        return _Meaning("debit", None, nn - 3)
    if code == 0x17:
        return _Meaning("error_flags", "count")
    if 0x24 <= code <= 0x27:
        return _Meaning("storage_interval", _DURATION_UNITS[nn])
    if code == 0x28:
        return _Meaning("storage_interval_months")
    if code == 0x29:
        return _Meaning("storage_interval_years")
    if 0x2C <= code <= 0x2F:
        return _Meaning("duration_since_readout", _DURATION_UNITS[nn])
    if code == 0x30:
        return _Meaning("tariff_start", kind="datetime")
    if 0x31 <= code <= 0x33:
        return _Meaning("tariff_duration", _DURATION_UNITS[nn])
    if 0x34 <= code <= 0x37:
        return _Meaning("tariff_period", _DURATION_UNITS[nn])
    if code == 0x38:
        return _Meaning("tariff_period_months")
    if code == 0x39:
        return _Meaning("tariff_period_years")
    if 0x40 <= code <= 0x4F:
        return _Meaning("voltage", "V", (code & 0x0F) - 9)
    if 0x50 <= code <= 0x5F:
        return _Meaning("current", "A", (code & 0x0F) - 12)
    if code == 0x60:
        return _Meaning("reset_counter", "count")
    if 0x68 <= code <= 0x6B:
        return _duration("duration_since_cumulation", _LONG_DURATIONS[nn])
    if 0x6C <= code <= 0x6F:
        return _duration("battery_operating_time", _LONG_DURATIONS[nn])
    if code == 0x70:
        return _Meaning("battery_change_datetime", kind="datetime")
    if code == 0x71:
        return _Meaning("rf_level", "dBm")
    if code == 0x74:
        return _Meaning("remaining_battery", "d")
    return _Meaning(f"vif_fd_{code:02x}")


_GALLON_M3: Final = 0.003785411784
_FOOT3_M3: Final = 0.028316846592


_FAHRENHEIT: Final = {
    0x58: "flow_temperature",
    0x5C: "return_temperature",
    0x64: "external_temperature",
}


def _table_fb(code: int) -> _Meaning:
    n = code & 0x01
    nn = code & 0x03
    if code <= 0x01:
        return _Meaning("energy", "kWh", n - 1 + 3)  # 10^(n-1) MWh
    if 0x08 <= code <= 0x09:
        return _Meaning("energy", "J", n - 1 + 9)  # 10^(n-1) GJ
    if 0x10 <= code <= 0x11:
        return _Meaning("volume", "m3", n + 2)
    if 0x18 <= code <= 0x19:
        return _Meaning("mass", "kg", n + 2 + 3)  # 10^(n+2) t
    if code == 0x21:
        return _Meaning("volume", "m3", -1, factor=_FOOT3_M3)
    if code == 0x22:
        return _Meaning("volume", "m3", -1, factor=_GALLON_M3)
    if code == 0x23:
        return _Meaning("volume", "m3", 0, factor=_GALLON_M3)
    if code == 0x24:
        return _Meaning("volume_flow", "m3/h", -3, factor=_GALLON_M3 * 60)
    if code == 0x25:
        return _Meaning("volume_flow", "m3/h", 0, factor=_GALLON_M3 * 60)
    if code == 0x26:
        return _Meaning("volume_flow", "m3/h", 0, factor=_GALLON_M3)
    if 0x28 <= code <= 0x29:
        return _Meaning("power", "W", n - 1 + 6)  # 10^(n-1) MW
    if 0x30 <= code <= 0x31:
        return _Meaning("power", "W", n - 1 + 9, factor=1 / 3600)  # 10^(n-1) GJ/h
    for first, base in _FAHRENHEIT.items():
        if first <= code <= first + 3:
            return _Meaning(base, "Cel", nn - 3, factor=5 / 9, offset=-32 * 5 / 9)
    if 0x60 <= code <= 0x63:
        return _Meaning("temperature_difference", "K", nn - 3, factor=5 / 9)
    if 0x70 <= code <= 0x73:
        return _Meaning("temperature_limit", "Cel", nn - 3, factor=5 / 9, offset=-32 * 5 / 9)
    if 0x74 <= code <= 0x77:
        return _Meaning("temperature_limit", "Cel", nn - 3)
    if 0x78 <= code <= 0x7F:
        return _Meaning("max_power_cumulation_count", "W", (code & 0x07) - 3)
    return _Meaning(f"vif_fb_{code:02x}")


# combinable (orthogonal) VIFEs that qualify the quantity: code -> name suffix
_QUALIFIERS: Final = {
    0x20: "_per_second", 0x21: "_per_minute", 0x22: "_per_hour", 0x23: "_per_day",
    0x24: "_per_week", 0x25: "_per_month", 0x26: "_per_year", 0x27: "_per_measurement",
    0x28: "_per_input_pulse_0", 0x29: "_per_input_pulse_1", 0x2A: "_per_output_pulse_0",
    0x2B: "_per_output_pulse_1", 0x2C: "_per_litre", 0x2D: "_per_m3", 0x2E: "_per_kg",
    0x2F: "_per_kelvin", 0x30: "_per_kwh", 0x31: "_per_gj", 0x32: "_per_kw",
    0x33: "_per_kelvin_litre", 0x34: "_per_volt", 0x35: "_per_ampere", 0x36: "_times_s",
    0x37: "_times_s_per_volt", 0x38: "_times_s_per_ampere", 0x3F: "_obis",
    0x41: "_lower_limit_exceeded", 0x49: "_upper_limit_exceeded", 0x7E: "_future",
}  # fmt: skip
_SAME_UNIT_QUALIFIERS: Final = {
    0x3A: "_uncorrected", 0x3B: "_forward", 0x3C: "_backward", 0x3E: "_base_conditions",
    0x40: "_lower_limit", 0x48: "_upper_limit", 0x68: "_lower_limit_value",
    0x6C: "_upper_limit_value",
}  # fmt: skip


def _limit_name(code: int) -> str:
    upper = "upper" if code & 0x08 else "lower"
    first_last = "last" if code & 0x04 else "first"
    return f"_{upper}_limit_{first_last}"


@dataclass(slots=True)
class _VifResult:
    meaning: _Meaning
    suffix: str = ""
    extra_exponent: int = 0
    additive: int | None = None  # exponent of an additive constant (value unknown: unsupported)
    problem: str | None = None
    vib: bytes = b""
    unit_override: str | None = None
    """Set by a VIFE that changes the unit ("" = no unit)."""
    kind_override: Literal["date", "datetime"] | None = None


def _read_vifes(data: bytes, pos: int) -> tuple[list[int], int]:
    """Read VIFEs while the extension bit is set; return them and the new position."""
    vifes: list[int] = []
    more = True
    while more:
        if pos >= len(data):
            raise DecodeError("premature end of record: VIFE expected")
        vife = data[pos]
        pos += 1
        vifes.append(vife)
        if len(vifes) > MAX_VIFES:
            raise DecodeError(f"more than {MAX_VIFES} VIFEs in one record")
        more = bool(vife & 0x80)
    return vifes, pos


def _plain_text(data: bytes, pos: int) -> tuple[str, int]:
    if pos >= len(data):
        raise DecodeError("premature end of record: plain-text VIF length expected")
    length = data[pos]
    end = pos + 1 + length
    if end > len(data):
        raise DecodeError(f"plain-text VIF of {length} characters runs past the end")
    text = data[pos + 1 : end][::-1].decode("latin-1")
    return text, end


_SLUG = re.compile(r"[^a-z0-9]+")
# plain-text VIFs seen in the field whose text is a SenML unit
_TEXT_UNITS: Final = {"%RH": ("relative_humidity", "%RH"), "%": ("ratio", "%")}


def _text_meaning(text: str) -> _Meaning:
    known = _TEXT_UNITS.get(text.strip())
    if known is not None:
        return _Meaning(known[0], known[1])
    slug = _SLUG.sub("_", text.strip().lower()).strip("_")
    return _Meaning(f"text_{slug}" if slug else "text_unit")


def _parse_vib(data: bytes, pos: int) -> tuple[_VifResult, int]:
    """Read the VIB (VIF, plain text, VIFEs) at ``pos``."""
    start = pos
    if pos >= len(data):
        raise DecodeError("premature end of record: VIF expected")
    vif = data[pos]
    pos += 1
    code = vif & 0x7F
    vifes: list[int] = []
    if code == 0x7C:
        text, pos = _plain_text(data, pos)
        result = _VifResult(_text_meaning(text))
        if vif & 0x80:
            vifes, pos = _read_vifes(data, pos)
    elif code in (0x7B, 0x7D) and not vif & 0x80:
        # announces an extension table but no VIFE follows: an unknown VIF
        result = _VifResult(_Meaning(f"vif_{code:02x}"))
    elif code in (0x7B, 0x7D):
        vifes, pos = _read_vifes(data, pos)
        first = vifes.pop(0) & 0x7F
        meaning = _table_fb(first) if code == 0x7B else _table_fd(first)
        result = _VifResult(meaning)
    elif code == 0x7F:
        result = _VifResult(_Meaning("manufacturer_specific"))
        if vif & 0x80:  # manufacturer-specific VIFEs: kept in the VIB, not interpreted
            _, pos = _read_vifes(data, pos)
    elif code == 0x7E:
        result = _VifResult(_Meaning("any_vif"))
        if vif & 0x80:
            vifes, pos = _read_vifes(data, pos)
    else:
        result = _VifResult(_primary(code))
        if vif & 0x80:
            vifes, pos = _read_vifes(data, pos)
    _apply_combinable(result, vifes)
    result.vib = data[start:pos]
    return result, pos


def _apply_combinable(result: _VifResult, vifes: list[int]) -> None:
    for index, raw in enumerate(vifes):
        code = raw & 0x7F
        if code <= 0x1F:
            error = _RECORD_ERRORS.get(code, f"record error 0x{code:02x}")
            if error is not None:
                result.problem = f"the meter flags this record: {error}"
        elif code in _SAME_UNIT_QUALIFIERS:
            result.suffix += _SAME_UNIT_QUALIFIERS[code]
        elif code in _QUALIFIERS:
            result.suffix += _QUALIFIERS[code]
            if code in (0x41, 0x49):
                result.unit_override = "count"
            elif not 0x27 <= code <= 0x2B:  # per measurement/pulse keeps the unit
                result.unit_override = ""
        elif code == 0x39:
            result.suffix += "_start"
            result.kind_override = "datetime"
        elif 0x42 <= code <= 0x4F and code & 0x02:  # date (time) of begin/end of limit exceed
            begin_end = "_end" if code & 0x01 else "_begin"
            result.suffix += _limit_name(code) + begin_end
            result.kind_override = "datetime"
        elif 0x50 <= code <= 0x5F:  # duration of limit exceed
            result.suffix += _limit_name(code) + "_duration"
            result.unit_override = _DURATION_UNITS[code & 0x03]
        elif 0x60 <= code <= 0x67:  # duration of first/last
            result.suffix += ("_last" if code & 0x04 else "_first") + "_duration"
            result.unit_override = _DURATION_UNITS[code & 0x03]
        elif code in (0x6A, 0x6B, 0x6E, 0x6F):  # date (time) of first/last begin/end
            first_last = "_last" if code & 0x04 else "_first"
            result.suffix += first_last + ("_end" if code & 0x01 else "_begin")
            result.kind_override = "datetime"
        elif 0x70 <= code <= 0x77:  # multiplicative correction factor 10^(nnn-6)
            result.extra_exponent += (code & 0x07) - 6
        elif 0x78 <= code <= 0x7B:  # additive correction constant 10^(nn-3) × unit
            result.additive = (code & 0x03) - 3
        elif code == 0x7D:  # multiplicative correction factor 10^3
            result.extra_exponent += 3
        elif code == 0x7F:  # manufacturer-specific VIFEs follow: kept in the VIB only
            return
        elif code == 0x7C:  # extension of the combinable VIFE table: next byte is its code
            extended = vifes[index + 1] & 0x7F if index + 1 < len(vifes) else 0
            result.suffix += f"_vife_fc_{extended:02x}"
            return
        else:
            result.suffix += f"_vife_{code:02x}"


# --------------------------------------------------------------------------- records


def _scale(raw: int | float, exponent: int, factor: float, offset: float) -> int | float:
    value: int | float = raw * 10**exponent if exponent >= 0 else raw / 10 ** (-exponent)
    if factor != 1.0 or offset != 0.0:
        value = value * factor + offset
    return value


def _variable(data: bytes, pos: int) -> tuple[bytes, str, int]:
    """Read LVAR-framed data; return (bytes, kind, new position); kind text/bcd/-bcd/binary."""
    if pos >= len(data):
        raise DecodeError("premature end of record: LVAR expected")
    lvar = data[pos]
    pos += 1
    if lvar <= 0xBF:
        size, kind = lvar, "text"
    elif 0xC0 <= lvar <= 0xC9:
        size, kind = lvar - 0xC0, "bcd"
    elif 0xD0 <= lvar <= 0xD9:
        size, kind = lvar - 0xD0, "-bcd"
    elif 0xE0 <= lvar <= 0xEF:
        size, kind = lvar - 0xE0, "binary"
    elif 0xF0 <= lvar <= 0xF4:
        size, kind = 4 * (lvar - 0xEC), "binary"
    elif lvar == 0xF5:
        size, kind = 6, "binary"
    elif lvar == 0xF6:
        size, kind = 8, "binary"
    else:
        raise DecodeError(f"reserved LVAR 0x{lvar:02x} in a variable-length record")
    if pos + size > len(data):
        raise DecodeError(f"variable-length data of {size} bytes runs past the end")
    return data[pos : pos + size], kind, pos + size


def _value(
    field_code: int, payload: bytes, lvar_kind: str | None, vif: _VifResult
) -> tuple[RecordValue | None, str | None]:
    """Interpret the data of one record; return (value, problem)."""
    meaning = vif.meaning
    kind = vif.kind_override or meaning.kind
    if field_code in (0x0, 0x8):
        return None, "the record holds no data"
    if kind in ("date", "datetime") and field_code in (0x2, 0x4, 0x6, 0x3):
        if field_code == 0x2:
            return _date_g(payload)
        if field_code == 0x4:
            return _datetime_f(payload)
        if field_code == 0x6:
            return _datetime_i(payload)
        return _time_j(payload)
    raw: int | float | None
    if lvar_kind is not None:
        if lvar_kind == "text":
            return payload[::-1].decode("latin-1").strip("\x00"), None
        if lvar_kind == "binary":
            if len(payload) > 8:  # a long binary number: hex, most significant byte first
                return payload[::-1].hex(" ").upper(), None
            raw = _int(payload) if payload else 0
        else:
            raw = _bcd(payload) if payload else 0
            if raw is not None and lvar_kind == "-bcd":
                raw = -raw
    elif field_code in _BCD_FIELDS:
        raw = _bcd(payload)
    elif field_code == 0x5:
        raw = shortest_float32(struct.unpack("<f", payload)[0])
    else:
        raw = _int(payload)
    if raw is None:
        return None, f"not BCD: {payload[::-1].hex().upper()}"
    if isinstance(raw, float) and math.isnan(raw):
        return None, "real32 NaN"
    return _scale(raw, meaning.exponent + vif.extra_exponent, meaning.factor, meaning.offset), None


def _storage_tariff_subunit(dif: int, difes: list[int]) -> tuple[int, int, int]:
    storage = (dif >> 6) & 0x01
    tariff = subunit = 0
    for index, dife in enumerate(difes):
        storage |= (dife & 0x0F) << (1 + 4 * index)
        tariff |= ((dife >> 4) & 0x03) << (2 * index)
        subunit |= ((dife >> 6) & 0x01) << index
    return storage, tariff, subunit


def _decode_records(data: bytes, msb_first: bool) -> tuple[list[Record], bytes, bool]:
    records: list[Record] = []
    pos = 0
    end = len(data)
    while pos < end:
        dif = data[pos]
        if dif == 0x2F:  # idle filler
            pos += 1
            continue
        if dif in (0x0F, 0x1F):
            return records, data[pos + 1 :], dif == 0x1F
        if dif & 0x0F == 0x0F:
            raise DecodeError(f"reserved special DIF 0x{dif:02x} at byte {pos}")
        start = pos
        pos += 1
        difes: list[int] = []
        more = bool(dif & 0x80)
        while more:
            if pos >= end:
                raise DecodeError("premature end of record: DIFE expected")
            dife = data[pos]
            pos += 1
            difes.append(dife)
            if len(difes) > MAX_DIFES:
                raise DecodeError(f"more than {MAX_DIFES} DIFEs in one record")
            more = bool(dife & 0x80)
        dib = data[start:pos]
        vif, pos = _parse_vib(data, pos)
        field_code = dif & 0x0F
        lvar_kind: str | None = None
        if field_code == 0x0D:
            payload, lvar_kind, pos = _variable(data, pos)
        else:
            size = _DATA_LENGTH[field_code]
            if pos + size > end:
                raise DecodeError(
                    f"premature end of data: record at byte {start} needs {size} bytes, "
                    f"{end - pos} left"
                )
            payload = data[pos : pos + size]
            pos += size
        if msb_first and lvar_kind != "text":
            payload = payload[::-1]
        value, problem = _value(field_code, payload, lvar_kind, vif)
        if vif.additive is not None:
            vif.problem = "an additive correction constant (its value is not in the record)"
        if vif.problem is not None:  # the VIFEs say the value is not valid
            value, problem = None, vif.problem
        storage, tariff, subunit = _storage_tariff_subunit(dif, difes)
        function = _FUNCTIONS[(dif >> 4) & 0x03]
        meaning = vif.meaning
        unit = meaning.unit
        if vif.unit_override is not None:
            unit = vif.unit_override or None
        if vif.kind_override in ("date", "datetime") or meaning.kind != "number":
            unit = None
        if isinstance(value, str):
            unit = None
        records.append(
            Record(
                name="",
                value=value,
                unit=unit,
                quantity=meaning.base,
                qualifier=vif.suffix,
                function=function,
                storage=storage,
                tariff=tariff,
                subunit=subunit,
                dib=dib,
                vib=vif.vib,
                data=payload,
                problem=problem,
            )
        )
    return records, b"", False


def _stem(record: Record) -> str:
    """A record's name before de-duplication (quantities.md's suffix rules)."""
    name = record.quantity + record.qualifier + _FUNCTION_SUFFIX[record.function]
    if record.tariff:
        name += f"_t{record.tariff}"
    if record.storage:
        name += f"_s{record.storage}"
    if record.subunit:
        name += f"_u{record.subunit}"
    return name


def _named(records: Sequence[Record]) -> tuple[Record, ...]:
    """Name every record; a name already used gets ``_2``, ``_3``… in record order.

    A suffixed name skips any name another record has (a plain-text VIF can spell
    ``x 2``), so names stay unique.
    """
    stems = [_stem(record) for record in records]
    taken = set(stems)
    used: dict[str, int] = {}
    named: list[Record] = []
    for record, stem in zip(records, stems, strict=True):
        seen = used.get(stem, 0) + 1
        name = stem
        if seen > 1:
            while (name := f"{stem}_{seen}") in taken:
                seen += 1
            taken.add(name)
        used[stem] = seen
        named.append(replace(record, name=name))
    return tuple(named)


# --------------------------------------------------------------------------- headers


def _ident(data: bytes) -> str:
    return data[::-1].hex().upper()


def _manufacturer(data: bytes) -> str:
    code = int.from_bytes(data, "little")
    letters = [((code >> shift) & 0x1F) + 64 for shift in (10, 5, 0)]
    return "".join(chr(c) for c in letters)


def _medium(code: int) -> str:
    return MEDIUMS.get(code, f"medium_0x{code:02x}")


def _long_header(block: bytes, msb_first: bool) -> Header:
    def ordered(part: bytes) -> bytes:
        return part[::-1] if msb_first else part

    return Header(
        id=_ident(ordered(block[0:4])),
        manufacturer=_manufacturer(ordered(block[4:6])),
        version=block[6],
        medium=_medium(block[7]),
        medium_code=block[7],
        access_number=block[8],
        status=block[9],
        signature=int.from_bytes(ordered(block[10:12]), "little"),
    )


_FIXED_UNITS: Final[dict[int, tuple[str, str | None, int, float]]] = {}
for _i in range(9):
    _FIXED_UNITS[0x02 + _i] = ("energy", "Wh", _i, 1.0)
    _FIXED_UNITS[0x0B + _i] = ("energy", "J", 3 + _i, 1.0)
    _FIXED_UNITS[0x14 + _i] = ("power", "W", _i, 1.0)
    _FIXED_UNITS[0x1D + _i] = ("power", "W", 3 + _i, 1 / 3600)
    _FIXED_UNITS[0x26 + _i] = ("volume", "m3", _i - 6, 1.0)
    _FIXED_UNITS[0x2F + _i] = ("volume_flow", "m3/h", _i - 6, 1.0)
_FIXED_UNITS[0x38] = ("temperature", "Cel", -3, 1.0)
_FIXED_UNITS[0x39] = ("hca", "count", 0, 1.0)
_FIXED_UNITS[0x3F] = ("counter", None, 0, 1.0)
FIXED_HISTORIC: Final = 0x3E


def _fixed(data: bytes, ci: int) -> Telegram:
    if len(data) < 16:
        raise DecodeError(f"fixed data structure needs 16 bytes, found {len(data)}")
    msb_first = ci == 0x77

    def ordered(part: bytes) -> bytes:
        return part[::-1] if msb_first else part

    status = data[5]
    type1, type2 = data[6], data[7]
    medium_code = ((type1 & 0xC0) >> 6) | ((type2 & 0xC0) >> 4)
    header = Header(
        id=_ident(ordered(data[0:4])),
        manufacturer=None,
        version=None,
        medium=_FIXED_MEDIUMS[medium_code],
        medium_code=None,
        access_number=data[4],
        status=status,
    )
    binary = bool(status & 0x80)
    historic = 1 if status & 0x40 else 0
    records: list[Record] = []
    first_unit = type1 & 0x3F
    for index, (given_unit, counter) in enumerate(
        ((type1 & 0x3F, ordered(data[8:12])), (type2 & 0x3F, ordered(data[12:16])))
    ):
        unit_code, storage = given_unit, historic
        if index == 1 and given_unit == FIXED_HISTORIC:
            unit_code, storage = first_unit, 1
        base, unit, exponent, factor = _FIXED_UNITS.get(
            unit_code, (f"fixed_unit_{unit_code:02x}", None, 0, 1.0)
        )
        raw = int.from_bytes(counter, "little") if binary else _bcd(counter)
        value = None if raw is None else _scale(raw, exponent, factor, 0.0)
        problem = None if raw is not None else f"not BCD: {counter[::-1].hex().upper()}"
        records.append(
            Record(
                name="",
                value=value,
                unit=unit,
                quantity=base,
                qualifier="",
                function="instantaneous",
                storage=storage,
                tariff=0,
                subunit=0,
                dib=b"",
                vib=bytes((data[6 + index],)),
                data=counter,
                problem=problem,
            )
        )
    return Telegram(ci=ci, header=header, records=_named(records))


# --------------------------------------------------------------------------- entry points


def decode_user_data(ci: int, data: bytes) -> Telegram:
    """Decode the application layer: CI field and the bytes after it."""
    if ci == 0x70:
        raise MeterApplicationError(data[0] if data else None)
    if ci in (0x73, 0x77):
        return _fixed(data, ci)
    if ci in (0x72, 0x76):
        if len(data) < 12:
            raise DecodeError(f"variable data header needs 12 bytes, found {len(data)}")
        header: Header | None = _long_header(data[:12], ci == 0x76)
        body = data[12:]
    elif ci == 0x7A:
        if len(data) < 4:
            raise DecodeError(f"short header needs 4 bytes, found {len(data)}")
        header = None
        body = data[4:]
    elif ci == 0x78:
        header = None
        body = data
    else:
        raise DecodeError(f"CI 0x{ci:02x} is not a response with data")
    records, manufacturer_data, more = _decode_records(body, ci == 0x76)
    return Telegram(
        ci=ci,
        header=header,
        records=_named(records),
        manufacturer_data=manufacturer_data,
        more_records_follow=more,
    )


def decode_frame(frame: Frame) -> Telegram:
    """Decode an RSP_UD frame; raise DecodeError if it holds no telegram."""
    if frame.ci is None:
        raise DecodeError("a short frame holds no user data")
    if frame.control & 0xCF != 0x08:
        raise DecodeError(f"C field 0x{frame.control:02x} is not RSP_UD")
    return decode_user_data(frame.ci, frame.data)


def combine(telegrams: Sequence[Telegram]) -> Telegram:
    """Join the telegrams of one multi-telegram readout (DIF 0x1F) into one.

    The header is the last telegram's (its status is the newest); records keep
    their order and are named again so that names stay unique across telegrams.
    """
    if not telegrams:
        raise ValueError("no telegrams to combine")
    last = telegrams[-1]
    return Telegram(
        ci=last.ci,
        header=last.header,
        records=_named([r for t in telegrams for r in t.records]),
        manufacturer_data=b"".join(t.manufacturer_data for t in telegrams),
        more_records_follow=last.more_records_follow,
    )


def to_measurements(telegram: Telegram, keep: frozenset[str] | None = None) -> list[Measurement]:
    """The readings of one telegram: ``meter_status`` then one per valid record.

    Records without a valid value (see :attr:`Record.problem`) are left out;
    ``keep``, when given, keeps only records with these names.
    """
    measurements: list[Measurement] = []
    if telegram.header is not None and telegram.header.status is not None:
        measurements.append(Measurement("meter_status", telegram.header.status))
    for record in telegram.records:
        if record.value is None or (keep is not None and record.name not in keep):
            continue
        measurements.append(Measurement(record.name, record.value, record.unit))
    return measurements
