"""Discovery on an M-Bus line: which meters answer, and at which address.

:func:`probe_primary` sends one ``SND_NKE`` to each primary address (one
exchange, no retry, the acknowledgement's reply timeout: the scan takes at
most ``len(addresses) × timeout`` plus the readouts of the meters found). An
``E5`` means a meter is there; garbage means several meters share the address
(a collision, reported as such). Each meter found is read once, for its header
and record names.

:func:`search_secondary` is the wildcard search of EN 13757-3 (as libmbus and
most masters do it): select ``FFFFFFFF`` (any id); silence means no meter, an
``E5`` exactly one (read it), a collision several: fix the next id digit to
0…9 and select again, depth first. It ends after ``max_time`` seconds at the
latest (``complete`` then says False).

:data:`command` is ``citygate scan mbus`` (the factory's ``scan`` hook).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from citygate.drivers.api import (
    DriverError,
    ScanContext,
    SerialLine,
    SerialLineConfig,
    SerialWire,
    TransportError,
    UsageError,
)
from citygate.drivers.mbus.config import PrimaryAddress, SecondaryAddress, parse_address
from citygate.drivers.mbus.decode import Header, Telegram
from citygate.drivers.mbus.driver import DeviceStats, MbusReplyFramer, MbusSession
from citygate.drivers.mbus.link import encode_select, encode_snd_nke, reply_timeout

__all__ = [
    "FoundMeter",
    "MbusScan",
    "SecondarySearch",
    "ack_timeout",
    "command",
    "probe_primary",
    "search_secondary",
    "secondary_address",
    "snippet",
]

_ID_DIGITS = 8


@dataclass(frozen=True, slots=True)
class FoundMeter:
    """A meter that answered: where, its header and its record names (or why not read)."""

    address: PrimaryAddress | SecondaryAddress
    header: Header | None = None
    records: tuple[str, ...] = ()
    problem: str | None = None


@dataclass(slots=True)
class SecondarySearch:
    """What a secondary search found, and whether it ran to its end."""

    found: list[FoundMeter] = field(default_factory=list)
    probes: int = 0
    complete: bool = True


def ack_timeout(line: SerialLineConfig) -> float:
    """The reply timeout of one probe (an ``E5``) at the line's baud rate."""
    return reply_timeout(line.baudrate, 1)


def secondary_address(header: Header) -> str:
    """The 16-digit secondary address of ``header`` (id, manufacturer code, version, medium)."""
    manufacturer = "FFFF"
    if header.manufacturer is not None and len(header.manufacturer) == 3:
        a, b, c = (ord(ch) - 64 for ch in header.manufacturer)
        manufacturer = f"{(a << 10) | (b << 5) | c:04X}"
    version = "FF" if header.version is None else f"{header.version:02X}"
    medium = "FF" if header.medium_code is None else f"{header.medium_code:02X}"
    return f"{header.id}{manufacturer}{version}{medium}"


async def _probe(
    wire: SerialWire,
    request: bytes,
    timeout: float,  # noqa: ASYNC109 - the reply timeout of this probe
) -> str:
    """``"ack"``, ``"collision"`` or ``"silent"`` for one request expecting E5."""
    framer = MbusReplyFramer("ack")
    await wire.exchange(request, framer, timeout)
    if framer.answer is not None:
        return "ack"
    kind, _ = framer.failure()
    return "silent" if kind == "silent" else "collision"


async def _read(
    line: SerialLine, address: PrimaryAddress | SecondaryAddress, device_id: str
) -> FoundMeter:
    session = MbusSession(line, address, DeviceStats(), retries=1)
    try:
        async with line.turn(device_id) as wire:
            telegram, _ = await session.read(wire)
    except TransportError:
        raise
    except DriverError as exc:
        return FoundMeter(address, problem=str(exc))
    return _found(address, telegram)


def _found(address: PrimaryAddress | SecondaryAddress, telegram: Telegram) -> FoundMeter:
    names = tuple(r.name for r in telegram.records if r.value is not None)
    return FoundMeter(address, telegram.header, ("meter_status", *names))


async def probe_primary(
    line: SerialLine,
    addresses: Iterable[int],
    timeout: float,  # noqa: ASYNC109 - per address
    *,
    device_id: str = "scan",
    progress: Callable[[int], None] | None = None,
) -> list[FoundMeter]:
    """The meters among ``addresses`` (0–250) that acknowledge ``SND_NKE``, read once."""
    found: list[FoundMeter] = []
    for address in addresses:
        if progress is not None:
            progress(address)
        async with line.turn(device_id) as wire:
            answer = await _probe(wire, encode_snd_nke(address), timeout)
        if answer == "silent":
            continue
        if answer == "collision":
            found.append(
                FoundMeter(
                    PrimaryAddress(address),
                    problem="several meters answer at this address (a collision): give them"
                    " distinct primary addresses or use their secondary addresses",
                )
            )
            continue
        found.append(await _read(line, PrimaryAddress(address), device_id))
    return found


async def search_secondary(
    line: SerialLine,
    timeout: float,  # noqa: ASYNC109 - per selection
    max_time: float,
    *,
    device_id: str = "scan",
) -> SecondarySearch:
    """Find every meter by wildcard selection (see the module docstring)."""
    result = SecondarySearch()
    try:
        async with asyncio.timeout(max_time):
            await _search(line, "F" * _ID_DIGITS, 0, timeout, device_id, result)
    except TimeoutError:
        result.complete = False
    return result


