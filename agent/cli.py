"""The ``citygate`` command (../shared/spec/cli.md).

Exit status: 0 success, 2 invalid config or usage, 1 any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from citygate import __version__, logs, registry
from citygate.clock import wall_time
from citygate.config import Config, ConfigError, DeviceConfig, load
from citygate.drivers.api import (
    CitygateError,
    DeviceContext,
    DriverError,
    Measurement,
    PollDriver,
    PushDriver,
)

DEFAULT_CONFIG = Path("/etc/citygate/gateway.toml")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("citygate")


class UsageError(Exception):
    """Bad arguments: exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citygate", description="Edge gateway agent for city devices."
    )
    parser.add_argument("--version", action="version", version=f"citygate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help="gateway.toml (default: %(default)s)",
        )

    p = sub.add_parser("run", help="run the agent in the foreground")
    with_config(p)

    p = sub.add_parser("check", help="validate the config without touching any device")
    with_config(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("read", help="poll one device once and print its readings")
    p.add_argument("device")
    with_config(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("status", help="backlog, drops and device states from data_dir")
    with_config(p)
    p.add_argument("--json", action="store_true")

    sub.add_parser("drivers", help="list installed drivers")

    p = sub.add_parser("scan", help="discover devices; the Modbus byte-order assistant")
    scan = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    m = scan.add_parser(
        "modbus", help="Modbus: read registers raw and decoded under every type and order"
    )
    with_config(m)
    target = m.add_mutually_exclusive_group(required=True)
    target.add_argument("--host")
    target.add_argument("--serial", metavar="ID", help="a [[serial]] line of the config")
    m.add_argument("--port", type=int, default=502)
    m.add_argument("--unit", type=int, default=1)
    m.add_argument(
        "--address",
        type=lambda s: int(s, 0),
        help="first register (0-based; 0x.. allowed): read it under every type and order;"
        " without it, --serial probes unit ids",
    )
    m.add_argument("--count", type=int, default=4)
    m.add_argument("--table", choices=["holding", "input", "coil", "discrete"], default="holding")
    m.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="reply timeout (default 1 s; 0.2 s per unit id when probing)",
    )
    m.add_argument(
        "--units",
        default="1-247",
        metavar="RANGE",
        help="unit ids to probe on --serial, e.g. 1-247 (default) or 1-10,20",
    )
    m.add_argument("--json", action="store_true")
    _mbus_scan_parser(scan, with_config)
    b = scan.add_parser("ble", help="BLE: list sensors heard, decoded values, config snippets")
    with_config(b)
    b.add_argument("--seconds", type=float, default=10.0, help="how long to listen (default 10)")
    b.add_argument("--record", type=Path, metavar="FILE", help="also write a capture file")
    b.add_argument("--adapter", help="Bluetooth adapter (default: [ble] adapter, else hci0)")
    b.add_argument("--active", action="store_true", help="active scanning (default passive)")
    b.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "demo", help="the zero-setup tour: simulators, a broker, the agent, live readings"
    )
    p.add_argument("--broker", metavar="URL", help="use this broker instead of the embedded one")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``citygate`` script."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    command = args.command
    try:
        if command == "run":
            return _run(args.config)
        if command == "check":
            return _check(args.config, args.json)
        if command == "read":
            return _read(args.config, args.device, args.json)
        if command == "status":
            return _status(args.config, args.json)
        if command == "drivers":
            return _drivers()
        if command == "scan":
            return _scan(args)
        if command == "demo":
            from citygate.demo import run_demo

            return run_demo(broker=args.broker)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"citygate {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except CitygateError as exc:
        print(f"citygate {command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"citygate: unknown command {command}", file=sys.stderr)
    return EXIT_USAGE


def _load(path: Path) -> Config:
    return load(path, registry.factories())


# ---------------------------------------------------------------------------- run


def _run(path: Path) -> int:
    config = _load(path)
    logs.setup(config.gateway.log_level)
    for warning in config.warnings:
        log.warning("%s", warning)
    from citygate.app import Agent, run_until_signalled

    async def main() -> int:
        agent = Agent(config, registry.factories())
        await run_until_signalled(agent)
        return agent.exit_status

    try:
        status = asyncio.run(main())
    except BaseExceptionGroup as group:
        fatal, rest = group.split(CitygateError)
        if rest is not None:
            raise
        for exc in _leaves(fatal):
            log.error("fatal: %s", exc)
        return EXIT_FAILURE
    except CitygateError as exc:
        log.error("fatal: %s", exc)
        return EXIT_FAILURE
    return status


def _leaves(group: BaseExceptionGroup[BaseException] | None) -> list[BaseException]:
    if group is None:
        return []
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


# ---------------------------------------------------------------------------- check


def _summary(config: Config) -> dict[str, Any]:
    per_driver = Counter(d.driver for d in config.devices if d.enabled)
    m = config.mqtt
    return {
        "gateway": config.gateway.id,
        "devices": dict(sorted(per_driver.items())),
        "disabled": sorted(d.id for d in config.devices if not d.enabled),
        "serial": {
            s.id: f"{s.port} {s.baudrate} {s.bytesize}{s.parity}{s.stopbits}"
            for s in config.serial.values()
        },
        "broker": f"{'mqtts' if m.tls else 'mqtt'}://{m.host}:{m.port}",
        "data_dir": str(config.gateway.data_dir),
        "files": [str(f) for f in config.files],
    }


def _check(path: Path, as_json: bool) -> int:
    try:
        config = _load(path)
    except ConfigError as exc:
        if as_json:
            errors = [
                {"file": str(p.file), "line": p.line, "col": p.col, "message": p.message}
                for p in exc.problems
            ]
            print(json.dumps({"ok": False, "errors": errors}, indent=2))
        else:
            print(exc, file=sys.stderr)
            print(f"{len(exc.problems)} error(s); nothing was started", file=sys.stderr)
        return EXIT_USAGE
    summary = _summary(config)
    if as_json:
        warnings = [
            {"file": str(p.file), "line": p.line, "col": p.col, "message": p.message}
            for p in config.warnings
        ]
        print(json.dumps({"ok": True, "warnings": warnings, **summary}, indent=2))
        return EXIT_OK
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    devices = ", ".join(f"{n} {d}" for d, n in summary["devices"].items()) or "none"
    print(f"{path}: OK")
    print(f"  gateway   {summary['gateway']}")
    print(f"  devices   {sum(summary['devices'].values())} ({devices})")
    if summary["disabled"]:
        print(f"  disabled  {', '.join(summary['disabled'])}")
    for line_id, line in summary["serial"].items():
        print(f"  serial    {line_id}: {line}")
    print(f"  broker    {summary['broker']}")
    print(f"  data_dir  {summary['data_dir']}")
    return EXIT_OK


# ---------------------------------------------------------------------------- read


def _device(config: Config, device_id: str) -> DeviceConfig:
    for device in config.devices:
        if device.id == device_id:
            return device
    known = ", ".join(d.id for d in config.devices) or "none"
    raise UsageError(f"no device {device_id!r} in {config.path} (devices: {known})")


def _read(path: Path, device_id: str, as_json: bool) -> int:
    config = _load(path)
    logs.setup("warning")
    device = _device(config, device_id)
    factories = registry.factories()
    factory = factories[device.driver]

    async def first_sample(driver: PushDriver, hub: Any) -> Sequence[Measurement]:
        # A push device (BLE): wait up to one interval for its first sample.
        received: asyncio.Future[Sequence[Measurement]] = asyncio.get_running_loop().create_future()

        def emit(measurements: Sequence[Measurement]) -> None:
            if not received.done():
                received.set_result(measurements)

        async with asyncio.timeout(device.interval + 10.0), asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(driver.run(emit))]
            if hub is not None:
                tasks.append(tg.create_task(hub.run()))
            measurements = await received
            for task in tasks:
                task.cancel()
        return measurements

    async def read_once() -> list[Any]:
        from citygate.normalise import Normaliser

        hub = None
        if device.driver == "ble" and config.ble is not None:
            make_hub = getattr(factory, "hub", None)
            if make_hub is not None:
                ble = config.ble
                hub = make_hub(ble.adapter, ble.mode, ble.replay, ble.replay_loop)
        context = DeviceContext(
            device_id=device.id,
            interval=device.interval,
            config_dir=device.source.parent,
            serial_lines=config.serial,
            labels=device.labels,
            ble=hub,
        )
        driver = factory.create(device.driver_config, context)
        async with driver:
            if isinstance(driver, PollDriver):
                async with asyncio.timeout(max(10.0, device.interval * 2)):
                    measurements = await driver.poll()
            else:
                measurements = await first_sample(driver, hub)
        normalise = Normaliser(device.id)
        readings = list(normalise(measurements))
        if normalise.invalid_readings:
            print(
                f"{normalise.invalid_readings} reading(s) were NaN or infinite and were dropped",
                file=sys.stderr,
            )
        return readings

    started = time.monotonic()
    try:
        readings = asyncio.run(read_once())
    except (DriverError, TimeoutError, OSError, BaseExceptionGroup) as exc:
        from citygate.supervise import describe

        errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
        if isinstance(exc, TimeoutError) and device.driver == "ble":
            errors = [TimeoutError(f"no advert within {device.interval + 10:.0f} s")]
        print(f"{device.id}: {'; '.join(describe(e) for e in errors)}", file=sys.stderr)
        return EXIT_FAILURE
    elapsed = time.monotonic() - started
    if as_json:
        print(
            json.dumps(
                {
                    "device": device.id,
                    "readings": [
                        {"name": r.name, "value": r.value, "unit": r.unit} for r in readings
                    ],
                },
                indent=2,
            )
        )
        return EXIT_OK
    width = max((len(r.name) for r in readings), default=4)
    print(f"{device.id} ({device.driver}): {len(readings)} readings in {elapsed * 1000:.0f} ms")
    for r in readings:
        value = f"{r.value:.6g}" if isinstance(r.value, float) else str(r.value)
        print(f"  {r.name:<{width}}  {value:>14}  {r.unit or ''}")
    return EXIT_OK


