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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from citygate import __version__, logs, registry
from citygate.clock import wall_time
from citygate.config import Config, ConfigError, DeviceConfig, load
from citygate.drivers.api import (
    CitygateError,
    DeviceContext,
    DriverError,
    Hub,
    Measurement,
    PollDriver,
    PushDriver,
    ReportsStatus,
    ScanCommand,
    ScanConfig,
    SerialLine,
    UsageError,
)
from citygate.ha_classes import ha_warnings
from citygate.status import status_report

if TYPE_CHECKING:
    from citygate.lines import LineOwner

DEFAULT_CONFIG = Path("/etc/citygate/gateway.toml")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("citygate")


def _parser(scans: Mapping[str, ScanCommand]) -> argparse.ArgumentParser:
    """The command line; ``scans``: the ``citygate scan`` subcommands the drivers declare."""
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

    p = sub.add_parser("top", help="a live view of the running agent (from data_dir)")
    with_config(p)

    sub.add_parser("drivers", help="list installed drivers")

    p = sub.add_parser("scan", help="discover devices; the Modbus byte-order assistant")
    scan = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for name, command in scans.items():
        s = scan.add_parser(name, help=command.help)
        with_config(s)
        command.add_arguments(s)

    p = sub.add_parser("cmd", help="send a remote command to a gateway and print its reply")
    p.add_argument("gateway", help="the gateway's id")
    p.add_argument("name", help="status, read, write, …")
    p.add_argument("--device", help="the device the command is about")
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="K=V",
        help="an argument (V is read as JSON when it can be: 230.5, true; else a string)",
    )
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST[:PORT], mqtts://…")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default %(default)s)")
    p.add_argument("--prefix", default="city", help="the topic prefix (default %(default)s)")

    from citygate.sink.command import add_arguments as sink_arguments

    p = sub.add_parser("sink", help="the reference consumer: data messages into PostgreSQL")
    sink_arguments(p)

    p = sub.add_parser(
        "demo", help="the zero-setup tour: simulators, a broker, the agent, live readings"
    )
    p.add_argument("--broker", metavar="URL", help="use this broker instead of the embedded one")
    p.add_argument(
        "--homeassistant",
        action="store_true",
        help="also publish Home Assistant discovery for the demo devices",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``citygate`` script."""
    args_given = sys.argv[1:] if argv is None else list(argv)
    # Drivers are imported only for `citygate scan`: the other commands start fast.
    scans = registry.scan_commands() if args_given[:1] == ["scan"] else {}
    parser = _parser(scans)
    try:
        args = parser.parse_args(args_given)
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
        if command == "top":
            return _top(args.config)
        if command == "drivers":
            return _drivers()
        if command == "scan":
            return _scan(args, scans)
        if command == "cmd":
            from citygate.remote import send_command

            return send_command(args)
        if command == "sink":
            from citygate.sink.command import run_sink

            return run_sink(args)
        if command == "demo":
            from citygate.demo import run_demo

            return run_demo(broker=args.broker, homeassistant=args.homeassistant)
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
    from citygate.app import serve

    return serve(config, registry.factories())


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
        "broker": ", ".join(m.urls)
        if m.urls
        else f"{'mqtts' if m.tls else 'mqtt'}://{m.host}:{m.port}",
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
            print(f"{exc.count} error(s); nothing was started", file=sys.stderr)
        return EXIT_USAGE
    from citygate import sizing

    summary = _summary(config)
    sized = sizing.size(config, registry.factories())
    all_warnings = [*config.warnings, *ha_warnings(config)]
    if as_json:
        warnings = [
            {"file": str(p.file), "line": p.line, "col": p.col, "message": p.message}
            for p in all_warnings
        ]
        document = {"ok": True, "warnings": warnings, **summary, "sizing": sized.to_json()}
        print(json.dumps(document, indent=2))
        return EXIT_OK
    for warning in all_warnings:
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
    for line in sizing.summary_lines(sized):
        print(line)
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

    async def first_sample(driver: PushDriver, hub: Hub | None) -> Sequence[Measurement]:
        # A push device (BLE, wmbus): wait up to one interval for its first sample.
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

    meter: dict[str, Any] = {}  # the driver's identity facts (status "meter"), if any

    async def read_once() -> list[Any]:
        from citygate.lines import LineOwner
        from citygate.normalise import Normaliser

        hub: Hub | None = None
        make_hub = registry.hub_factory(factory)
        make_receiver = registry.receiver_factory(factory)
        receiver = config.wmbus.get(str(device.options.get("receiver")))
        if make_hub is not None and config.ble is not None:
            hub = make_hub(config.ble)
        elif make_receiver is not None and receiver is not None:
            hub = make_receiver(receiver)  # this device's [[wmbus]] receiver, for this read
        if hub is not None:
            print(
                f"{device.id}: waiting up to {device.interval + 10.0:g} s for it to send "
                "(Ctrl-C stops)",
                file=sys.stderr,
            )
        # The driver runs alone: private owners of the config's lines, closed after.
        drivers_by_line: dict[str, str] = {}
        for d in config.devices:
            if isinstance(d.options.get("serial"), str):
                drivers_by_line.setdefault(d.options["serial"], d.driver)
        lines = {
            line_id: LineOwner(line, protocol=drivers_by_line.get(line_id))
            for line_id, line in config.serial.items()
        }
        context = DeviceContext(
            device_id=device.id,
            interval=device.interval,
            config_dir=device.source.parent,
            serial_lines=config.serial,
            labels=device.labels,
            lines=lines,
            hub=hub,
        )
        try:
            driver = factory.create(device.driver_config, context)
            async with driver:
                if isinstance(driver, PollDriver):
                    async with asyncio.timeout(max(10.0, device.interval * 2)):
                        measurements = await driver.poll()
                else:
                    measurements = await first_sample(driver, hub)
                if isinstance(driver, ReportsStatus):
                    meter.update(driver.status_facts().get("meter") or {})
        finally:
            for owner in lines.values():
                owner.close()
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
                    **({"meter": meter} if meter else {}),
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
    if meter:
        print("meter: " + ", ".join(f"{key} {value}" for key, value in meter.items()))
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
    report = status_report([d.id for d in config.devices], stats, statuses)
    devices: dict[str, Any] = report["devices"]
    oldest_age = report["oldest_unsent_age_s"]
    if as_json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"backlog   {stats.backlog_samples} samples, {stats.backlog_bytes} bytes")
    print(f"oldest    {'-' if oldest_age is None else f'{oldest_age:.1f} s ago'}")
    print(f"dropped   {stats.dropped_samples} samples")
    if report["refused_samples"]:
        print(f"refused   {report['refused_samples']} samples (by the broker; still buffered)")
    for device_id, d in devices.items():
        last = "-" if d["last_sample"] is None else f"{now - d['last_sample']:.0f} s ago"
        error = f"  ({d['error']})" if d["error"] else ""
        print(f"  {device_id:<24} {d['state']:<8} last sample {last}{error}")
    return EXIT_OK


# ---------------------------------------------------------------------------- top


def _top(path: Path) -> int:
    config = _load(path)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            "citygate top: needs a terminal (for a one-shot report: citygate status)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from citygate.top import run_top

    return asyncio.run(run_top(config))


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


class _ScanContext:
    """What the runtime gives a driver's scan command (a ScanContext): the config,
    loaded when first asked, and private owners of its lines, closed by :meth:`close`."""

    def __init__(self, path: Path, driver: str) -> None:
        self.out: TextIO = sys.stdout
        self.err: TextIO = sys.stderr
        self._path = path
        self._driver = driver
        self._config: Config | None = None
        self._owners: dict[str, LineOwner] = {}

    def _loaded(self) -> Config:
        if self._config is None:
            self._config = _load(self._path)
        return self._config

    def has_config(self) -> bool:
        return self._path.exists()

    def config(self) -> ScanConfig:
        config = self._loaded()
        return ScanConfig(
            path=config.path,
            serial_lines=config.serial,
            ble=config.ble,
            device_configs=[d.driver_config for d in config.devices if d.driver == self._driver],
            wmbus=config.wmbus,
        )

    def serial_line(self, line_id: str) -> SerialLine:
        config = self._loaded()
        line = config.serial.get(line_id)
        if line is None:
            known = ", ".join(sorted(config.serial)) or "none"
            raise UsageError(f"no [[serial]] line {line_id!r} in {config.path} (lines: {known})")
        if line_id not in self._owners:
            from citygate.lines import LineOwner

            self._owners[line_id] = LineOwner(line, protocol=self._driver)
        return self._owners[line_id]

    def setup_logging(self, level: str) -> None:
        logs.setup(level)

    def close(self) -> None:
        """Close the lines handed out (in the event loop that used them)."""
        for owner in self._owners.values():
            owner.close()


def _scan(args: argparse.Namespace, commands: Mapping[str, ScanCommand]) -> int:
    command = commands[args.kind]
    context = _ScanContext(args.config, args.kind)

    async def scan() -> int:
        try:
            return await command.run(args, context)
        finally:
            context.close()

    return asyncio.run(scan())


if __name__ == "__main__":
    sys.exit(main())
