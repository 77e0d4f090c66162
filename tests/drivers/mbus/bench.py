"""M-Bus decoder throughput for ``make bench`` (``python -m tests.drivers.mbus.bench``).

Decodes the 72 real telegrams of vectors/frames (link layer + application layer +
measurements) in a loop; reports telegrams per second, and the wire time the same
telegrams take at 2400 baud, for scale.
"""

from __future__ import annotations

import time

from citygate.drivers.mbus.decode import decode_frame, to_measurements
from citygate.drivers.mbus.link import Frame, FrameDecoder, wire_time
from tests.drivers.mbus.libmbus import FRAMES


def _telegrams() -> list[bytes]:
    return [bytes.fromhex(p.read_text()) for p in sorted(FRAMES.glob("*.hex"))]


def bench_decode(seconds: float = 1.0) -> float:
    """Telegrams per second: split from a stream, decoded, turned into measurements."""
    telegrams = _telegrams()
    decoded = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or not decoded:
        decoder = FrameDecoder()
        for raw in telegrams:
            decoder.feed(raw)
            event = decoder.next_event()
            assert isinstance(event, Frame)
            to_measurements(decode_frame(event))
        decoded += len(telegrams)
    return decoded / elapsed


def main() -> None:
    """Print the figures."""
    telegrams = _telegrams()
    mean_bytes = sum(map(len, telegrams)) / len(telegrams)
    rate = bench_decode()
    print(f"mbus decode: {rate:.0f} telegrams/s ({1e6 / rate:.0f} µs each)")
    print(
        f"mbus wire: a mean telegram of {mean_bytes:.0f} bytes takes "
        f"{wire_time(round(mean_bytes), 2400) * 1000:.0f} ms at 2400 baud 8E1"
    )


if __name__ == "__main__":
    main()