# ---------------------------------------------------------------------------- status


def _status(path: Path, as_json: bool) -> int:
    config = _load(path)
    from citygate.app import buffer_path
    from citygate.buffer import open_readonly_stats

    db = buffer_path(config)
    if not db.exists():
        print(f"no buffer at {db} yet (the agent has not run with this data_dir)", file=sys.stderr)
        return EXIT_FAILURE
    stats, statuses = open_readonly_stats(db)
    now = wall_time()
    devices: dict[str, Any] = {}
    for device in config.devices:
        raw = statuses.get(device.id)
        status = (
            json.loads(raw) if raw else {"state": "unknown", "error": None, "last_sample": None}
        )
        devices[device.id] = {
            "state": status.get("state"),
            "error": status.get("error"),
            "last_sample": status.get("last_sample"),
        }
    oldest_age = None if stats.oldest_unsent_age_s is None else round(stats.oldest_unsent_age_s, 3)
    report = {
        "backlog_samples": stats.backlog_samples,
        "backlog_bytes": stats.backlog_bytes,
        "oldest_unsent_age_s": oldest_age,
        "dropped_samples": stats.dropped_samples,
        "devices": devices,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"backlog   {stats.backlog_samples} samples, {stats.backlog_bytes} bytes")
    print(f"oldest    {'-' if oldest_age is None else f'{oldest_age:.1f} s ago'}")
    print(f"dropped   {stats.dropped_samples} samples")
    for device_id, d in devices.items():
        last = "-" if d["last_sample"] is None else f"{now - d['last_sample']:.0f} s ago"
        error = f"  ({d['error']})" if d["error"] else ""
        print(f"  {device_id:<24} {d['state']:<8} last sample {last}{error}")
    return EXIT_OK


