"""Sizing a gateway from its config: the load, how long the buffer lasts, the SD-card writes.

``citygate check`` prints these (cli.md, ``check``). The load is the configured devices'
samples and readings per minute; each device's readings per sample comes from its driver's
factory when it offers ``expected_readings(config)`` (:class:`ExpectsReadings`), else from
the per-driver estimate in :data:`ESTIMATED_READINGS`. Everything else is arithmetic on the
figures below, MEASURED by the bench part ``sdwear`` (tests/bench/sdwear.py,
``python -m tests.bench sdwear``), which prints its measurement beside these constants so a
drift shows. Costs are linear: ``per_sample + per_reading × readings`` of a sample.

* Stored: what a buffered sample costs against ``buffer.max_size`` (its zlib-compressed
  SenML body plus the row overhead, agent/buffer/store.py "Size") and what the buffer file
  grows by (pages in use).
* Written: what reaches the block layer (``/proc/self/io`` ``write_bytes`` less
  ``cancelled_write_bytes``) for each sample, broker up (the sample is appended, fetched,
  published and acknowledged; the delete rides on the next append's commit, agent/buffer/store.py
  "Folded acks", unless the config's samples come further apart than ``ACK_FOLD_S``: then it is a
  commit of its own) and broker down (appended only), with the
  kernel's writeback emulated every few samples; and per ``expire`` call (once a minute).
  The file system's own journal (ext4's jbd2) is not in it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol, runtime_checkable

from citygate.buffer import ACK_FOLD_S
from citygate.config import Config
from citygate.drivers.api import DriverFactory

__all__ = [
    "ACCOUNTED_BYTES",
    "DEFAULT_ESTIMATE",
    "ESTIMATED_READINGS",
    "EXPIRE_EVERY_S",
    "EXPIRE_WRITE_BYTES",
    "FILE_BYTES",
    "UNFOLDED_ACK_WRITE_BYTES",
    "WRITE_BYTES",
    "Cost",
    "DeviceLoad",
    "ExpectsReadings",
    "Sizing",
    "human_bytes",
    "human_duration",
    "size",
    "summary_lines",
]


@dataclass(frozen=True, slots=True)
class Cost:
    """Bytes for one sample of ``readings`` readings: ``per_sample + per_reading × readings``."""

    per_sample: float
    per_reading: float

    def of(self, samples: float, readings: float) -> float:
        """Bytes for ``samples`` samples holding ``readings`` readings in all."""
        return self.per_sample * samples + self.per_reading * readings


# Measured by tests/bench/sdwear.py (`python -m tests.bench sdwear`, 2000 samples a case) on
# 2026-12-03: 2-core KVM guest, ext4 on virtio /dev/vda, Python 3.11's SQLite, 4 KiB pages;
# samples of 6 readings (a BLE sensor) and 84 (an Eastron SDM630), two-point linear fit.
# Writes come in whole 4 KiB pages: a commit touches the same few pages (row, time index,
# counters) whatever the sample's size, so broker up costs nothing per reading. One sample per
# commit, writeback every 5 samples (a gateway's samples arriving one at a time); a busy gateway
# whose writer and publisher batch several samples per commit writes less than this.
ACCOUNTED_BYTES: Final = Cost(per_sample=161.0, per_reading=11.2)
"""Against ``buffer.max_size``: compressed body + ROW_OVERHEAD (96) per sample."""
FILE_BYTES: Final = Cost(per_sample=92.0, per_reading=15.4)
"""Growth of the buffer file (pages in use) per buffered sample."""
WRITE_BYTES: Final[Mapping[tuple[str, bool], Cost]] = {
    ("normal", True): Cost(per_sample=13_230.0, per_reading=0.0),
    ("normal", False): Cost(per_sample=13_870.0, per_reading=61.9),
    ("full", True): Cost(per_sample=16_490.0, per_reading=0.0),
    ("full", False): Cost(per_sample=17_125.0, per_reading=61.9),
}
"""Bytes written to storage per sample, by (durability, broker up); broker up with each ack
folded into the next append (agent/buffer/store.py, "Folded acks")."""
UNFOLDED_ACK_WRITE_BYTES: Final[Mapping[str, float]] = {"normal": 12_410.0, "full": 16_480.0}
"""Bytes an ack costs on top when the next append comes later than ``ACK_FOLD_S`` (a commit of
its own)."""
EXPIRE_WRITE_BYTES: Final[Mapping[str, float]] = {"normal": 8_397.0, "full": 8_397.0}
"""Bytes written by one ``expire`` call (nothing to expire: the counters' commit)."""
EXPIRE_EVERY_S: Final = 60.0  # agent/app.py EXPIRE_EVERY_S (a test keeps them equal)

ESTIMATED_READINGS: Final[Mapping[str, int]] = {
    # 879 records in libmbus's 72 test frames (drivers/mbus/README.md): ~12 a readout.
    "mbus": 12,
    "wmbus": 12,
    # pvvx/atc: 5 values + rssi; ruuvi: 11 + rssi; a BTHome sensor: 3–6 + rssi.
    "ble": 6,
}
"""Readings per sample of a driver that cannot tell (an M-Bus meter's readout before it is
read); :data:`DEFAULT_ESTIMATE` for any other driver."""
DEFAULT_ESTIMATE: Final = 10


@runtime_checkable
class ExpectsReadings(Protocol):
    """Optional driver factory hook: the readings one sample of a device will hold."""

    def expected_readings(self, config: Any) -> int | None:
        """Readings per sample for this device's ``config`` (what ``configure`` returned),
        None when only a readout can tell."""


@dataclass(frozen=True, slots=True)
class DeviceLoad:
    """One enabled device's share of the load."""

    device: str
    driver: str
    interval_s: float
    readings_per_sample: int
    source: str  # "driver": its factory counted them; "estimate": ESTIMATED_READINGS

    @property
    def samples_per_min(self) -> float:
        """Samples per minute."""
        return 60.0 / self.interval_s


@dataclass(frozen=True, slots=True)
class Sizing:
    """The figures ``citygate check`` prints (``--json``: :meth:`to_json`)."""

    devices: tuple[DeviceLoad, ...]
    samples_per_min: float
    readings_per_min: float
    stored_bytes_per_reading: float | None  # file growth per reading, this config's mix
    max_size: int
    max_age_s: float
    max_size_lasts_s: float | None  # through an outage at this rate (None: nothing to store)
    ended_by_max_age: bool  # max_age drops samples before max_size is reached
    durability: str  # the configured one
    write_bytes_per_day: Mapping[str, float]  # by durability, broker up
    write_bytes_per_day_outage: Mapping[str, float]  # by durability, broker down

    def to_json(self) -> dict[str, Any]:
        """JSON-ready figures (the ``sizing`` key of ``check --json``)."""
        return {
            "samples_per_min": round(self.samples_per_min, 3),
            "readings_per_min": round(self.readings_per_min, 3),
            "stored_bytes_per_reading": _rounded(self.stored_bytes_per_reading),
            "max_size_bytes": self.max_size,
            "max_age_s": self.max_age_s,
            "max_size_lasts_s": _rounded(self.max_size_lasts_s),
            "ended_by_max_age": self.ended_by_max_age,
            "durability": self.durability,
            "write_bytes_per_day": {k: round(v) for k, v in self.write_bytes_per_day.items()},
            "write_bytes_per_day_outage": {
                k: round(v) for k, v in self.write_bytes_per_day_outage.items()
            },
            "measured_by": "tests/bench/sdwear.py",
            "devices": [
                asdict(d) | {"samples_per_min": round(d.samples_per_min, 3)} for d in self.devices
            ],
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _readings(factory: object, driver: str, config: Any) -> tuple[int, str]:
    if isinstance(factory, ExpectsReadings):
        try:
            counted = factory.expected_readings(config)
        except Exception:  # a plugin's broken hook: `check` still answers
            counted = None
        if isinstance(counted, int) and not isinstance(counted, bool) and counted >= 0:
            return counted, "driver"
    return ESTIMATED_READINGS.get(driver, DEFAULT_ESTIMATE), "estimate"


def size(config: Config, factories: Mapping[str, DriverFactory]) -> Sizing:
    """The sizing figures of a valid ``config``; ``factories`` as the registry gives them."""
    devices = tuple(
        DeviceLoad(
            d.id,
            d.driver,
            d.interval,
            *_readings(factories.get(d.driver), d.driver, d.driver_config),
        )
        for d in config.devices
        if d.enabled
    )
    samples = sum(d.samples_per_min for d in devices)
    readings = sum(d.samples_per_min * d.readings_per_sample for d in devices)
    per_day = 1440.0
    settings = config.buffer
    accounted_per_min = ACCOUNTED_BYTES.of(samples, readings)
    lasts = settings.max_size / accounted_per_min * 60.0 if accounted_per_min > 0 else None
    expire = 86400.0 / EXPIRE_EVERY_S
    # Appends further apart than ACK_FOLD_S leave each ack a commit of its own.
    unfolded = 0.0 if samples * ACK_FOLD_S / 60.0 >= 1.0 else samples * per_day
    writes = {
        durability: WRITE_BYTES[durability, True].of(samples, readings) * per_day
        + UNFOLDED_ACK_WRITE_BYTES[durability] * unfolded
        + EXPIRE_WRITE_BYTES[durability] * expire
        for durability in ("normal", "full")
    }
    outage = {
        durability: WRITE_BYTES[durability, False].of(samples, readings) * per_day
        + EXPIRE_WRITE_BYTES[durability] * expire
        for durability in ("normal", "full")
    }
    return Sizing(
        devices=devices,
        samples_per_min=samples,
        readings_per_min=readings,
        stored_bytes_per_reading=FILE_BYTES.of(samples, readings) / readings if readings else None,
        max_size=settings.max_size,
        max_age_s=settings.max_age,
        max_size_lasts_s=lasts,
        ended_by_max_age=lasts is None or settings.max_age < lasts,
        durability=settings.durability,
        write_bytes_per_day=writes,
        write_bytes_per_day_outage=outage,
    )


def human_bytes(n: float) -> str:
    """``1.5 GB``, ``210 MB``, ``12 kB`` (SI: what SD cards are sold in)."""
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= factor:
            value = n / factor
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def human_duration(seconds: float) -> str:
    """``45 min``, ``7.5 h``, ``3.2 d``, ``30 d``."""
    if not math.isfinite(seconds):
        return "forever"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} d"


def summary_lines(sizing: Sizing) -> list[str]:
    """The lines ``citygate check`` adds to its summary."""
    if not sizing.devices:
        return ["  load      no enabled device: nothing to size"]
    estimated = [d.device for d in sizing.devices if d.source == "estimate"]
    how = "counted by the drivers"
    if estimated:
        shown = ", ".join(estimated[:3]) + (", …" if len(estimated) > 3 else "")
        how = f"estimated for {shown}, counted for the rest"
    lines = [
        f"  load      {sizing.samples_per_min:.3g} samples/min, "
        f"{sizing.readings_per_min:.4g} readings/min (per sample: {how})"
    ]
    lasts = sizing.max_size_lasts_s
    per_reading = sizing.stored_bytes_per_reading
    stored = "-" if per_reading is None else f"~{per_reading:.3g}"
    if lasts is None:  # only devices with no readings: nothing is stored
        lasts = math.inf
    size_text = f"max_size {sizing.max_size / 2**20:.4g} MiB"
    age_text = f"max_age {human_duration(sizing.max_age_s)}"
    if sizing.ended_by_max_age:
        end = f"{age_text} ends an outage's backlog first ({size_text}: {human_duration(lasts)})"
    else:
        end = f"{size_text} holds {human_duration(lasts)} of broker outage ({age_text})"
    lines.append(f"  buffer    {stored} B/reading stored; {end}")
    configured = sizing.durability
    other = "full" if configured == "normal" else "normal"
    per_day = sizing.write_bytes_per_day
    lines.append(
        f"  writes    {human_bytes(per_day[configured])}/day at durability {configured}"
        f" (configured), {human_bytes(per_day[other])}/day at {other}; outage:"
        f" {human_bytes(sizing.write_bytes_per_day_outage[configured])}/day"
    )
    return lines
