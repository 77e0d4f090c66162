"""Wireless M-Bus (issue 17, point 6): telegrams decoded per second, and CPU at 1,000 meters.

``run(quick)`` is a bench part. The telegrams come from the simulator's own encoder
(``citygate_sim.wmbus``: EN 13757-4 with OMS security mode 5 from its own AES), one
per meter, as a receiver delivers them (block CRCs removed); they are decoded by
``citygate.drivers.wmbus.decode.decode_telegram``, records included, with each
meter's key.

* throughput: back-to-back decoding of plain telegrams (water meters, no key) and of
  encrypted ones (water and heat meters, mode 5, a key each);
* CPU at 1,000 meters heard every 16 s (62.5 telegrams/s; 2 of 3 meters encrypted):
  measured — a loop decodes at that rate in real time and the process's CPU seconds
  are divided by the wall seconds — and computed from the back-to-back cost of that
  same mix, for comparison.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from citygate.drivers.wmbus.decode import decode_telegram
from citygate_sim.wmbus import MeterSpec, make_meter
from tests.bench.report import PartResult

METERS = 1000
INTERVAL_S = 16.0
START = 1_764_000_000.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One telegram and the key to open it."""

    telegram: bytes
    key: bytes | None


def samples(count: int, *, encrypted: bool | None) -> list[Sample]:
    """One telegram from each of ``count`` simulated meters.

    ``encrypted``: all (water and heat, mode 5), none (water), or None for the mix of
    the demo — plain water, encrypted water, encrypted heat meters in turn.
    """
    out = []
    for i in range(count):
        kind = "heat" if i % 3 == 2 else "water"
        has_key = encrypted if encrypted is not None else i % 3 != 0
        if encrypted is False:
            kind = "water"
        key = i.to_bytes(4, "big") * 4 if has_key else None
        spec = MeterSpec(40_000_000 + i, kind, key, interval=INTERVAL_S)
        tx = make_meter(spec, seed=i, start=START).transmit(START + 60)
        out.append(Sample(tx.telegram, key))
    return out


def decode_rate(batch: Sequence[Sample], seconds: float) -> float:
    """Telegrams decoded per second, back to back, for about ``seconds``."""
    for sample in batch:  # warm-up, and every telegram must decode
        assert decode_telegram(sample.telegram, sample.key, crc_present=False).records
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for sample in batch:
            decode_telegram(sample.telegram, sample.key, crc_present=False)
        done += len(batch)
    return done / (time.perf_counter() - started)


def paced_cpu(batch: Sequence[Sample], rate: float, seconds: float) -> tuple[float, int]:
    """CPU seconds per wall second of a loop decoding ``rate`` telegrams a second."""
    count = round(rate * seconds)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(count):
        due = wall0 + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        sample = batch[i % len(batch)]
        decode_telegram(sample.telegram, sample.key, crc_present=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return cpu / wall, count


def run(quick: bool) -> PartResult:
    result = PartResult("wmbus")
    seconds = 0.5 if quick else 2.0
    plain = samples(200, encrypted=False)
    encrypted = samples(200, encrypted=True)
    mixed = samples(METERS, encrypted=None)
    plain_rate = decode_rate(plain, seconds)
    aes_rate = decode_rate(encrypted, seconds)
    mixed_rate = decode_rate(mixed, seconds)
    result.add(
        "decoded, plain (water meters, no key)",
        plain_rate,
        "telegrams/s",
        at_least=1000,
        note=f"{len(plain[0].telegram)}-byte telegrams, 7 records",
    )
    result.add(
        "decoded, AES-128 mode 5 (water and heat meters)",
        aes_rate,
        "telegrams/s",
        at_least=1000,
        note="a key per meter; CBC of 3-4 blocks and the 2F2F check included",
    )
    rate = METERS / INTERVAL_S
    share, decoded = paced_cpu(mixed, rate, 3.0 if quick else 20.0)
    result.add(
        f"CPU, {METERS:,} meters heard every {INTERVAL_S:g} s (measured)",
        100 * share,
        "% of one core",
        at_most=5,
        note=f"{decoded} telegrams decoded at {rate:g}/s in real time (2 of 3 encrypted);"
        " decoding only: no serial port, routing or publishing",
    )
    result.add(
        f"CPU, {METERS:,} meters heard every {INTERVAL_S:g} s (computed)",
        100 * rate / mixed_rate,
        "% of one core",
        note=f"{rate:g} telegrams/s x the back-to-back cost of the same mix"
        f" ({1e6 / mixed_rate:.0f} us a telegram)",
    )
    result.details.update(
        {
            "plain_per_s": plain_rate,
            "aes_per_s": aes_rate,
            "mixed_per_s": mixed_rate,
            "us_per_telegram_mixed": 1e6 / mixed_rate,
        }
    )
    return result
