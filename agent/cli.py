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

from agent import __version__, logs, registry
from agent.config import Config, ConfigError, DeviceConfig, load
from drivers.api import CitygateError, DeviceContext, DriverError, PollDriver

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
        "--address", type=lambda s: int(s, 0), help="first register (0-based; 0x.. allowed)"
    )
    m.add_argument("--count", type=int, default=4)
    m.add_argument("--table", choices=["holding", "input", "coil", "discrete"], default="holding")
    m.add_argument("--timeout", type=float, default=1.0)
    m.add_argument("--json", action="store_true")
    for kind in ("mbus", "ble"):
        k = scan.add_parser(kind, help=f"discover {kind} devices")
        with_config(k)

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
            from agent.demo import run_demo

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
    from agent.app import Agent, run_until_signalled

    async def main() -> None:
        await run_until_signalled(Agent(config, registry.factories()))

    try:
        asyncio.run(main())
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
    return EXIT_OK


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
    factory = registry.factories()[device.driver]
    context = DeviceContext(
        device_id=device.id,
        interval=device.interval,
        config_dir=device.source.parent,
        serial_lines=config.serial,
        labels=device.labels,
    )

    async def read_once() -> list[Any]:
        from agent.normalise import Normaliser

        driver = factory.create(device.driver_config, context)
        if not isinstance(driver, PollDriver):
            raise UsageError(f"{device.id}: reading push devices arrives with their driver")
        async with asyncio.timeout(max(10.0, device.interval * 2)):
            async with driver:
                measurements = await driver.poll()
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
    except (DriverError, TimeoutError, OSError) as exc:
        from agent.supervise import describe

        print(f"{device.id}: {describe(exc)}", file=sys.stderr)
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
    from agent.app import buffer_path
    from agent.buffer import open_readonly_stats

    db = buffer_path(config)
    if not db.exists():
        print(f"no buffer at {db} yet (the agent has not run with this data_dir)", file=sys.stderr)
        return EXIT_FAILURE
    stats, statuses = open_readonly_stats(db)
    now = time.time()
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
    oldest_age = (
        None
        if stats.oldest_unsent_time is None
        else round(max(0.0, now - stats.oldest_unsent_time), 3)
    )
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
    if args.kind != "modbus":
        raise UsageError(f"scan {args.kind} is not available in this version yet")
    if args.address is None:
        raise UsageError(
            "--address is required (probing unit ids on a serial line arrives with Modbus RTU)"
        )
    if args.serial is not None:
        raise UsageError("--serial: Modbus RTU is not available in this version yet; use --host")
    from drivers.modbus.assistant import assistant_json, format_assistant
    from drivers.modbus.driver import read_raw

    try:
        words = asyncio.run(
            read_raw(
                args.host, args.port, args.unit, args.address, args.count, args.table, args.timeout
            )
        )
    except DriverError as exc:
        print(f"{args.host}:{args.port} unit {args.unit}: {exc}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
