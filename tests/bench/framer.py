"""Reply framers under a babbling device (issue 12): CPU per KB of garbage.

``run(quick)`` is a bench part. Garbage is fed in 32-byte chunks, as a serial
adapter delivers it, to one framer that never gets its reply (the worst case: a
reply would end the exchange). The cost per KB must stay flat from 1 KB to
1 MB: the Modbus RTU framer used to re-scan every byte held on every feed
(quadratic: 11.5 KB took 12.9 s). ``python -m tests.bench.framer`` prints the
figures alone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from citygate.drivers.mbus.link import FrameDecoder, NeedData
from citygate.drivers.modbus.rtu import RtuReplyFramer
from tests.bench.report import PartResult

SIZES = (1024, 100 * 1024, 1024 * 1024)
CHUNK = 32
UNIT = 1


def _label(size: int) -> str:
    return f"{size // 1024 // 1024} MB" if size >= 1024 * 1024 else f"{size // 1024} KB"


def random_garbage(size: int) -> bytes:
    """Random bytes in which no frame of unit 1 starts (no verdict cuts the feed short)."""
    return random.Random(size).randbytes(size).replace(bytes((UNIT,)), b"\x00")


def worst_garbage(size: int) -> bytes:
    """``03 FF`` over and over: every other byte starts a 260-byte frame to check."""
    return (b"\x03\xff" * (size // 2 + 1))[:size]


def rtu_feeder(data: bytes) -> Callable[[], int]:
    """Feed ``data`` to an RTU framer (FC 03, unit 1); return its scan steps."""

    def feed() -> int:
        framer = RtuReplyFramer(UNIT, 0x03, 2)
        for start in range(0, len(data), CHUNK):
            framer.feed(data[start : start + CHUNK])
        return framer.scan_steps

    return feed


def mbus_feeder(data: bytes) -> Callable[[], int]:
    """Feed ``data`` to the M-Bus frame decoder, taking its events; return their count."""

    def feed() -> int:
        decoder = FrameDecoder()
        events = 0
        for start in range(0, len(data), CHUNK):
            decoder.feed(data[start : start + CHUNK])
            while not isinstance(decoder.next_event(), NeedData):
                events += 1
        return events

    return feed


def cpu_us_per_kb(feed: Callable[[], int], size: int) -> tuple[float, int]:
    """CPU microseconds per KB of one run of ``feed``, and what it returned."""
    started = time.process_time()
    work = feed()
    return (time.process_time() - started) * 1e6 / (size / 1024), work


def run(quick: bool) -> PartResult:
    result = PartResult("framer")
    cases: list[tuple[str, Callable[[int], bytes], Callable[[bytes], Callable[[], int]]]] = [
        ("RTU framer, random garbage", random_garbage, rtu_feeder),
        ("RTU framer, worst-case garbage", worst_garbage, rtu_feeder),
        ("M-Bus decoder, random garbage", random_garbage, mbus_feeder),
    ]
    for name, make, feeder in cases:
        sizes = SIZES[:2] if quick and "worst" in name else SIZES
        costs: dict[int, float] = {}
        for size in sizes:
            cost, work = cpu_us_per_kb(feeder(make(size)), size)
            costs[size] = cost
            unit = "scan steps" if feeder is rtu_feeder else "events"
            result.add(
                f"{name}, {_label(size)}",
                cost,
                "µs CPU/KB",
                note=f"{work / size:.2f} {unit} per byte",
            )
        largest = max(costs)
        result.add(
            f"{name}: cost per KB at {_label(largest)} / at 1 KB",
            costs[largest] / costs[SIZES[0]] if costs[SIZES[0]] else None,
            "x",
            at_most=2.0,
            note="flat: linear in the bytes fed",
        )
    return result


if __name__ == "__main__":
    from tests.bench.report import table

    print(table([run(quick=False)]))
