"""``citygate scan ble``: list the sensors heard, their decoded values, config snippets.

Every address is printed when first heard (the live list); at the end a table
gives each sensor's format, signal, advert count and latest values, followed
by ``[[device]]`` snippets ready to paste. ``--record FILE`` also writes every
advert heard as a capture file (config.md ``[ble] replay``).

:data:`command` is ``citygate scan ble`` (the factory's ``scan`` hook).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

from citygate.drivers.api import Measurement, ScanContext, UsageError
from citygate.drivers.ble.advert import Advert
from citygate.drivers.ble.bthome import BTHOME_UUID
from citygate.drivers.ble.config import BleDeviceConfig
from citygate.drivers.ble.decode import AdvertDecoder, detect
from citygate.drivers.ble.replay import CaptureWriter, ReplaySource
from citygate.drivers.ble.scanner import AdvertSource, BleakSource, ScannerGaveUp, ScannerHub

__all__ = [
    "BleScan",
    "Heard",
    "command",
    "report_json",
    "report_text",
    "scan",
    "scan_ble",
    "snippet",
]


@dataclass(slots=True)
class Heard:
    """What one address sent during a scan."""

    address: str
    name: str | None = None
    rssi: int | None = None
    adverts: int = 0
    formats: tuple[str, ...] = ()
    encrypted: bool = False
    values: dict[str, Measurement] = field(default_factory=dict)
    problem: str | None = None


def _describe(heard: Heard) -> str:
    shown = ", ".join(
        f"{m.name}={m.value:g}{' ' + m.unit if m.unit else ''}"
        if isinstance(m.value, float)
        else f"{m.name}={m.value}{' ' + m.unit if m.unit else ''}"
        for m in heard.values.values()
        if m.name != "rssi"
    )
    if not shown and heard.encrypted and heard.problem:
        shown = f"encrypted ({heard.problem})"
    return shown or (heard.problem or "no known format")


async def scan(
    hub: ScannerHub,
    seconds: float,
    bindkeys: Mapping[str, bytes] | None = None,
    on_new: Callable[[Heard], None] | None = None,
    record: CaptureWriter | None = None,
) -> dict[str, Heard]:
    """Listen on ``hub`` for ``seconds`` (or until a capture ends); what each address sent."""
    keys = {a.upper(): k for a, k in (bindkeys or {}).items()}
    heard: dict[str, Heard] = {}
    decoders: dict[str, AdvertDecoder] = {}

    def listen(advert: Advert) -> None:
        if record is not None:
            record(advert)
        entry = heard.get(advert.address)
        first = entry is None
        if entry is None:
            entry = heard[advert.address] = Heard(advert.address)
            decoders[advert.address] = AdvertDecoder("auto", keys.get(advert.address))
        entry.adverts += 1
        entry.rssi = advert.rssi
        entry.name = advert.name or entry.name
        entry.formats = detect(advert) or entry.formats
        payload = advert.service_data.get(BTHOME_UUID)
        if payload:
            entry.encrypted = bool(payload[0] & 0x01)
        decoder = decoders[advert.address]
        decoded = decoder.decode(advert)
        if decoded is not None:
            entry.values.update((m.name, m) for m in decoded.measurements)
            entry.problem = None
        elif decoder.last_error is not None:
            entry.problem = decoder.last_error
        if first and on_new is not None:
            on_new(entry)

    with hub.subscribe(None, listen), contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await hub.run()
    return heard


def snippet(heard: Heard) -> str:
    """A ``[[device]]`` table for a sensor heard."""
    fmt = heard.formats[0] if heard.formats else "auto"
    lines = [
        "[[device]]",
        f'id = "ble-{heard.address.replace(":", "")[-6:].lower()}"',
        'driver = "ble"',
        f'address = "{heard.address}"',
        f'format = "{fmt}"',
    ]
    if heard.encrypted:
        key_file = f"/etc/citygate/ble-keys/{heard.address.replace(':', '')}.key"
        lines.append(f'bindkey_file = "{key_file}"  # encrypted: a file with 32 hex digits')
    return "\n".join(lines)


def report_text(heard: Mapping[str, Heard], seconds: float, out: IO[str]) -> None:
    """The end-of-scan table and the snippets of every sensor in a known format."""
    known = [h for h in heard.values() if h.formats]
    print(
        f"\n{len(heard)} address(es) heard in {seconds:g} s, {len(known)} in a known format",
        file=out,
    )
    for h in sorted(heard.values(), key=lambda h: (not h.formats, h.address)):
        fmt = ",".join(h.formats) or "-"
        rssi = f"{h.rssi} dBm" if h.rssi is not None else "-"
        print(
            f"  {h.address}  {fmt:<10} {rssi:>8} {h.adverts:>5}x  {h.name or '':<12}"
            f"  {_describe(h)}",
            file=out,
        )
    if known:
        print("\n# config snippets", file=out)
        for h in sorted(known, key=lambda h: h.address):
            print(snippet(h) + "\n", file=out)


def report_json(heard: Mapping[str, Heard]) -> str:
    """The scan as JSON: one object per address."""
    items: list[dict[str, Any]] = []
    for h in sorted(heard.values(), key=lambda h: h.address):
        items.append(
            {
                "address": h.address,
                "name": h.name,
                "rssi": h.rssi,
                "adverts": h.adverts,
                "formats": list(h.formats),
                "encrypted": h.encrypted,
                "values": {m.name: {"value": m.value, "unit": m.unit} for m in h.values.values()},
                "problem": h.problem,
                "snippet": snippet(h) if h.formats else None,
            }
        )
    return json.dumps(items, indent=2)


async def scan_ble(
    *,
    seconds: float,
    adapter: str = "hci0",
    mode: Literal["passive", "active"] = "passive",
    replay: Path | None = None,
    record: Path | None = None,
    bindkeys: Mapping[str, bytes] | None = None,
    as_json: bool = False,
    out: IO[str],
    err: IO[str],
) -> int:
    """The ``citygate scan ble`` command; returns the exit status."""

    def make_source() -> AdvertSource:
        if replay is not None:
            return ReplaySource(replay)
        return BleakSource(adapter, mode)

    # One try: a technician wants the error now, not a healing scanner.
    hub = ScannerHub(make_source, name=adapter, restarts=0, power_cycle=None)
    where = f"capture {replay}" if replay is not None else f"adapter {adapter} ({mode})"
    if not as_json:
        print(f"listening on {where} for {seconds:g} s ...", file=err)

    def on_new(heard: Heard) -> None:
        if not as_json:
            fmt = ",".join(heard.formats) or "-"
            print(f"  {heard.address}  {fmt:<10} {heard.rssi} dBm  {_describe(heard)}", file=out)
            out.flush()

    try:
        with contextlib.ExitStack() as stack:
            writer = None
            if record is not None:
                writer = CaptureWriter(stack.enter_context(record.open("w", encoding="utf-8")))
            heard = await scan(hub, seconds, bindkeys, on_new, writer)
    except ScannerGaveUp:
        print(f"BLE {where}: {hub.problem}", file=err)
        return 1
    except OSError as exc:
        print(f"cannot write {record}: {exc.strerror or exc}", file=err)
        return 1
    if as_json:
        print(report_json(heard), file=out)
    else:
        report_text(heard, seconds, out)
        if writer is not None:
            print(f"{writer.written} adverts recorded to {record}", file=err)
    return 0


# --------------------------------------------------------------------------- the command


class BleScan:
    """``citygate scan ble`` (a :class:`~citygate.drivers.api.ScanCommand`)."""

    help: Final = "BLE: list sensors heard, decoded values, config snippets"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The options of ``citygate scan ble``."""
        parser.add_argument(
            "--seconds", type=float, default=10.0, help="how long to listen (default 10)"
        )
        parser.add_argument("--record", type=Path, metavar="FILE", help="also write a capture file")
        parser.add_argument(
            "--adapter", help="Bluetooth adapter (default: [ble] adapter, else hci0)"
        )
        parser.add_argument(
            "--active", action="store_true", help="active scanning (default passive)"
        )
        parser.add_argument("--json", action="store_true")

    async def run(self, args: argparse.Namespace, context: ScanContext) -> int:
        """Listen for ``--seconds``; the config (optional) gives ``[ble]`` and bindkeys."""
        if not args.seconds > 0:
            raise UsageError("--seconds must be more than 0")
        settings, bindkeys = None, {}
        if context.has_config():
            loaded = context.config()
            settings = loaded.ble
            for found in loaded.device_configs:
                if isinstance(found, BleDeviceConfig) and found.bindkey is not None:
                    bindkeys[found.address] = found.bindkey
        context.setup_logging("warning")
        return await scan_ble(
            seconds=args.seconds,
            adapter=args.adapter or (settings.adapter if settings else "hci0"),
            mode="active" if args.active or (settings and settings.mode == "active") else "passive",
            replay=settings.replay if settings else None,
            record=args.record,
            bindkeys=bindkeys,
            as_json=args.json,
            out=context.out,
            err=context.err,
        )


command: Final = BleScan()
"""The ``scan`` hook of the ``ble`` factory."""
