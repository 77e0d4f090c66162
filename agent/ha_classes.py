"""Home Assistant sensor classes of the gateway's quantities (mqtt.md, "Home Assistant").

The table is data, ``ha_classes.toml`` next to this module (its header names the Home
Assistant documents it was written from): Home Assistant's device classes with the units
and state classes each allows, the SenML → Home Assistant unit spellings, and one row per
quantity of quantities.md. :func:`classify` answers the ``device_class``, ``state_class``
and unit a discovery message carries for one reading; Home Assistant ≥ 2025.3 rejects a
discovery message whose unit its device class does not allow, so every answer is a valid
pair or has no device class.

A reading's name is its quantity's base name plus suffixes (``voltage_l1``,
``energy_t1_s2``, ``temperature_2``): :func:`classify` strips suffixes until a row
matches. A name no row matches (a custom register) gets its class from its unit when the
unit fits exactly one class (``W`` → power); a historic or extreme value of a counter
(``_s<N>``, ``_max``, ``_min``, ``_err``, limits) keeps its class but no state class, so
it never lands in the Energy dashboard.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from citygate.config import Config, Problem
from citygate.drivers.api import CONVERSIONS
from citygate.tomlpos import Locator, locate

__all__ = [
    "HaClass",
    "allowed_state_classes",
    "allowed_units",
    "classify",
    "device_classes",
    "ha_unit",
    "ha_warnings",
    "known_quantity",
    "quantities",
    "valid",
]

COUNTER_STATE_CLASSES: Final = frozenset({"total", "total_increasing"})

# Suffixes that keep what a reading is (phase, tariff, sub-unit, axis, duplicate number,
# direction) and those that make a counter's reading a snapshot (storage, function, limits).
_SAME: Final = re.compile(
    r"_(?:l[123](?:_l[123])?|ll|n|avg|sum|[xyz]|t\d+|u\d+|\d+|forward|backward"
    r"|uncorrected|base_conditions|import|export)$"
)
_SNAPSHOT: Final = re.compile(
    r"_(?:max|min|err|s\d+|lower_limit|upper_limit|lower_limit_value|upper_limit_value)$"
)
_MAX_NAME: Final = 256


@dataclass(frozen=True, slots=True)
class HaClass:
    """What a discovery component says about one reading; None: leave the key out.

    ``unit`` is Home Assistant's spelling (``°C``, ``m³``), not SenML's.
    """

    device_class: str | None
    state_class: str | None
    unit: str | None


@dataclass(frozen=True, slots=True)
class _Row:
    unit: str | None  # SenML
    device_class: str | None
    state_class: str | None


@dataclass(frozen=True, slots=True)
class _Table:
    units: Mapping[str, frozenset[str | None]]
    state_classes: Mapping[str, frozenset[str]]
    ha_units: Mapping[str, str | None]
    unit_classes: Mapping[str, tuple[str, str]]
    medium_classes: Mapping[str, str]
    rows: Mapping[str, _Row]


def _none(text: str) -> str | None:
    return text or None


@functools.cache
def _table() -> _Table:
    text = resources.files("citygate").joinpath("ha_classes.toml").read_text("utf-8")
    raw = tomllib.loads(text)
    classes: dict[str, Any] = raw["device_classes"]
    return _Table(
        units={k: frozenset(_none(u) for u in v["units"]) for k, v in classes.items()},
        state_classes={k: frozenset(v["state_classes"]) for k, v in classes.items()},
        ha_units={k: _none(v) for k, v in raw["units"].items()},
        unit_classes={
            k: (v["device_class"], v["state_class"]) for k, v in raw["unit_classes"].items()
        },
        medium_classes=dict(raw["medium_classes"]),
        rows={
            k: _Row(v.get("unit"), v.get("device_class"), v.get("state_class"))
            for k, v in raw["quantities"].items()
        },
    )


def device_classes() -> frozenset[str]:
    """Every sensor device class of Home Assistant's table."""
    return frozenset(_table().units)


def quantities() -> frozenset[str]:
    """The base names the table has a row for."""
    return frozenset(_table().rows)


def allowed_units(device_class: str) -> frozenset[str | None]:
    """The units (Home Assistant spelling; None: no unit) ``device_class`` allows;
    empty for a class Home Assistant does not know."""
    return _table().units.get(device_class, frozenset())


def allowed_state_classes(device_class: str) -> frozenset[str]:
    """The state classes ``device_class`` allows (a missing state class is always allowed)."""
    return _table().state_classes.get(device_class, frozenset())


def ha_unit(senml_unit: str | None) -> str | None:
    """Home Assistant's spelling of a SenML unit (``Cel`` → ``°C``, ``/`` → None);
    a unit the table does not know is returned unchanged."""
    if senml_unit is None:
        return None
    return _table().ha_units.get(senml_unit, senml_unit)


def valid(device_class: str | None, unit: str | None) -> bool:
    """Whether Home Assistant accepts ``unit`` (its spelling) with ``device_class``;
    any unit goes without a device class."""
    return device_class is None or unit in allowed_units(device_class)