async def _search(
    line: SerialLine,
    pattern: str,
    position: int,
    timeout: float,  # noqa: ASYNC109 - per selection
    device_id: str,
    result: SecondarySearch,
) -> None:
    async with line.turn(device_id) as wire:
        answer = await _probe(wire, encode_select(pattern), timeout)
    result.probes += 1
    if answer == "silent":
        return
    if answer == "ack":
        found = await _read(line, SecondaryAddress(pattern), device_id)
        if found.header is not None:  # its full address rather than the wildcard
            with contextlib.suppress(ValueError):  # an id that is not BCD stays a pattern
                full = parse_address(secondary_address(found.header))
                found = FoundMeter(full, found.header, found.records)
        result.found.append(found)
        return
    if position >= _ID_DIGITS:
        result.found.append(
            FoundMeter(
                SecondaryAddress(pattern),
                problem="several meters share this identification number",
            )
        )
        return
    for digit in "0123456789":
        narrowed = pattern[:position] + digit + pattern[position + 1 :]
        await _search(line, narrowed, position + 1, timeout, device_id, result)


def snippet(line: SerialLineConfig, found: FoundMeter) -> str:
    """A ``[[device]]`` table for ``found``, ready to paste (a comment if it cannot be read)."""
    address = found.address
    shown = address.value if isinstance(address, PrimaryAddress) else f'"{address}"'
    header = found.header
    if header is None:
        return f"# serial {line.id}, address {shown}: {found.problem or 'no readout'}"
    kind = header.medium.replace("_", "-")
    lines = [
        "[[device]]",
        f'id = "{kind}-{header.id}"',
        'driver = "mbus"',
        f'serial = "{line.id}"',
        f"address = {shown}",
        f"# {header.manufacturer or '?'} {header.medium} meter {header.id}"
        f" (version {header.version}); {len(found.records)} readings:",
    ]
    names = list(found.records)
    for start in range(0, len(names), 6):
        lines.append("#   " + ", ".join(names[start : start + 6]))
    if isinstance(address, PrimaryAddress):
        lines.append(f'# secondary address: "{secondary_address(header)}"')
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command


class MbusScan:
    """``citygate scan mbus`` (a :class:`~citygate.drivers.api.ScanCommand`)."""

    help: Final = "M-Bus: probe primary addresses and search secondary addresses"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The options of ``citygate scan mbus``."""
        parser.add_argument(
            "--serial", metavar="ID", required=True, help="a [[serial]] line of the config"
        )
        parser.add_argument(
            "--addresses",
            default="0-250",
            metavar="RANGE",
            help="primary addresses to probe, e.g. 0-250 (default) or 1-10,20; 'none' skips them",
        )
        parser.add_argument(
            "--secondary", action="store_true", help="also search secondary addresses (wildcards)"
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="reply timeout of one probe (default: from the baud rate, 0.24 s at 2400)",
        )
        parser.add_argument(
            "--max-time",
            type=float,
            default=300.0,
            help="longest the secondary search may take, seconds (default 300)",
        )
        parser.add_argument("--json", action="store_true")

    async def run(self, args: argparse.Namespace, context: ScanContext) -> int:
        """Probe primary addresses (and search secondary ones); print what answered."""
        out, err = context.out, context.err
        owner = context.serial_line(args.serial)
        line = owner.config
        addresses = _address_range(args.addresses)
        timeout = ack_timeout(line) if args.timeout is None else args.timeout
        if timeout <= 0 or args.max_time <= 0:
            raise UsageError("--timeout and --max-time must be more than 0")
        if not addresses and not args.secondary:
            raise UsageError("nothing to do: give --addresses or --secondary")
        if not args.json:
            print(
                f"probing {len(addresses)} primary addresses on serial {line.id} ({line.port},"
                f" {line.baudrate} baud), at most {len(addresses) * timeout:.0f} s"
                + (
                    f", then secondary addresses for at most {args.max_time:.0f} s"
                    if args.secondary
                    else ""
                )
                + " ...",
                file=err,
            )
        try:
            primary = await probe_primary(owner, addresses, timeout)
            secondary = None
            if args.secondary:
                secondary = await search_secondary(owner, timeout, args.max_time)
        except DriverError as exc:
            print(f"serial {line.id}: {exc}", file=err)
            return 1
        # a meter found at its primary address already shows its secondary address
        primary_ids = {f.header.id for f in primary if f.header is not None}
        found = primary + [
            f
            for f in (secondary.found if secondary is not None else [])
            if f.header is None or f.header.id not in primary_ids
        ]
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "address": f.address.value
                            if isinstance(f.address, PrimaryAddress)
                            else str(f.address),
                            "meter": f.header.meter_info() if f.header is not None else None,
                            "records": list(f.records),
                            "problem": f.problem,
                        }
                        for f in found
                    ],
                    indent=2,
                ),
                file=out,
            )
        else:
            for meter in found:
                print(snippet(line, meter), file=out)
                print(file=out)
            if secondary is not None and not secondary.complete:
                print(
                    f"the secondary search stopped after {args.max_time:.0f} s"
                    f" ({secondary.probes} selections): raise --max-time to finish it",
                    file=err,
                )
        if not found:
            print(f"no meter answered on serial {line.id}", file=err)
            return 1
        return 0


def _address_range(text: str) -> list[int]:
    if text.strip().lower() == "none":
        return []
    addresses: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise UsageError(
                f"--addresses {text!r}: expected ranges like 0-250 or 1-10,20"
            ) from None
        if not 0 <= low <= high <= 250:
            raise UsageError(f"--addresses {text!r}: primary addresses are 0-250")
        addresses.extend(range(low, high + 1))
    return sorted(set(addresses))


command: Final = MbusScan()
"""The ``scan`` hook of the ``mbus`` factory."""
