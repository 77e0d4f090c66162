"""Wire time of a full M-Bus readout per meter, against the frame bytes' theoretical time.

``python -m tests.drivers.mbus.bench_wire`` (or :func:`bench_readout` from
``make bench``): the mbus driver reads simulated water meters over a pty paced
like a 2400 baud 8E1 line (11 bits a character). For each meter kind (1, 2 and
3 telegrams a readout) it measures a steady-state poll (after the link reset)
and sets it against:

* ``bytes_s``: the frame bytes alone (requests + answers) × 11 / baud;
* ``protocol_s``: plus what the protocol adds (each answer's turnaround and
  the line's silent interval before each request).

The rest (``overhead``) is the cost of the event loop, the pty and the driver.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from citygate.drivers.api import DeviceContext, SerialLineConfig
from citygate.drivers.mbus.driver import MbusFactory
from citygate.lines import LineOwner

__all__ = ["ReadoutFigure", "bench_readout", "main"]


@dataclass(frozen=True, slots=True)
class ReadoutFigure:
    """One meter kind's readout at one baud rate."""

    telegrams: int
    request_bytes: int
    reply_bytes: int
    bytes_s: float
    protocol_s: float
    measured_s: float
    overhead: float
    """measured / bytes time − 1."""


async def _measure(telegrams: int, baudrate: int, runs: int) -> ReadoutFigure:
    from citygate_sim.mbus import MbusSimulator, WaterMeter

    meter = WaterMeter(12345678, 5, telegrams=telegrams, seed=telegrams)
    meter.freeze()
    async with MbusSimulator([meter], baudrate=baudrate) as sim:
        line = SerialLineConfig("mbus", sim.port, baudrate, "N", 1, 8, 1.0)
        owner = LineOwner(line, protocol="mbus")
        factory = MbusFactory()
        with tempfile.TemporaryDirectory() as tmp:
            context = DeviceContext(
                "bench", 900.0, Path(tmp), serial_lines={"mbus": line}, lines={"mbus": owner}
            )
            config = factory.configure({"serial": "mbus", "address": 5}, context)
            try:
                async with factory.create(config, context) as driver:
                    await driver.poll()  # SND_NKE and the first readout
                    times = []
                    received, sent = sim.bytes_received, sim.bytes_sent
                    for _ in range(runs):
                        started = time.perf_counter()
                        await driver.poll()
                        times.append(time.perf_counter() - started)
            finally:
                owner.close()
        request_bytes = (sim.bytes_received - received) // runs
        reply_bytes = (sim.bytes_sent - sent) // runs
    char = 11 / baudrate
    bytes_s = (request_bytes + reply_bytes) * char
    protocol_s = bytes_s + telegrams * (sim.turnaround + line.silent_interval)
    measured = statistics.median(times)
    return ReadoutFigure(
        telegrams,
        request_bytes,
        reply_bytes,
        round(bytes_s, 4),
        round(protocol_s, 4),
        round(measured, 4),
        round(measured / bytes_s - 1, 3),
    )


def bench_readout(
    baudrate: int = 2400, telegrams: tuple[int, ...] = (1, 2, 3), runs: int = 3
) -> list[ReadoutFigure]:
    """One :class:`ReadoutFigure` per meter kind (telegrams a readout)."""
    return [asyncio.run(_measure(n, baudrate, runs)) for n in telegrams]


def main() -> None:
    """Print the figures as a table."""
    print("M-Bus readout at 2400 baud 8E1: wire time per meter")
    print("telegrams  bytes (req+rsp)  bytes time  + protocol  measured  overhead")
    for f in bench_readout():
        print(
            f"{f.telegrams:>9}  {f.request_bytes:>5} + {f.reply_bytes:<6}  "
            f"{f.bytes_s * 1000:>8.0f} ms  {f.protocol_s * 1000:>7.0f} ms  "
            f"{f.measured_s * 1000:>5.0f} ms  {f.overhead:>+7.1%}"
        )


if __name__ == "__main__":
    main()