def _base(quantity: str) -> tuple[_Row | None, bool]:
    """The row a reading's name belongs to, and whether a snapshot suffix was stripped."""
    rows = _table().rows
    name = quantity[:_MAX_NAME]
    snapshot = False
    while name not in rows:
        if (match := _SNAPSHOT.search(name)) is not None:
            snapshot = True
        elif (match := _SAME.search(name)) is None:
            return None, snapshot
        name = name[: match.start()]
    return rows[name], snapshot


def known_quantity(quantity: str) -> bool:
    """Whether ``quantity`` (with its suffixes) has a row of its own in the table."""
    return _base(quantity)[0] is not None


@functools.lru_cache(maxsize=4096)
def classify(quantity: str, senml_unit: str | None, medium: str | None = None) -> HaClass:
    """The classes of a reading named ``quantity`` in ``senml_unit`` (canonical SenML).

    ``medium`` is an M-Bus meter's medium (quantities.md): a volume counter of a water or
    gas meter becomes ``water`` / ``gas`` (the Energy dashboard's classes for them).
    """
    table = _table()
    unit = ha_unit(senml_unit)
    row, snapshot = _base(quantity)
    found: HaClass | None = None
    if row is not None and (
        senml_unit == row.unit or (row.device_class is not None and valid(row.device_class, unit))
    ):
        found = HaClass(row.device_class, row.state_class, unit)
    elif senml_unit is not None and senml_unit in table.unit_classes:
        device_class, state_class = table.unit_classes[senml_unit]
        found = HaClass(device_class, state_class, unit)
    elif senml_unit is not None:
        found = HaClass(None, "measurement", unit)  # a unit: a number; no class fits it
    else:
        found = HaClass(None, None, None)  # a string, a flag or a bare number: unknown
    if found.device_class == "volume" and medium is not None and medium in table.medium_classes:
        found = HaClass(table.medium_classes[medium], found.state_class, found.unit)
    if snapshot and found.state_class in COUNTER_STATE_CLASSES:
        found = HaClass(found.device_class, None, found.unit)
    return found


# --------------------------------------------------------------------------- check


def _is_builtin_reference(reference: str) -> bool:
    # the rule of the modbus driver's find_profile: a bare name is a built-in profile
    return not ("/" in reference or "\\" in reference or reference.endswith(".toml"))


def _device_index(source: Path, device_id: str) -> tuple[str, int | None]:
    try:
        text = source.read_text("utf-8")
        devices = tomllib.loads(text).get("device", [])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError, ValueError):
        return "", None
    for index, device in enumerate(devices if isinstance(devices, list) else []):
        if isinstance(device, dict) and device.get("id") == device_id:
            return text, index
    return text, None


def _custom_registers(config: Config) -> Iterator[tuple[Path, str, tuple[str | int, ...], str]]:
    """(file, its text, path of the unit key, warning) of each custom register."""
    for device in config.devices:
        inline = device.options.get("registers") or []
        profile = getattr(device.driver_config, "profile", None)
        reference = device.options.get("profile")
        if inline:
            text, index = _device_index(device.source, device.id)
            for j, register in enumerate(inline):
                if isinstance(register, Mapping):
                    path: tuple[str | int, ...] = (
                        ("device", index, "registers", j, "unit") if index is not None else ()
                    )
                    who = f'device "{device.id}" register "{register.get("name")}"'
                    yield device.source, text, path, _message(who, register)
        if (
            profile is not None
            and isinstance(reference, str)
            and not _is_builtin_reference(reference)
        ):
            file = Path(getattr(profile, "path", device.source))
            try:
                text = file.read_text("utf-8")
            except (OSError, UnicodeDecodeError):
                text = ""
            for j, spec in enumerate(getattr(profile, "registers", ())):
                register = {"name": getattr(spec, "name", ""), "unit": getattr(spec, "unit", None)}
                who = f'profile register "{register["name"]}"'
                yield file, text, ("registers", j, "unit"), _message(who, register)


def _message(who: str, register: Mapping[str, Any]) -> str:
    """The warning for one register, or "" when Home Assistant gets a class or the
    register is a quantity whose row has none on purpose."""
    name = register.get("name")
    unit = register.get("unit")
    if not isinstance(name, str) or not isinstance(unit, str):
        return ""
    canonical = CONVERSIONS.get(unit, (unit, 1.0))[0]
    row, _ = _base(name)
    if classify(name, canonical).device_class is not None or (
        row is not None and row.unit == canonical
    ):
        return ""
    return (
        f'{who}: unit "{unit}" has no Home Assistant device class; with [homeassistant]'
        " enabled it is published without one"
    )


def ha_warnings(config: Config) -> list[Problem]:
    """``citygate check`` warnings for ``[homeassistant] enabled = true``: each custom
    register (inline, or in a profile file that is not built in) whose unit fits no Home
    Assistant device class, unless it is a quantity of the table in its own unit."""
    if not config.homeassistant.enabled:
        return []
    found: list[Problem] = []
    seen: set[tuple[Path, tuple[str | int, ...]]] = set()
    locators: dict[Path, Locator] = {}
    for file, text, path, message in _custom_registers(config):
        if not message or (file, path) in seen:
            continue
        seen.add((file, path))
        line, col = 1, 1
        if text and path:
            if file not in locators:
                locators[file] = locate(text)
            line, col = locators[file].key(path)
        found.append(Problem(file, line, col, "warning: " + message))
    return found
