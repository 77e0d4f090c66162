"""Discovery on a serial line: which unit ids answer, and which profile fits.

:func:`probe_units` sends one short read to each unit id (one exchange, no
retry, a short timeout: the scan's duration is bounded by ``len(units) ×
timeout`` plus the recognition of the units found); any answer, an exception
included, means a device is there. :func:`recognise` then reads each built-in
profile's registers from it and keeps the profiles whose every request is
answered with plausible values (line-to-neutral voltages 80–300 V, frequency
45–65 Hz, at least one of them present), most specific (most registers) first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from citygate.drivers.api import DriverError, SerialLine, SerialLineConfig, TransportError
from citygate.drivers.modbus.driver import ModbusExceptionError, RtuSession
from citygate.drivers.modbus.plan import ReadPlan
from citygate.drivers.modbus.profile import Profile, builtin_profiles, load_profile

__all__ = ["FoundUnit", "probe_units", "recognise", "snippet"]

_PROBE_ADDRESS = 0x0000
_VOLTAGE = (80.0, 300.0)
_FREQUENCY = (45.0, 65.0)


@dataclass(frozen=True, slots=True)
class FoundUnit:
    """A unit id that answered, what it answered, and the profiles that fit it."""

    unit: int
    answer: str
    profiles: tuple[str, ...] = ()


async def probe_units(
    line: SerialLine,
    units: Iterable[int],
    timeout: float,  # noqa: ASYNC109 - per unit id
    *,
    device_id: str = "scan",
) -> list[FoundUnit]:
    """The units among ``units`` that answer a read of input register 0."""
    found: list[FoundUnit] = []
    for unit in units:
        session = RtuSession(line, unit, timeout, retries=0)
        try:
            async with line.turn(device_id) as wire:
                await session.read(wire, "input", _PROBE_ADDRESS, 1)
        except ModbusExceptionError as exc:
            found.append(FoundUnit(unit, f"exception {exc.code}"))
        except TransportError as exc:
            if "no answer" in str(exc):
                continue
            raise  # the port itself failed
        except DriverError as exc:  # garbled, but someone is there
            found.append(FoundUnit(unit, f"bad reply: {exc}"))
        else:
            found.append(FoundUnit(unit, "registers"))
    return found


def _plausible(name: str, value: float) -> bool | None:
    """True/False for a value that can be checked, None for one that cannot."""
    if name in ("voltage", "voltage_avg", "voltage_l1", "voltage_l2", "voltage_l3"):
        return _VOLTAGE[0] <= value <= _VOLTAGE[1]
    if name == "frequency":
        return _FREQUENCY[0] <= value <= _FREQUENCY[1]
    return None


async def _fits(
    line: SerialLine,
    unit: int,
    profile: Profile,
    timeout: float,  # noqa: ASYNC109 - per request
) -> bool:
    plan = ReadPlan.build(
        profile.registers,
        max_gap=profile.max_gap if profile.max_gap is not None else 16,
        max_registers=profile.max_registers or 125,
    )
    session = RtuSession(line, unit, timeout, retries=0)
    replies: list[list[int] | list[bool]] = []
    try:
        async with line.turn("scan") as wire:
            for request in plan.requests:
                replies.append(
                    await session.read(wire, request.table, request.address, request.count)
                )
    except DriverError:
        return False
    checks = []
    for measurement in plan.decode(replies):
        value = measurement.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            return False
        verdict = _plausible(measurement.name, float(value))
        if verdict is not None:
            checks.append(verdict)
    return bool(checks) and all(checks)


async def recognise(
    line: SerialLine,
    unit: int,
    timeout: float,  # noqa: ASYNC109 - per request
    profiles: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """The built-in profiles that fit ``unit``, most registers first."""
    paths = builtin_profiles()
    names = list(paths) if profiles is None else [n for n in profiles if n in paths]
    fitting: list[tuple[int, str]] = []
    for name in names:
        profile = load_profile(paths[name])
        if await _fits(line, unit, profile, timeout):
            fitting.append((len(profile.registers), name))
    return tuple(name for _, name in sorted(fitting, key=lambda item: (-item[0], item[1])))


def snippet(line: SerialLineConfig, found: FoundUnit) -> str:
    """A ``[[device]]`` block ready to paste into gateway.toml."""
    lines = [
        "[[device]]",
        f'id = "meter-{line.id}-{found.unit}"',
        'driver = "modbus"',
        f'serial = "{line.id}"',
        f"unit = {found.unit}",
    ]
    if found.profiles:
        also = f"  # also fits: {', '.join(found.profiles[1:])}" if found.profiles[1:] else ""
        lines.append(f'profile = "{found.profiles[0]}"{also}')
    else:
        lines.append(
            f"# answered ({found.answer}) but fits no built-in profile:"
            " name a profile file or add [[device.registers]]"
        )
    return "\n".join(lines)
