"""The config of one ``driver = "wmbus"`` device (config.md, "driver = wmbus").

``FIELDS`` is the key table the runtime checks types and defaults with (the runtime
also reads ``key_file`` into ``key``, and checks that ``receiver`` names a
``[[wmbus]]``); :func:`configure` checks what a table cannot say and returns a
:class:`WmbusDeviceConfig`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from citygate.drivers.api import (
    REQUIRED,
    ConfigIssue,
    DeviceContext,
    DriverConfigError,
    Field,
    check_aes_key,
    check_records,
)

__all__ = [
    "DEFAULT_INTERVAL",
    "DONGLES",
    "FIELDS",
    "MODES",
    "WmbusDeviceConfig",
    "configure",
]

DEFAULT_INTERVAL: Final = 900.0
"""Seconds between two publications of a meter's latest values (15 min)."""

DONGLES: Final = ("im871a", "amb8465")
MODES: Final = ("T1", "C1", "S1")

FIELDS: dict[str, Field] = {
    "receiver": Field("str", REQUIRED, help="a [[wmbus]] id"),
    "meter_id": Field("str", REQUIRED, help="the meter's 8-digit id, as printed on it"),
    "key": Field("secret", None, help="the meter's AES-128 key: 32 hex digits"),
    "records": Field("str_list", None, help="keep only these quantity names (default: all)"),
}

_METER_ID = re.compile(r"[0-9A-F]{8}")


@dataclass(frozen=True, slots=True)
class WmbusDeviceConfig:
    """A validated wireless meter."""

    receiver: str
    meter_id: str
    """8 digits (upper-case hex digits for an id that is not BCD)."""
    key: bytes | None
    records: frozenset[str] | None


def configure(options: Mapping[str, Any], context: DeviceContext) -> WmbusDeviceConfig:
    """Check typed ``options`` of one device; raise DriverConfigError listing every issue."""
    del context  # the receiver reference is checked by the runtime, which has the tables
    issues: list[ConfigIssue] = []

    raw_id: str = options["meter_id"]
    meter_id = raw_id.strip().upper()
    if not _METER_ID.fullmatch(meter_id):
        issues.append(
            ConfigIssue(
                ("meter_id",),
                f'"meter_id": expected the 8-digit id like "12345678", found "{raw_id[:40]}"',
            )
        )

    key = check_aes_key(options.get("key"), "key", issues)
    records = check_records(options.get("records"), issues)

    if issues:
        raise DriverConfigError(issues)
    return WmbusDeviceConfig(
        receiver=options["receiver"], meter_id=meter_id, key=key, records=records
    )
