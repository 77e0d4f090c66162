"""``citygate-sim mbus``: M-Bus water meters on a pseudo-terminal.

    citygate-sim mbus [--link PATH] [--baudrate 2400] --unit 5=12345678 \\
        --unit 6=12345699:telegrams=2 --unit 0=87654321:medium=warm_water,manufacturer=ABB

Prints ``serial port PATH`` once ready (open it with parity N: a pty refuses E).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .. import _cli as common
from ._encode import MEDIUM_CODES
from ._line import MbusSimulator
from ._meter import WaterMeter

__all__ = ["add_parser", "serve"]

_OPTIONS: dict[str, Callable[[str], Any]] = {
    "telegrams": int,
    "medium": str,
    "manufacturer": str,
    "version": int,
    "unknown_vif": lambda s: s.lower() in ("1", "true", "yes"),
}


def _meter_spec(text: str) -> tuple[int, int, dict[str, Any]]:
    head, _, rest = text.partition(":")
    address_text, separator, ident_text = head.partition("=")
    if not separator or not address_text.isdigit() or not ident_text.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected ADDRESS=ID[:key=value,...], e.g. 5=12345678:telegrams=2"
        )
    address, ident = int(address_text), int(ident_text)
    if not 0 <= address <= 250 or len(ident_text) > 8:
        raise argparse.ArgumentTypeError(f"{text!r}: address 0-250, id of at most 8 digits")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        convert = _OPTIONS.get(key)
        if convert is None:
            raise argparse.ArgumentTypeError(f"{text!r}: options are {', '.join(_OPTIONS)}")
        try:
            options[key] = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: bad value for {key}") from None
    return address, ident, options


def add_parser(commands: Any) -> None:
    """Add the ``mbus`` subcommand to ``citygate-sim``'s subparsers."""
    mbus = commands.add_parser(
        "mbus",
        help="M-Bus water meters on one line (a pseudo-terminal)",
        description="Serve wired M-Bus meters on a pty (open it with parity N). "
        f"Media: {', '.join(MEDIUM_CODES)}.",
    )
    mbus.add_argument("--link", help="keep a symlink at this path pointing at the pty")
    mbus.add_argument("--baudrate", type=int, default=2400, help="pacing (default 2400, 8E1)")
    mbus.add_argument(
        "--unit",
        dest="meters",
        action="append",
        type=_meter_spec,
        metavar="ADDRESS=ID[:key=value,...]",
        help="a meter at primary ADDRESS with identification number ID; options: "
        "telegrams=N, medium=M, manufacturer=ABC, version=N, unknown_vif=1 "
        "(repeatable; default 5=12345678)",
    )
    mbus.add_argument("--speed", type=float, default=1.0, help="simulated time multiplier")
    mbus.add_argument("--seed", type=int, default=0, help="base seed (each meter gets its own)")
    mbus.add_argument("-v", "--verbose", action="store_true", help="log every request")


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``citygate-sim mbus`` until SIGINT/SIGTERM; the exit status."""
    if args.baudrate <= 0:
        parser.error("--baudrate must be positive")
    if args.speed <= 0:
        parser.error("--speed must be positive")
    specs: list[tuple[int, int, dict[str, Any]]] = args.meters or [(5, 12345678, {})]
    meters: list[WaterMeter] = []
    for index, (address, ident, options) in enumerate(specs):
        try:
            meters.append(
                WaterMeter(
                    ident, address, seed=args.seed * 1000 + index, speed=args.speed, **options
                )
            )
        except (ValueError, TypeError) as error:
            parser.error(f"meter {address}={ident}: {error}")
    simulator = MbusSimulator(meters, baudrate=args.baudrate, link=args.link)
    return common.run(
        simulator,
        lambda: f"serial port {simulator.port}",
        f"cannot open {args.link or 'a pty'}",
    )
