"""``python -m tests.bench [--quick] [e2e|pipeline|buffer|backlog ...]``: see the package doc."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tests.bench.procs import BENCH_DIR, load_average
from tests.bench.report import PartResult, table, write_json

# Imported when their turn comes: a part that cannot be imported fails alone.
PARTS: dict[str, str] = {
    "e2e": "tests.bench.e2e",
    "pipeline": "tests.bench.pipeline",
    "buffer": "tests.bench.buffer",
    "backlog": "tests.bench.backlog",
    "rtu": "tests.bench.rtu",  # issue 4: Modbus RTU wire time and isolation
    "modbus_tcp": "tests.bench.modbus_tcp",  # issue 11: TCP client CPU per request
    "mbus": "tests.bench.mbus",  # issue 5: decoder throughput, readout wire time
    "ble": "tests.drivers.ble.bench_part",  # BLE advert decoding rate and CPU
    "broker": "tests.bench.broker",  # issue 11: back after an outage, RSS under a flood
    "framer": "tests.bench.framer",  # issue 12: framers' CPU per KB of a babbling device
    "wire": "tests.bench.wire",  # issue 13: bytes per reading, SenML JSON and CBOR
    "commands": "tests.bench.commands",  # issue 14: read round trip, TCP and busy RTU line
    "sdwear": "tests.bench.sdwear",  # issue 16: bytes stored and written per sample/reading
    "wmbus": "tests.bench.wmbus",  # issue 17: telegrams decoded/s, CPU at 1,000 meters
}


def _part(name: str) -> Callable[..., PartResult]:
    run: Callable[..., PartResult] = importlib.import_module(PARTS[name]).run
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench", description="citygate performance figures (make bench)"
    )
    parser.add_argument(
        "parts", nargs="*", metavar="PART", help=f"{', '.join(PARTS)} (default: all)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short windows, fewer runs (~2.5 min; all parts in full: ~20 min, mostly outages)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=BENCH_DIR / "latest.json",
        help="where the results go (default: %(default)s)",
    )
    parser.add_argument(
        "--pipeline-profile",
        type=Path,
        metavar="FILE",
        help="write cProfile stats of the overloaded pipeline agent to FILE (pstats format;"
        " profiling slows that run, so its figure is not comparable)",
    )
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    chosen = list(dict.fromkeys(args.parts)) or list(PARTS)
    load = load_average()
    print(
        f"citygate bench: {', '.join(chosen)}{' (quick)' if args.quick else ''}; "
        f"load average {load[0]:.2f} (other work on this machine skews the figures)",
        flush=True,
    )
    results: list[PartResult] = []
    for name in chosen:
        print(f"-- {name} ...", flush=True)
        started = time.monotonic()
        load_before = load_average()
        try:
            if name == "pipeline" and args.pipeline_profile is not None:
                result = _part(name)(args.quick, profile=args.pipeline_profile.resolve())
            else:
                result = _part(name)(args.quick)
        except Exception as exc:
            result = PartResult(name, error=f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        result.seconds = time.monotonic() - started
        result.details["load_average_before_after"] = [load_before[0], load_average()[0]]
        results.append(result)
        print(f"   {name} took {result.seconds:.0f} s", flush=True)
        write_json(args.json, results, sys.argv)  # what is done so far survives a later failure
    print()
    print(table(results))
    print(f"\nresults: {args.json}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
