"""The ``scan`` remote command (mqtt.md "Commands"): a driver's ``citygate scan`` in the agent.

``args`` name the driver and its ``citygate scan <driver>`` options, one key each (``-`` or
``_`` in the name alike): ``{"driver": "modbus", "serial": "rs485", "units": "1-10"}``. A
``true`` value gives a flag (``--secondary``), ``false`` leaves it out, a number or a string
gives the option its value (``--units=1-10``). They become an argument list parsed by the
driver's own parser, so every option means exactly what it means on the command line;
argparse's complaints (an unknown option, a bad value, a missing required one) answer
``bad_request``, and nothing is printed. There is no ``-c``: the scan reads the running
config. An option whose value is a file (``--record``: a :class:`~pathlib.Path`) answers
``forbidden``: no command reads or writes a file.

The scan runs in the agent with a :class:`~citygate.drivers.api.ScanContext` whose
standard output and error are captured (at most :data:`MAX_OUTPUT` characters each) into
the result, ``{"driver", "argv", "exit_status", "stdout", "stderr"}``, plus ``"json"``, the
parsed output, when the command has ``--json`` (always passed then). A scan that fails
(exit status 1) answers ``device_error`` with the end of its error output.

One scan at a time (another answers ``busy``), for at most
:data:`~citygate.commands.SCAN_TIMEOUT_S`. A serial
line the agent polls is scanned through the agent's own line owner: each probe takes its
turn among the line's devices, and the port is never opened twice. A line no running
device uses gets a private owner for the scan, closed after it. A line that carries another
driver's protocol is refused (``bad_request``): one protocol's probes disturb the other's
devices.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, NoReturn, TextIO

from citygate import registry
from citygate.commands import SCAN_TIMEOUT_S, CommandError, Request
from citygate.config import Config
from citygate.drivers.api import (
    DriverFactory,
    ScanCommand,
    ScanConfig,
    SerialLine,
    UsageError,
)
from citygate.lines import LineOwner
from citygate.supervise import describe

log = logging.getLogger(__name__)

MAX_OUTPUT: Final = 64 * 1024
"""Characters kept of a scan's standard output, and of its error output."""
MAX_ERROR: Final = 400
"""Characters of the error output a failed scan's ``device_error`` message carries."""


class _ArgumentError(Exception):
    """argparse refused the arguments (its message)."""


class _Parser(argparse.ArgumentParser):
    """A parser that raises instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _ArgumentError(message or "exited")

    def print_usage(self, file: Any = None) -> None:
        pass  # never to the agent's stdout

    def print_help(self, file: Any = None) -> None:
        pass


class _Capture(io.StringIO):
    """Text written by a scan, kept up to ``limit`` characters (the rest counted)."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        super().__init__()
        self.limit = limit
        self.dropped = 0

    def write(self, text: str) -> int:
        room = self.limit - self.tell()
        if room < len(text):
            self.dropped += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        super().write(text)
        return len(text)


def scan_argv(args: Mapping[str, Any]) -> list[str]:
    """The ``citygate scan`` argument list ``args`` (without ``driver``) stand for."""
    argv: list[str] = []
    for key, value in args.items():
        option = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(option)
        elif isinstance(value, int | float | str):
            argv.append(f"{option}={value}")  # "=": a value that looks like an option stays one
        else:
            raise CommandError(
                "bad_request", f"option {option[:64]}: expected a string, number or bool"
            )
    return argv


