"""Custom firmware of Xiaomi LYWSD03MMC thermometers: service data 0x181A, sans-I/O.

Two layouts share the UUID, told apart by length:

* ATC1441 (13 bytes, big-endian): MAC[6] (as written), temperature int16 × 0.1 °C,
  humidity uint8 %, battery uint8 %, battery mV uint16, frame counter uint8;
* pvvx "custom" (15 bytes, little-endian): MAC[6] (LSB first), temperature int16
  × 0.01 °C, humidity uint16 × 0.01 %, battery mV uint16, battery uint8 %,
  measurement counter uint8, flags uint8.

Encrypted pvvx variants are not supported (a :class:`PvvxError` says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from citygate.drivers.api import DecodeError, Measurement

__all__ = ["ATC_LENGTH", "ENVIRONMENT_UUID", "PVVX_LENGTH", "PvvxError", "PvvxPacket", "parse"]

ENVIRONMENT_UUID: Final = "0000181a-0000-1000-8000-00805f9b34fb"
ATC_LENGTH: Final = 13
PVVX_LENGTH: Final = 15


class PvvxError(DecodeError):
    """Service data 0x181A in no layout this decoder reads."""


@dataclass(frozen=True, slots=True)
class PvvxPacket:
    """A decoded 0x181A packet: its layout (``"atc"`` or ``"pvvx"``), the
    address it carries, its values and its counter."""

    layout: str
    mac: str
    measurements: tuple[Measurement, ...]
    counter: int


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def parse(payload: bytes, layout: str | None = None) -> PvvxPacket:
    """Decode 0x181A service data; ``layout`` (``"atc"``/``"pvvx"``) insists on one."""
    if len(payload) == ATC_LENGTH and layout in (None, "atc"):
        temperature = int.from_bytes(payload[6:8], "big", signed=True) / 10
        humidity, battery = payload[8], payload[9]
        millivolts = int.from_bytes(payload[10:12], "big")
        counter = payload[12]
        return PvvxPacket(
            "atc",
            _mac(payload[:6]),
            (
                Measurement("temperature", temperature, "Cel"),
                Measurement("humidity", humidity, "%RH"),
                Measurement("battery", battery, "%"),
                Measurement("battery_voltage", millivolts / 1000, "V"),
                Measurement("counter", counter, "count"),
            ),
            counter,
        )
    if len(payload) == PVVX_LENGTH and layout in (None, "pvvx"):
        temperature_raw = int.from_bytes(payload[6:8], "little", signed=True)
        humidity_raw = int.from_bytes(payload[8:10], "little")
        millivolts = int.from_bytes(payload[10:12], "little")
        battery, counter = payload[12], payload[13]
        return PvvxPacket(
            "pvvx",
            _mac(bytes(reversed(payload[:6]))),
            (
                Measurement("temperature", temperature_raw / 100, "Cel"),
                Measurement("humidity", humidity_raw / 100, "%RH"),
                Measurement("battery", battery, "%"),
                Measurement("battery_voltage", millivolts / 1000, "V"),
                Measurement("counter", counter, "count"),
            ),
            counter,
        )
    expected = {None: "13 (atc) or 15 (pvvx)", "atc": "13", "pvvx": "15"}.get(layout, "13 or 15")
    raise PvvxError(
        f"0x181A service data of {len(payload)} bytes; expected {expected} "
        "(encrypted pvvx adverts are not supported)"
    )