# ---------------------------------------------------------------------------- drivers


def _drivers() -> int:
    entries = registry.discover()
    for entry in entries:
        if entry.factory is None:
            print(f"{entry.name:<10} BROKEN    {entry.source} ({entry.value}): {entry.error}")
        else:
            kind = "built-in" if entry.builtin else "plugin"
            print(
                f"{entry.name:<10} {entry.factory.version:<9} {kind} "
                f"({entry.source}, {entry.value})"
            )
    return EXIT_OK if all(e.factory is not None for e in entries) else EXIT_FAILURE


# ---------------------------------------------------------------------------- scan


def _scan(args: argparse.Namespace) -> int:
    if args.kind == "mbus":
        return _scan_mbus(args)
    if args.kind == "ble":
        return _scan_ble(args)
    if args.kind != "modbus":
        raise UsageError(f"scan {args.kind} is not available in this version yet")
    line = None
    if args.serial is not None:
        config = _load(args.config)
        line = config.serial.get(args.serial)
        if line is None:
            known = ", ".join(sorted(config.serial)) or "none"
            raise UsageError(
                f"no [[serial]] line {args.serial!r} in {config.path} (lines: {known})"
            )
        if args.address is None:
            return _scan_units(args, line)
        where = f"serial {line.id} unit {args.unit}"
    elif args.address is None:
        raise UsageError("--address is required with --host (or give --serial to probe unit ids)")
    else:
        where = f"{args.host}:{args.port} unit {args.unit}"
    from citygate.drivers.modbus.assistant import assistant_json, format_assistant
    from citygate.drivers.modbus.driver import read_raw, read_raw_serial

    timeout = 1.0 if args.timeout is None else args.timeout
    try:
        if line is not None:
            read = read_raw_serial(line, args.unit, args.address, args.count, args.table, timeout)
        else:
            read = read_raw(
                args.host, args.port, args.unit, args.address, args.count, args.table, timeout
            )
        words = asyncio.run(read)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except DriverError as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.table in ("coil", "discrete"):
        bits = [bool(w) for w in words]
        if args.json:
            print(json.dumps({"address": args.address, "bits": bits}))
        else:
            for offset, bit in enumerate(bits):
                print(f"  {args.address + offset:#06x}  {int(bit)}")
        return EXIT_OK
    registers = [int(w) for w in words]
    if args.json:
        print(json.dumps(assistant_json(registers, args.address), indent=2))
    else:
        print(format_assistant(registers, args.address))
    return EXIT_OK