def parse_scan_args(command: ScanCommand, driver: str, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by ``command``'s own options, ``json`` set when it has that flag;
    :class:`CommandError` when argparse refuses them or an option names a file."""
    parser = _Parser(prog=f"citygate scan {driver}", add_help=False)
    command.add_arguments(parser)
    try:
        namespace = parser.parse_args(argv)
    except _ArgumentError as exc:
        raise CommandError("bad_request", str(exc)) from None
    for name, value in vars(namespace).items():
        if isinstance(value, Path | io.IOBase):
            raise CommandError(
                "forbidden", f"option --{name.replace('_', '-')}: no remote command uses a file"
            )
    if isinstance(getattr(namespace, "json", None), bool):
        namespace.json = True
    return namespace


class _AgentScanContext:
    """A :class:`~citygate.drivers.api.ScanContext` inside the running agent."""

    def __init__(self, config: Config, driver: str, owners: Mapping[str, LineOwner]) -> None:
        self.captured_out = _Capture()
        self.captured_err = _Capture()
        self._config = config
        self._driver = driver
        self._owners = owners
        self._private: dict[str, LineOwner] = {}

    @property
    def out(self) -> TextIO:
        return self.captured_out

    @property
    def err(self) -> TextIO:
        return self.captured_err

    def has_config(self) -> bool:
        return True

    def config(self) -> ScanConfig:
        config = self._config
        return ScanConfig(
            path=config.path,
            serial_lines=config.serial,
            ble=config.ble,
            device_configs=[d.driver_config for d in config.devices if d.driver == self._driver],
            wmbus=config.wmbus,
        )

    def serial_line(self, line_id: str) -> SerialLine:
        owner = self._owners.get(line_id)
        if owner is not None:
            if owner.protocol is not None and owner.protocol != self._driver:
                raise UsageError(
                    f"serial {line_id} carries {owner.protocol} devices; a {self._driver} scan"
                    " would disturb them"
                )
            return owner  # the agent's own: each probe takes its turn among the devices
        line = self._config.serial.get(line_id)
        if line is None:
            known = ", ".join(sorted(self._config.serial)) or "none"
            raise UsageError(f"no [[serial]] line {line_id!r} (lines: {known})")
        if line_id not in self._private:
            self._private[line_id] = LineOwner(line, protocol=self._driver)
        return self._private[line_id]

    def setup_logging(self, level: str) -> None:
        pass  # the agent's logging is set up already

    def close(self) -> None:
        """Close the private line owners (never the agent's)."""
        for owner in self._private.values():
            owner.close()


class ScanRunner:
    """Runs ``scan`` requests, one at a time, against the agent's current config, driver
    factories and serial line owners (given as callables: a reload replaces them)."""

    def __init__(
        self,
        config: Callable[[], Config],
        factories: Mapping[str, DriverFactory],
        line_owners: Callable[[], Mapping[str, LineOwner]],
        *,
        timeout: float = SCAN_TIMEOUT_S,
    ) -> None:
        self._config = config
        self._factories = factories
        self._line_owners = line_owners
        self.timeout = timeout
        self._running: str | None = None  # the driver being scanned

    async def __call__(self, request: Request) -> dict[str, Any]:
        """The result of the scan ``request.args`` ask for; :class:`CommandError` when
        refused or failed."""
        args = request.args
        if self._running is not None:
            raise CommandError("busy", f"a {self._running} scan is running; one at a time")
        driver = args.get("driver")
        if not isinstance(driver, str):
            raise CommandError("bad_request", '"args.driver": expected a driver name')
        command = self._command(driver)
        argv = scan_argv({k: v for k, v in args.items() if k != "driver"})
        namespace = parse_scan_args(command, driver, argv)
        self._running = driver
        log.info("scan %s: started (%s)", driver, " ".join(argv)[:200] or "no options")
        context = _AgentScanContext(self._config(), driver, self._line_owners())
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                status = await command.run(namespace, context)
        except UsageError as exc:
            raise CommandError("bad_request", str(exc)) from None
        except TimeoutError:
            if deadline.expired():
                raise CommandError(
                    "timeout", f"the {driver} scan did not end within {self.timeout:g} s"
                ) from None
            raise CommandError("device_error", "timed out") from None
        except Exception as exc:  # a driver's scan must never end the command channel
            log.warning("scan %s: failed: %s", driver, describe(exc))
            raise CommandError("device_error", describe(exc)) from None
        finally:
            context.close()
            self._running = None
        return _result(
            driver, argv, status, context, json_output=getattr(namespace, "json", False) is True
        )

    def _command(self, driver: str) -> ScanCommand:
        command = self._scan_command(driver)
        if command is None:
            known = ", ".join(n for n in sorted(self._factories) if self._scan_command(n))
            raise CommandError(
                "bad_request", f"no scan for driver {driver[:64]!r} (scans: {known})"
            )
        return command

    def _scan_command(self, driver: str) -> ScanCommand | None:
        try:
            factory = self._factories.get(driver)
            return None if factory is None else registry.scan_command(factory)
        except Exception as exc:  # a plugin's broken hook: that driver has no scan
            log.warning("scan: driver %s: its scan command cannot be loaded: %s", driver, exc)
            return None


def _result(
    driver: str, argv: list[str], status: int, context: _AgentScanContext, *, json_output: bool
) -> dict[str, Any]:
    out, err = context.captured_out, context.captured_err
    stdout, stderr = out.getvalue(), err.getvalue()
    if status != 0:
        message = stderr.strip()[-MAX_ERROR:] or f"the scan ended with status {status}"
        raise CommandError("device_error", message)
    result: dict[str, Any] = {
        "driver": driver,
        "argv": argv,
        "exit_status": status,
        "stdout": stdout,
        "stderr": stderr,
    }
    if out.dropped or err.dropped:
        result["truncated"] = {"stdout": out.dropped, "stderr": err.dropped}
    if json_output and not out.dropped:
        with contextlib.suppress(ValueError, RecursionError):
            result["json"] = json.loads(stdout)
    return result
