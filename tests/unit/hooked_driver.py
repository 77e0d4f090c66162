"""A stand-in plugin that declares the ``scan`` hook (tests only): ``citygate scan echo``.

The command prints what the runtime handed it: the line owner of ``--serial`` and the
configs of the config's ``echo`` devices, so a test sees the runtime's side of the hook.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from citygate.drivers.api import (
    DeviceContext,
    DriverFactory,
    Field,
    HubFactory,
    Measurement,
    ScanContext,
    SerialLine,
    UsageError,
)


class EchoScan:
    """``citygate scan echo [--serial ID] [--word WORD]``."""

    help: Final = "Echo: say what the runtime handed over"

    def __init__(self) -> None:
        self.lines: list[SerialLine] = []  # what the runtime handed over, in process

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--serial", metavar="ID")
        parser.add_argument("--word", default="hello")

    async def run(self, args: argparse.Namespace, context: ScanContext) -> int:
        if args.word == "bad":
            raise UsageError("--word must not be bad")
        if args.serial is not None:
            line = context.serial_line(args.serial)
            self.lines.append(line)
            print(args.word, line.config.id, line.config.port, file=context.out)
        if context.has_config():
            print("devices", len(context.config().device_configs), file=context.out)
        print("done", file=context.err)
        return 0


class EchoDriver:
    async def __aenter__(self) -> EchoDriver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def poll(self) -> list[Measurement]:
        return [Measurement("echo", 1.0, "W")]


class EchoFactory:
    """The ``echo`` driver: a poll driver with a scan command and no hub."""

    name = "echo"
    version = "0"
    default_interval = 1.0
    fields: Mapping[str, Field] = {}
    hub: HubFactory | None = None
    scan: Final = EchoScan()

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> Mapping[str, Any]:
        return dict(options)

    def create(self, config: Any, context: DeviceContext) -> EchoDriver:
        return EchoDriver()


echo = EchoFactory()

if TYPE_CHECKING:
    _: DriverFactory = echo
