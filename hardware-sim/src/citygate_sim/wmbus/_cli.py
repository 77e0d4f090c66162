"""``citygate-sim wmbus``: an iM871A wireless M-Bus stick with meters around it, on a pty.

    citygate-sim wmbus [--link PATH] [--fast N] [--corrupt-rate R] [--record FILE] [--seed N]

Prints ``serial port PATH`` once ready, then one line per meter (id, medium, radio
mode, interval, key): open the port at 57600 baud, 8N1.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import _cli as common
from ._meters import DEMO_METERS
from ._stick import WmbusSimulator

__all__ = ["add_parser", "serve"]


def add_parser(commands: Any) -> None:
    """Add the ``wmbus`` subcommand to ``citygate-sim``'s subparsers."""
    wmbus = commands.add_parser(
        "wmbus",
        help="a wireless M-Bus stick (IMST iM871A) hearing water and heat meters (a pty)",
        description="Serve a simulated iM871A on a pty (57600 baud): it answers ping, device"
        " info and set-config (link mode T1/C1/S1, RSSI) and forwards the telegrams of two"
        " water meters (one AES mode 5, one plain) and an encrypted heat meter.",
    )
    wmbus.add_argument("--link", help="keep a symlink at this path pointing at the pty")
    wmbus.add_argument(
        "--fast",
        type=float,
        default=1.0,
        metavar="N",
        help="run the meters N times faster: intervals (16 s, 2 min) and consumption",
    )
    wmbus.add_argument(
        "--corrupt-rate",
        type=float,
        default=0.0,
        metavar="R",
        help="share of telegrams delivered damaged (bad CRC), 0..1 (default 0)",
    )
    wmbus.add_argument(
        "--record", metavar="FILE", help="also write every telegram as a replay capture (JSONL)"
    )
    wmbus.add_argument("--seed", type=int, default=0, help="seed (meters, jitter, damage)")
    wmbus.add_argument("-v", "--verbose", action="store_true", help="log every request")


def _meter_lines() -> str:
    lines = []
    for spec in DEMO_METERS:
        key = f"key {spec.key.hex().upper()}" if spec.key is not None else "no key"
        lines.append(
            f"meter {spec.ident:08d} {spec.kind} {spec.mode} every {spec.interval:g} s"
            f" {spec.manufacturer} version {spec.version} {key}"
        )
    return "\n".join(lines)


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``citygate-sim wmbus`` until SIGINT/SIGTERM; the exit status."""
    if not 0 < args.fast < float("inf"):
        parser.error("--fast must be a positive number")
    if not 0.0 <= args.corrupt_rate <= 1.0:
        parser.error("--corrupt-rate must be within 0..1")
    simulator = WmbusSimulator(
        DEMO_METERS,
        fast=args.fast,
        corrupt_rate=args.corrupt_rate,
        seed=args.seed,
        link=args.link,
        record=args.record,
    )
    return common.run(
        simulator,
        lambda: f"serial port {simulator.port}\n{_meter_lines()}",
        f"cannot open {args.link or 'a pty'}",
    )
