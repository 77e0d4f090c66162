"""``python -m citygate_sim.ble``: write simulated adverts as a citygate capture file.

    python -m citygate_sim.ble --out site.jsonl [--seconds 600] [--seed 0]
    python -m citygate_sim.ble --out live.jsonl --live [--speed 1]

Without ``--live`` it writes ``--seconds`` of simulated time at once; with it,
it appends adverts as they happen until SIGINT/SIGTERM. Exit 0 on success, 2 on
a usage error, 1 if the file cannot be written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from citygate_sim.ble import BleSimulator


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m citygate_sim.ble", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="capture file to write")
    parser.add_argument("--seconds", type=float, default=600.0, help="simulated time to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--live", action="store_true", help="append adverts as they happen")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated time multiplier (live)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.speed <= 0:
        parser.error("--seconds and --speed must be positive")
    simulator = BleSimulator(seed=args.seed)
    try:
        if not args.live:
            with args.out.open("w", encoding="utf-8") as stream:
                count = simulator.write_capture(stream, args.seconds)
            print(f"{count} adverts written to {args.out}")
            return 0
        args.out.write_text("", encoding="utf-8")
        print(f"capture file {args.out}", flush=True)
        asyncio.run(_live(simulator, args.out, args.speed))
    except OSError as exc:
        print(f"cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


async def _live(simulator: BleSimulator, path: Path, speed: float) -> None:
    task = asyncio.create_task(simulator.run_live(path, speed=speed))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


if __name__ == "__main__":
    sys.exit(main())