def _scan_ble(args: argparse.Namespace) -> int:
    from citygate.drivers.ble.config import BleDeviceConfig
    from citygate.drivers.ble.scan import scan_ble

    if not args.seconds > 0:
        raise UsageError("--seconds must be more than 0")
    settings, bindkeys = None, {}
    if args.config.exists():  # the config is optional here: its [ble] table and bindkeys
        config = _load(args.config)
        settings = config.ble
        for device in config.devices:
            found = device.driver_config
            if isinstance(found, BleDeviceConfig) and found.bindkey is not None:
                bindkeys[found.address] = found.bindkey
    logs.setup("warning")
    return scan_ble(
        seconds=args.seconds,
        adapter=args.adapter or (settings.adapter if settings else "hci0"),
        mode="active" if args.active or (settings and settings.mode == "active") else "passive",
        replay=settings.replay if settings else None,
        record=args.record,
        bindkeys=bindkeys,
        as_json=args.json,
        out=sys.stdout,
        err=sys.stderr,
    )


def _unit_range(text: str) -> list[int]:
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


def _scan_units(args: argparse.Namespace, line: Any) -> int:
    from citygate.drivers.modbus.scan import probe_units, recognise, snippet
    from citygate.lines import LineOwner

    units = _unit_range(args.units)
    timeout = 0.2 if args.timeout is None else args.timeout
    if timeout <= 0:
        raise UsageError("--timeout must be more than 0")
    if not args.json:
        print(
            f"probing {len(units)} unit ids on serial {line.id} ({line.port},"
            f" {line.baudrate} baud), at most {len(units) * timeout:.0f} s ...",
            file=sys.stderr,
        )

    async def scan() -> list[Any]:
        owner = LineOwner(line, protocol="modbus")
        try:
            found = await probe_units(owner, units, timeout)
            recognised = []
            for unit in found:
                profiles = await recognise(owner, unit.unit, max(timeout, line.timeout))
                recognised.append(type(unit)(unit.unit, unit.answer, profiles))
            return recognised
        finally:
            owner.close()

    try:
        found = asyncio.run(scan())
    except DriverError as exc:
        print(f"serial {line.id}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(
            json.dumps(
                [{"unit": f.unit, "answer": f.answer, "profiles": list(f.profiles)} for f in found],
                indent=2,
            )
        )
        return EXIT_OK
    if not found:
        print(f"no unit answered on serial {line.id}", file=sys.stderr)
        return EXIT_FAILURE
    for unit in found:
        print(snippet(line, unit))
        print()
    return EXIT_OK


