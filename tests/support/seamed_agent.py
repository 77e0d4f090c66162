"""`citygate run`, with the seams the tests need, for tests that run the agent as a process.

    python -m tests.support.seamed_agent --config gateway.toml [--wedge-file PATH]
        [--clock-offset-file PATH] [--metrics-interval SECONDS]

It goes the way `citygate run` goes (agent/cli.py): load the config, then
:func:`citygate.app.serve` (logging, signals, sd_notify, exit status), only with these seams
given to the Agent:

* ``--wedge-file``: the publisher's data loop hangs for good once that file exists (as a lost
  wake-up would), through the Agent's ``before_fetch``;
* ``--clock-offset-file``: the agent's wall clock is the machine's plus the seconds in that
  file (re-read at every call; missing or unreadable: 0), through the Agent's ``timebase``;
* ``--metrics-interval``: seconds between metrics messages (the spec's period is 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from citygate import registry
from citygate.app import serve
from citygate.clock import SystemTimebase
from citygate.config import load
from citygate.mqtt.announce import METRICS_INTERVAL_S

log = logging.getLogger("citygate")


class OffsetTimebase(SystemTimebase):
    """The machine's clocks, with the wall clock shifted by the seconds held in ``offset_file``,
    re-read at every call: a test jumps the agent's wall clock without touching the system's."""

    def __init__(self, offset_file: Path) -> None:
        super().__init__()
        self.offset_file = offset_file

    def wall(self) -> float:
        try:
            offset = float(self.offset_file.read_text(encoding="ascii").strip() or 0.0)
        except (OSError, ValueError):
            offset = 0.0
        return super().wall() + offset


def wedge_when(path: Path) -> Callable[[], Awaitable[None]]:
    """A ``before_fetch`` that never returns once ``path`` exists."""

    async def hang_once_wedged() -> None:
        if path.exists():  # a stat, once per fetch: tests only
            await asyncio.Event().wait()

    return hang_once_wedged


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.support.seamed_agent")
    parser.add_argument("-c", "--config", type=Path, required=True)
    parser.add_argument("--wedge-file", type=Path)
    parser.add_argument("--clock-offset-file", type=Path)
    parser.add_argument("--metrics-interval", type=float, default=METRICS_INTERVAL_S)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; the exit status of `citygate run`."""
    args = _parser().parse_args(argv)
    config = load(args.config, registry.factories())
    return serve(
        config,
        registry.factories(),
        timebase=None if args.clock_offset_file is None else OffsetTimebase(args.clock_offset_file),
        metrics_interval=args.metrics_interval,
        before_fetch=None if args.wedge_file is None else wedge_when(args.wedge_file),
    )


if __name__ == "__main__":
    sys.exit(main())
