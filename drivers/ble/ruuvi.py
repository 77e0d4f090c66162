"""Ruuvi data format 5 (RAWv2) manufacturer data, sans-I/O.

The payload is what follows the company id 0x0499 (``1177`` as bleak and the
capture format key it): ``05`` then 23 bytes, big-endian, two's complement. A
field holding the format's "not available" value is omitted.
"""

from __future__ import annotations

from typing import Final

from citygate.drivers.api import STANDARD_GRAVITY, DecodeError, Measurement

__all__ = ["RUUVI_COMPANY_ID", "RuuviError", "parse"]

RUUVI_COMPANY_ID: Final = 0x0499
_FORMAT_5: Final = 0x05
_LENGTH: Final = 24
_SIGNED_NA: Final = -0x8000


class RuuviError(DecodeError):
    """Manufacturer data that is not a complete Ruuvi data format 5 payload."""


def _s16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big", signed=True)


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def parse(payload: bytes) -> tuple[Measurement, ...]:
    """Decode Ruuvi manufacturer data (after the company id)."""
    if not payload:
        raise RuuviError("empty Ruuvi manufacturer data")
    if payload[0] != _FORMAT_5:
        raise RuuviError(f"Ruuvi data format {payload[0]} is not supported (only 5, RAWv2)")
    if len(payload) < _LENGTH:
        raise RuuviError(f"Ruuvi format 5 needs {_LENGTH} bytes, got {len(payload)}")
    out: list[Measurement] = []
    temperature = _s16(payload, 1)
    if temperature != _SIGNED_NA:
        out.append(Measurement("temperature", round(temperature * 0.005, 3), "Cel"))
    humidity = _u16(payload, 3)
    if humidity != 0xFFFF:
        out.append(Measurement("humidity", round(humidity * 0.0025, 4), "%RH"))
    pressure = _u16(payload, 5)
    if pressure != 0xFFFF:
        out.append(Measurement("pressure", round((pressure + 50000) / 100, 2), "hPa"))
    for axis, at in (("x", 7), ("y", 9), ("z", 11)):
        milli_g = _s16(payload, at)
        if milli_g != _SIGNED_NA:
            value = round(milli_g * STANDARD_GRAVITY / 1000, 6)
            out.append(Measurement(f"acceleration_{axis}", value, "m/s2"))
    power = _u16(payload, 13)
    voltage_raw, tx_raw = power >> 5, power & 0x1F
    if voltage_raw != 0x7FF:
        out.append(Measurement("battery_voltage", (voltage_raw + 1600) / 1000, "V"))
    if tx_raw != 0x1F:
        out.append(Measurement("tx_power", -40 + 2 * tx_raw, "dBm"))
    movement = payload[15]
    if movement != 0xFF:
        out.append(Measurement("movement_counter", movement, "count"))
    sequence = _u16(payload, 16)
    if sequence != 0xFFFF:
        out.append(Measurement("measurement_sequence", sequence, "count"))
    return tuple(out)
