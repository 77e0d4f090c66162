"""The config of one ``driver = "ble"`` device (config.md, "driver = ble").

``FIELDS`` is the key table the runtime checks types and defaults with (the
runtime also reads ``bindkey_file`` into ``bindkey``); :func:`configure` checks
what a table cannot say and returns a :class:`BleDeviceConfig`.
"""

from __future__ import annotations

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
    check_aes_key,
)

__all__ = ["DEFAULT_INTERVAL", "FIELDS", "FORMATS", "BleDeviceConfig", "configure"]

DEFAULT_INTERVAL = 60.0
"""Seconds between two publications of a sensor's latest values."""

FORMATS = ("auto", "bthome", "ruuvi", "pvvx", "atc")

FIELDS: dict[str, Field] = {
    "address": Field("str", REQUIRED, help="the sensor's Bluetooth address, AA:BB:CC:DD:EE:FF"),
    "format": Field("str", "auto", choices=FORMATS, help="advert format"),
    "bindkey": Field("secret", None, help="key of encrypted BTHome v2 adverts: 32 hex digits"),
}

_ADDRESS = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){5}")


@dataclass(frozen=True, slots=True)
class BleDeviceConfig:
    """A validated BLE sensor."""

    address: str
    """Upper case, colon separated."""
    format: str
    bindkey: bytes | None = None


def configure(options: Mapping[str, Any], context: DeviceContext) -> BleDeviceConfig:
    """Check typed ``options`` of one device; raise DriverConfigError listing every issue."""
    del context  # nothing here depends on other tables
    issues: list[ConfigIssue] = []

    raw_address: str = options["address"]
    address = raw_address.upper()
    if not _ADDRESS.fullmatch(address):
        issues.append(
            ConfigIssue(
                ("address",),
                f'"address": expected a Bluetooth address like "A4:C1:38:5B:0F:21", '
                f'found "{raw_address}"',
            )
        )

    raw_key: str | None = options.get("bindkey")
    bindkey = check_aes_key(raw_key, "bindkey", issues)
    if raw_key is not None:
        advert_format = options.get("format")
        if advert_format not in ("auto", "bthome"):
            issues.append(
                ConfigIssue(
                    ("bindkey",),
                    f'"bindkey": only BTHome adverts are encrypted; format is "{advert_format}"',
                    at="key",
                )
            )

    if issues:
        raise DriverConfigError(issues)
    return BleDeviceConfig(address=address, format=options["format"], bindkey=bindkey)
