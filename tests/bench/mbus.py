"""M-Bus (issue 5): decoder throughput and the wire time of a full readout.

``run(quick)`` is a bench part. The readout runs the real driver against the
M-Bus simulator on a pseudo-terminal paced like a 2400 baud line (11 bits a
character on a real 8E1 line); the theoretical time is the frame bytes alone.
"""

from __future__ import annotations

from tests.bench.report import PartResult
from tests.drivers.mbus.bench import bench_decode
from tests.drivers.mbus.bench_wire import bench_readout


def run(quick: bool) -> PartResult:
    result = PartResult("mbus")
    rate = bench_decode(seconds=0.5 if quick else 2.0)
    result.add("decoder throughput (72 real telegrams)", rate, "telegrams/s", at_least=1000)
    for figure in bench_readout(runs=2 if quick else 3):
        result.add(
            f"readout of {figure.telegrams} telegram(s) at 2400 baud",
            figure.measured_s * 1000,
            "ms",
            note=(
                f"frame bytes alone {figure.bytes_s * 1000:.0f} ms "
                f"({figure.request_bytes} + {figure.reply_bytes} bytes), with the slave's "
                f"turnaround and the line's silence {figure.protocol_s * 1000:.0f} ms"
            ),
        )
    return result
