"""``citygate-sim``: run hardware simulators from the command line.

    citygate-sim modbus-tcp [--host 127.0.0.1] [--port 5020] --unit 1=sdm630 \\
        --unit 2=sdm120 [--speed 1] [--seed N] [--unmapped exception|zero|zero_in_map]
    citygate-sim modbus-rtu [--link PATH] [--baudrate 9600] [--turnaround 0.005] \\
        --unit 1=sdm630 --unit 2=em24 ...
    citygate-sim mbus [--link PATH] [--baudrate 2400] --unit 5=12345678 \\
        --unit 6=12345699:telegrams=2 ...
    citygate-sim wmbus [--link PATH] [--fast N] [--corrupt-rate R] [--record FILE]

Prints exactly one line to stdout once ready, ``listening on HOST:PORT`` (TCP) or
``serial port PATH`` (RTU, M-Bus, wireless M-Bus: the pty, or the link to it; wmbus then
lists its meters, one a line); logs go to stderr
(requests at debug level, ``-v``). Exits 0 on SIGINT or SIGTERM, 2 on a usage
error, 1 if it cannot listen.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from citygate_sim import _cli as common
from citygate_sim.mbus import _cli as mbus_cli
from citygate_sim.modbus import (
    MODELS,
    UNMAPPED_POLICIES,
    Meter,
    ModbusRtuSimulator,
    ModbusTcpSimulator,
    make_meter,
)
from citygate_sim.wmbus import _cli as wmbus_cli

logger = logging.getLogger("citygate_sim")

_SEED_STRIDE = 1000


def _unit_spec(text: str) -> tuple[int, str]:
    unit_text, separator, model = text.partition("=")
    if not separator or not unit_text.strip().isdigit() or not model:
        raise argparse.ArgumentTypeError(f"{text!r}: expected UNIT=MODEL, e.g. 1=sdm630")
    unit = int(unit_text)
    if not 0 <= unit <= 255:
        raise argparse.ArgumentTypeError(f"{text!r}: unit id outside 0..255")
    return unit, model.strip()


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number")
    return value


def _add_meter_arguments(parser: argparse.ArgumentParser) -> None:
    """``--unit``, ``--speed`` and ``--seed``: the meters a Modbus command serves."""
    parser.add_argument(
        "--unit",
        dest="units",
        action="append",
        type=_unit_spec,
        metavar="UNIT=MODEL",
        help="serve MODEL at unit id UNIT (repeatable; default 1=sdm630)",
    )
    parser.add_argument("--speed", type=_positive, default=1.0, help="simulated time multiplier")
    parser.add_argument("--seed", type=int, default=0, help="base seed (each unit gets its own)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citygate-sim", description="Hardware simulators for citygate."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tcp = commands.add_parser(
        "modbus-tcp",
        help="Modbus TCP energy meters",
        description=f"Serve simulated meters over Modbus TCP. Models: {', '.join(MODELS)}.",
    )
    tcp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    tcp.add_argument("--port", type=int, default=5020, help="TCP port; 0 picks a free one")
    _add_meter_arguments(tcp)
    tcp.add_argument(
        "--unknown-unit",
        choices=("silent", "gateway_error"),
        default="silent",
        help="answer to unit ids nobody serves: none, or exception 0x0B",
    )
    tcp.add_argument(
        "--unmapped",
        choices=UNMAPPED_POLICIES,
        default=None,
        help="reads over unmapped registers: exception 02 (a strict meter), zeros, or"
        " zeros inside the documented map and 02 beyond it (default: the model's;"
        " Eastron zero_in_map, others exception)",
    )
    tcp.add_argument("-v", "--verbose", action="store_true", help="log every request")

    rtu = commands.add_parser(
        "modbus-rtu",
        help="Modbus RTU energy meters on one RS-485 line (a pseudo-terminal)",
        description=f"Serve meters over Modbus RTU on a pty. Models: {', '.join(MODELS)}.",
    )
    rtu.add_argument("--link", help="keep a symlink at this path pointing at the pty")
    rtu.add_argument("--baudrate", type=int, default=9600, help="pacing of the line (default 9600)")
    rtu.add_argument("--parity", choices=("N", "E", "O"), default="N", help="for pacing only")
    rtu.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    rtu.add_argument(
        "--turnaround", type=float, default=0.0, help="seconds before a meter answers (default 0)"
    )
    _add_meter_arguments(rtu)
    rtu.add_argument("--unmapped", choices=UNMAPPED_POLICIES, default=None)
    rtu.add_argument("-v", "--verbose", action="store_true", help="log every request")
    mbus_cli.add_parser(commands)
    wmbus_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``citygate-sim``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "mbus":
        return mbus_cli.serve(args, parser)
    if args.command == "wmbus":
        return wmbus_cli.serve(args, parser)
    units: list[tuple[int, str]] = args.units or [(1, "sdm630")]
    meters: dict[int, Meter] = {}
    for unit, model in units:
        if unit in meters:
            parser.error(f"unit {unit} given twice")
        try:
            meters[unit] = make_meter(
                model,
                seed=args.seed * _SEED_STRIDE + unit,
                speed=args.speed,
                unmapped=args.unmapped,
            )
        except ValueError as error:
            parser.error(f"unit {unit}: {error}")
    if args.command == "modbus-rtu":
        if args.baudrate <= 0:
            parser.error("--baudrate must be positive")
        rtu = ModbusRtuSimulator(
            meters,
            baudrate=args.baudrate,
            parity=args.parity,
            stopbits=args.stopbits,
            turnaround=args.turnaround,
            link=args.link,
        )
        return common.run(
            rtu, lambda: f"serial port {rtu.port}", f"cannot listen on {args.link or 'a pty'}"
        )
    tcp = ModbusTcpSimulator(meters, host=args.host, port=args.port, unknown_unit=args.unknown_unit)
    return common.run(
        tcp,
        lambda: f"listening on {tcp.bound_host}:{tcp.port}",
        f"cannot listen on {args.host}:{args.port}",
    )