# ---------------------------------------------------------------------------- scan mbus


def _mbus_scan_parser(scan: Any, with_config: Any) -> None:
    k = scan.add_parser(
        "mbus", help="M-Bus: probe primary addresses and search secondary addresses"
    )
    with_config(k)
    k.add_argument("--serial", metavar="ID", required=True, help="a [[serial]] line of the config")
    k.add_argument(
        "--addresses",
        default="0-250",
        metavar="RANGE",
        help="primary addresses to probe, e.g. 0-250 (default) or 1-10,20; 'none' skips them",
    )
    k.add_argument(
        "--secondary", action="store_true", help="also search secondary addresses (wildcards)"
    )
    k.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="reply timeout of one probe (default: from the baud rate, 0.24 s at 2400)",
    )
    k.add_argument(
        "--max-time",
        type=float,
        default=300.0,
        help="longest the secondary search may take, seconds (default 300)",
    )
    k.add_argument("--json", action="store_true")


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


def _scan_mbus(args: argparse.Namespace) -> int:
    from citygate.drivers.mbus.config import PrimaryAddress
    from citygate.drivers.mbus.scan import ack_timeout, probe_primary, search_secondary, snippet
    from citygate.lines import LineOwner

    config = _load(args.config)
    line = config.serial.get(args.serial)
    if line is None:
        known = ", ".join(sorted(config.serial)) or "none"
        raise UsageError(f"no [[serial]] line {args.serial!r} in {config.path} (lines: {known})")
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
            file=sys.stderr,
        )

    async def scan() -> tuple[list[Any], Any]:
        owner = LineOwner(line, protocol="mbus")
        try:
            primary = await probe_primary(owner, addresses, timeout)
            secondary = None
            if args.secondary:
                secondary = await search_secondary(owner, timeout, args.max_time)
            return primary, secondary
        finally:
            owner.close()

    try:
        primary, secondary = asyncio.run(scan())
    except DriverError as exc:
        print(f"serial {line.id}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
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
            )
        )
    else:
        for meter in found:
            print(snippet(line, meter))
            print()
        if secondary is not None and not secondary.complete:
            print(
                f"the secondary search stopped after {args.max_time:.0f} s"
                f" ({secondary.probes} selections): raise --max-time to finish it",
                file=sys.stderr,
            )
    if not found:
        print(f"no meter answered on serial {line.id}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
