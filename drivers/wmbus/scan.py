"""``citygate scan wmbus --receiver ID``: list the meters a receiver hears, config snippets.

Every meter id is printed when first heard (the live list); at the end a table
gives each meter's manufacturer, medium, version, whether it is encrypted, its
signal and telegram count, followed by ``[[device]]`` snippets ready to paste.
A meter whose key is in the config (a device with its ``meter_id``) is decoded and
its values shown. ``--record FILE`` also writes every telegram as a capture file
(config.md ``[[wmbus]] replay``).

:data:`command` is ``citygate scan wmbus`` (the factory's ``scan`` hook).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from citygate.drivers.api import Measurement, ScanContext, UsageError, WmbusSettings
from citygate.drivers.mbus.decode import to_measurements
from citygate.drivers.wmbus.config import WmbusDeviceConfig
from citygate.drivers.wmbus.decode import decode_telegram
from citygate.drivers.wmbus.driver import make_receiver
from citygate.drivers.wmbus.frame import WmbusError
from citygate.drivers.wmbus.receiver import CaptureWriter, Heard, Receiver, ReceiverGaveUp

__all__ = ["Meter", "WmbusScan", "command", "report_json", "report_text", "scan", "snippet"]

MAX_METERS: Final = 10_000
"""Most meter ids one scan lists (a busy street has hundreds); more are counted."""


@dataclass(slots=True)
class Meter:
    """What one meter id sent during a scan."""

    id: str
    manufacturer: str = "?"
    medium: str = "?"
    version: int = 0
    encrypted: bool = False
    security_mode: int = 0
    rssi: int | None = None
    telegrams: int = 0
    values: dict[str, Measurement] = field(default_factory=dict)
    problem: str | None = None


@dataclass(slots=True)
class ScanResult:
    """The meters heard, and what could not be listed."""

    meters: dict[str, Meter] = field(default_factory=dict)
    unreadable: int = 0
    left_out: int = 0


def _values(meter: Meter) -> str:
    shown = ", ".join(
        f"{m.name}={m.value:g}{' ' + m.unit if m.unit else ''}"
        if isinstance(m.value, float)
        else f"{m.name}={m.value}{' ' + m.unit if m.unit else ''}"
        for m in meter.values.values()
    )
    if shown:
        return shown
    if meter.problem:
        return meter.problem
    return "encrypted: needs the key" if meter.encrypted else "-"


async def scan(
    receiver: Receiver,
    seconds: float,
    keys: Mapping[str, bytes] | None = None,
    on_new: Callable[[Meter], None] | None = None,
    record: CaptureWriter | None = None,
) -> ScanResult:
    """Listen on ``receiver`` for ``seconds`` (or until a capture ends)."""
    known_keys = {k.upper(): v for k, v in (keys or {}).items()}
    result = ScanResult()

    def listen(heard: Heard) -> None:
        if record is not None:
            record(heard)
        envelope = heard.envelope
        if envelope is None:
            result.unreadable += 1
            return
        address = envelope.meter
        meter = result.meters.get(address.id)
        first = meter is None
        if meter is None:
            if len(result.meters) >= MAX_METERS:
                result.left_out += 1
                return
            meter = result.meters[address.id] = Meter(address.id)
        meter.manufacturer = address.manufacturer
        meter.medium = address.medium
        meter.version = address.version
        meter.encrypted = envelope.encrypted
        meter.security_mode = envelope.security_mode
        meter.telegrams += 1
        if heard.telegram.rssi is not None:
            meter.rssi = heard.telegram.rssi
        key = known_keys.get(address.id.upper())
        if key is not None or not envelope.encrypted:
            try:
                telegram = decode_telegram(heard.telegram.data, key, crc_present=False)
            except WmbusError as exc:
                meter.problem = str(exc)
            else:
                meter.values.update((m.name, m) for m in to_measurements(telegram))
                meter.problem = None
        if first and on_new is not None:
            on_new(meter)

    with receiver.subscribe(None, listen), contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await receiver.run()
    return result


def snippet(meter: Meter, receiver_id: str) -> str:
    """A ``[[device]]`` table for a meter heard."""
    lines = [
        "[[device]]",
        f'id = "{meter.medium}-{meter.id.lower()}"',
        'driver = "wmbus"',
        f'receiver = "{receiver_id}"',
        f'meter_id = "{meter.id}"',
    ]
    if meter.encrypted:
        lines.append(
            f'key_file = "/etc/citygate/wmbus-keys/{meter.id}.key"  '
            "# encrypted: 32 hex digits from the utility"
        )
    return "\n".join(lines)


def _row(meter: Meter) -> str:
    encryption = f"mode {meter.security_mode}" if meter.encrypted else "plain"
    if meter.encrypted and meter.security_mode == 0:
        encryption = "ELL"
    rssi = f"{meter.rssi} dBm" if meter.rssi is not None else "-"
    return (
        f"  {meter.id}  {meter.manufacturer:<3} {meter.medium:<12} v{meter.version:<3}"
        f" {encryption:<7} {rssi:>8} {meter.telegrams:>5}x  {_values(meter)}"
    )


def report_text(result: ScanResult, receiver_id: str, seconds: float, out: IO[str]) -> None:
    """The end-of-scan table and a snippet per meter."""
    meters = result.meters
    print(f"\n{len(meters)} meter(s) heard in {seconds:g} s", file=out)
    for meter in sorted(meters.values(), key=lambda m: m.id):
        print(_row(meter), file=out)
    if result.unreadable:
        print(f"  ({result.unreadable} unreadable telegram(s))", file=out)
    if result.left_out:
        print(f"  ({result.left_out} telegram(s) of more than {MAX_METERS} meters)", file=out)
    if meters:
        print("\n# config snippets", file=out)
        for meter in sorted(meters.values(), key=lambda m: m.id):
            print(snippet(meter, receiver_id) + "\n", file=out)


def report_json(result: ScanResult, receiver_id: str) -> str:
    """The scan as JSON: one object per meter."""
    items: list[dict[str, Any]] = [
        {
            "id": m.id,
            "manufacturer": m.manufacturer,
            "medium": m.medium,
            "version": m.version,
            "encrypted": m.encrypted,
            "security_mode": m.security_mode,
            "rssi": m.rssi,
            "telegrams": m.telegrams,
            "values": {v.name: {"value": v.value, "unit": v.unit} for v in m.values.values()},
            "problem": m.problem,
            "snippet": snippet(m, receiver_id),
        }
        for m in sorted(result.meters.values(), key=lambda m: m.id)
    ]
    return json.dumps(items, indent=2)


async def scan_wmbus(
    settings: WmbusSettings,
    *,
    seconds: float,
    keys: Mapping[str, bytes],
    record: Path | None,
    as_json: bool,
    out: IO[str],
    err: IO[str],
) -> int:
    """The ``citygate scan wmbus`` command; returns the exit status."""
    receiver = make_receiver(settings)
    receiver.restarts = 0  # one try: a technician wants the error now
    if settings.replay is not None:
        where = f"capture {settings.replay}"
    else:
        where = f"{settings.dongle} on {settings.port}, mode {settings.mode}"
    if not as_json:
        print(f"wmbus {settings.id}: listening ({where}) for {seconds:g} s ...", file=err)

    def on_new(meter: Meter) -> None:
        if not as_json:
            print(_row(meter), file=out)
            out.flush()

    writer = None
    try:
        with contextlib.ExitStack() as stack:
            if record is not None:
                writer = CaptureWriter(stack.enter_context(record.open("w", encoding="utf-8")))
            result = await scan(receiver, seconds, keys, on_new, writer)
    except ReceiverGaveUp:
        print(f"wmbus {settings.id} ({where}): {receiver.problem}", file=err)
        return 1
    except OSError as exc:
        print(f"cannot write {record}: {exc.strerror or exc}", file=err)
        return 1
    if as_json:
        print(report_json(result, settings.id), file=out)
    else:
        report_text(result, settings.id, seconds, out)
        if writer is not None:
            print(f"{writer.written} telegrams recorded to {record}", file=err)
    return 0


class WmbusScan:
    """``citygate scan wmbus`` (a :class:`~citygate.drivers.api.ScanCommand`)."""

    help: Final = "wireless M-Bus: list meters a receiver hears, config snippets"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The options of ``citygate scan wmbus``."""
        parser.add_argument(
            "--receiver", required=True, metavar="ID", help="a [[wmbus]] id of the config"
        )
        parser.add_argument(
            "--seconds", type=float, default=60.0, help="how long to listen (default 60)"
        )
        parser.add_argument("--record", type=Path, metavar="FILE", help="also write a capture file")
        parser.add_argument("--json", action="store_true")

    async def run(self, args: argparse.Namespace, context: ScanContext) -> int:
        """Listen on the config's receiver ``--receiver`` for ``--seconds``."""
        if not args.seconds > 0:
            raise UsageError("--seconds must be more than 0")
        loaded = context.config()
        settings = loaded.wmbus.get(args.receiver)
        if settings is None:
            known = ", ".join(f'"{k}"' for k in sorted(loaded.wmbus)) or "none"
            raise UsageError(
                f'no [[wmbus]] receiver "{args.receiver}" in {loaded.path} (defined: {known})'
            )
        keys = {
            found.meter_id: found.key
            for found in loaded.device_configs
            if isinstance(found, WmbusDeviceConfig) and found.key is not None
        }
        context.setup_logging("warning")
        return await scan_wmbus(
            settings,
            seconds=args.seconds,
            keys=keys,
            record=args.record,
            as_json=args.json,
            out=context.out,
            err=context.err,
        )


command: Final = WmbusScan()
"""The ``scan`` hook of the ``wmbus`` factory."""
