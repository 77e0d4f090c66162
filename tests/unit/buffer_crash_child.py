"""The writer that test_buffer_crash kills: appends and acks forever, reporting on stdout.

``python -m tests.unit.buffer_crash_child PATH DURABILITY SEED`` prints one line per event,
flushed at once, so every line the parent reads happened before the kill:

* ``C s1 s2 …`` — an append committed these seqs (printed after ``append`` returned);
* ``A? s1 …``   — an ack of these seqs is about to start (it may or may not happen);
* ``A s1 …``    — that ack committed.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from citygate.buffer import Buffer, NewSample
from citygate.config import BufferSettings


def main() -> None:
    path, durability, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    buffer = Buffer(path, BufferSettings(durability=durability))
    buffer.open()
    unacked: list[int] = []
    n = 0
    while True:
        batch = []
        for _ in range(rng.randint(1, 20)):
            n += 1
            readings = rng.randint(1, 60)
            body = "},{".join(f'"n":"q{i}","u":"W","v":{rng.random():.6f}' for i in range(readings))
            batch.append(NewSample(f"meter-{n % 7}", 1.7e9 + n, True, readings, body))
        seqs = [s for s in buffer.append(batch).seqs if s is not None]
        print("C", *seqs, flush=True)
        unacked += seqs
        if rng.random() < 0.3 and unacked:
            acked = rng.sample(unacked, rng.randint(1, len(unacked)))
            print("A?", *acked, flush=True)
            buffer.ack(acked)
            print("A", *acked, flush=True)
            unacked = [s for s in unacked if s not in set(acked)]


if __name__ == "__main__":
    main()
