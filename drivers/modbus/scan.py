"""Discovery on a serial line: which unit ids answer, and which profile fits.

:func:`probe_units` sends one short read to each unit id (one exchange, no
retry, a short timeout: the scan's duration is bounded by ``len(units) ×
timeout`` plus the recognition of the units found); any answer, an exception
included, means a device is there. :func:`recognise` then reads each built-in
profile's registers from it and keeps the profiles whose every request is
answered with plausible values (line-to-neutral voltages 80–300 V, frequency
45–65 Hz, at least one of them present), most specific (most registers) first.

:data:`command` is ``citygate scan modbus`` (the factory's ``scan`` hook): the
unit probe on ``--serial``, or with ``--address`` the byte-order assistant
(:mod:`citygate.drivers.modbus.assistant`) over TCP or RTU.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from citygate.drivers.api import (
    DriverError,
    ScanContext,
    SerialLine,
    SerialLineConfig,
    TransportError,
    UsageError,
)
from citygate.drivers.modbus.assistant import assistant_json, format_assistant
from citygate.drivers.modbus.driver import (
    ModbusExceptionError,
    RtuSession,
    read_raw,
    read_raw_serial,
)
from citygate.drivers.modbus.plan import ReadPlan
from citygate.drivers.modbus.profile import Profile, builtin_profiles, is_identity, load_profile

__all__ = ["FoundUnit", "ModbusScan", "command", "probe_units", "recognise", "snippet"]

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
        # identity registers say nothing about the fit, and a meter may lack them
        [spec for spec in profile.registers if not is_identity(spec)],
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


# --------------------------------------------------------------------------- the command


class ModbusScan:
    """``citygate scan modbus`` (a :class:`~citygate.drivers.api.ScanCommand`)."""

    help: Final = "Modbus: read registers raw and decoded under every type and order"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The options of ``citygate scan modbus``."""
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--host")
        target.add_argument("--serial", metavar="ID", help="a [[serial]] line of the config")
        parser.add_argument("--port", type=int, default=502)
        parser.add_argument("--unit", type=int, default=1)
        parser.add_argument(
            "--address",
            type=lambda s: int(s, 0),
            help="first register (0-based; 0x.. allowed): read it under every type and order;"
            " without it, --serial probes unit ids",
        )
        parser.add_argument("--count", type=int, default=4)
        parser.add_argument(
            "--table", choices=["holding", "input", "coil", "discrete"], default="holding"
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="reply timeout (default 1 s; 0.2 s per unit id when probing)",
        )
        parser.add_argument(
            "--units",
            default="1-247",
            metavar="RANGE",
            help="unit ids to probe on --serial, e.g. 1-247 (default) or 1-10,20",
        )
        parser.add_argument("--json", action="store_true")

    async def run(self, args: argparse.Namespace, context: ScanContext) -> int:
        """Probe the unit ids of a line, or read registers for the byte-order assistant."""
        out, err = context.out, context.err
        line = None
        if args.serial is not None:
            line = context.serial_line(args.serial)
            if args.address is None:
                return await _scan_units(args, line, context)
            where = f"serial {line.config.id} unit {args.unit}"
        elif args.address is None:
            raise UsageError(
                "--address is required with --host (or give --serial to probe unit ids)"
            )
        else:
            where = f"{args.host}:{args.port} unit {args.unit}"
        timeout = 1.0 if args.timeout is None else args.timeout
        try:
            if line is not None:
                words = await read_raw_serial(
                    line, args.unit, args.address, args.count, args.table, timeout
                )
            else:
                words = await read_raw(
                    args.host, args.port, args.unit, args.address, args.count, args.table, timeout
                )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except DriverError as exc:
            print(f"{where}: {exc}", file=err)
            return 1
        if args.table in ("coil", "discrete"):
            bits = [bool(w) for w in words]
            if args.json:
                print(json.dumps({"address": args.address, "bits": bits}), file=out)
            else:
                for offset, bit in enumerate(bits):
                    print(f"  {args.address + offset:#06x}  {int(bit)}", file=out)
            return 0
        registers = [int(w) for w in words]
        if args.json:
            print(json.dumps(assistant_json(registers, args.address), indent=2), file=out)
        else:
            print(format_assistant(registers, args.address), file=out)
        return 0


def _unit_range(text: str) -> list[int]:
    """The unit ids of ``--units`` (``1-247``, ``1-10,20``); UsageError when malformed."""
    units: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise UsageError(f"--units {text!r}: expected ranges like 1-247 or 1-10,20") from None
        if not 1 <= low <= high <= 247:
            raise UsageError(f"--units {text!r}: unit ids are 1-247 on a serial line")
        units.extend(range(low, high + 1))
    return sorted(set(units))


async def _scan_units(args: argparse.Namespace, owner: SerialLine, context: ScanContext) -> int:
    out, err = context.out, context.err
    line = owner.config
    units = _unit_range(args.units)
    timeout = 0.2 if args.timeout is None else args.timeout
    if timeout <= 0:
        raise UsageError("--timeout must be more than 0")
    if not args.json:
        print(
            f"probing {len(units)} unit ids on serial {line.id} ({line.port},"
            f" {line.baudrate} baud), at most {len(units) * timeout:.0f} s ...",
            file=err,
        )
    try:
        found = []
        for unit in await probe_units(owner, units, timeout):
            profiles = await recognise(owner, unit.unit, max(timeout, line.timeout))
            found.append(FoundUnit(unit.unit, unit.answer, profiles))
    except DriverError as exc:
        print(f"serial {line.id}: {exc}", file=err)
        return 1
    if args.json:
        print(
            json.dumps(
                [{"unit": f.unit, "answer": f.answer, "profiles": list(f.profiles)} for f in found],
                indent=2,
            ),
            file=out,
        )
        return 0
    if not found:
        print(f"no unit answered on serial {line.id}", file=err)
        return 1
    for unit in found:
        print(snippet(line, unit), file=out)
        print(file=out)
    return 0


command: Final = ModbusScan()
"""The ``scan`` hook of the ``modbus`` factory."""
