"""Simulated wireless M-Bus water and heat meters: their state, records and telegrams.

A meter integrates a plausible consumption over simulated time (Unix seconds, given
by the caller, so a capture of a day is written in a moment): a water meter a
household's daily profile with bursts (showers, a washing machine), a heat meter a
building's heating demand from a seasonal and daily outdoor temperature. Each
:meth:`WirelessMeter.transmit` advances to its time and returns a
:class:`Transmission`: the telegram (EN 13757-4, :mod:`._telegram`) and the values it
carries, rounded exactly as the records encode them (what a decoder must find).

Records (EN 13757-3; DIF, VIF, data, least significant byte first):

water meter                                   heat meter
``0C 13``  volume, 8 BCD, litres              ``0C 06``  energy, 8 BCD, kWh
``02 3B``  volume flow, int16, l/h            ``0C 14``  volume, 8 BCD, 10 l
``02 5A``  flow temperature, int16, 0.1 °C    ``03 2B``  power, int24, W
``04 6D``  date and time, type F              ``03 3B``  volume flow, int24, l/h
``02 FD 17`` error flags, 16 bits             ``02 5A``  flow temperature, int16, 0.1 °C
``42 6C``  due date, type G, storage 1        ``02 5E``  return temperature, int16, 0.1 °C
``4C 13``  volume at the due date, storage 1  ``02 61``  temperature difference, int16, 0.01 K
                                              ``04 6D``, ``02 FD 17``, ``42 6C`` as water
                                              ``4C 06``  energy at the due date, storage 1
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import date, datetime
from typing import ClassVar, Final

from ..mbus._encode import Record, bcd, date_g, datetime_f, int_data
from ._telegram import DEVICE_TYPES, telegram

__all__ = [
    "DEMO_METERS",
    "HeatMeter",
    "HeatValues",
    "MeterSpec",
    "Transmission",
    "WaterMeter",
    "WaterValues",
    "WirelessMeter",
    "make_meter",
]

RADIO_MODES: Final = ("T1", "C1", "S1")
_STEP: Final = 10.0  # seconds of simulated time per integration step
_MAX_STEPS: Final = 20_000  # a longer gap is integrated in this many (longer) steps
# Litres per hour over a day, hour by hour (a few flats): night, morning and evening peaks.
_WATER_PROFILE: Final = (
    5, 3, 2, 2, 3, 10, 60, 140, 120, 70, 50, 45,
    55, 50, 40, 35, 45, 70, 110, 130, 100, 70, 35, 15,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MeterSpec:
    """What a simulated meter is: identity, medium, key, how often and how loud it sends."""

    ident: int
    """The 8-digit id printed on the meter (the link layer's address)."""
    kind: str = "water"
    """``water``, ``warm_water`` or ``heat``."""
    key: bytes | None = None
    """AES-128 key: telegrams in security mode 5; None: unencrypted."""
    interval: float = 16.0
    """Seconds between telegrams (simulated time; ±3 % jitter like real meters)."""
    rssi: float = -70.0
    """Mean received level at the stick, dBm (±2 dB per telegram)."""
    manufacturer: str = "CGS"
    version: int = 0x01
    mode: str = "T1"
    """The radio mode it sends in: ``T1``, ``C1`` or ``S1`` (a stick hears its own)."""

    def __post_init__(self) -> None:
        if not 0 <= self.ident <= 99_999_999:
            raise ValueError("a meter id has 8 digits")
        if self.kind not in DEVICE_TYPES:
            raise ValueError(f"kind {self.kind!r}: one of {', '.join(DEVICE_TYPES)}")
        if self.key is not None and len(self.key) != 16:
            raise ValueError("an AES-128 key is 16 bytes")
        if not self.interval > 0:
            raise ValueError("interval must be positive")
        if self.mode not in RADIO_MODES:
            raise ValueError(f"mode {self.mode!r}: one of {', '.join(RADIO_MODES)}")


DEMO_METERS: Final = (
    MeterSpec(
        31415926,
        "water",
        bytes.fromhex("0123456789ABCDEF0123456789ABCDEF"),
        interval=16.0,
        rssi=-67.0,
    ),
    MeterSpec(27182818, "water", None, interval=120.0, rssi=-81.0, version=0x02),
    MeterSpec(
        16180339,
        "heat",
        bytes.fromhex("F0E1D2C3B4A5968778695A4B3C2D1E0F"),
        interval=120.0,
        rssi=-74.0,
        version=0x03,
    ),
)
"""Two water meters (mode 5 with a known key, and plain) and an encrypted heat meter."""


@dataclass(frozen=True, slots=True)
class WaterValues:
    """A water meter's values as its telegram encodes them."""

    volume_m3: float
    flow_m3h: float
    flow_temperature_c: float
    datetime: datetime
    error_flags: int
    status: int
    due_date: date
    volume_due_m3: float


@dataclass(frozen=True, slots=True)
class HeatValues:
    """A heat meter's values as its telegram encodes them."""

    energy_kwh: int
    volume_m3: float
    power_kw: float
    flow_m3h: float
    flow_temperature_c: float
    return_temperature_c: float
    temperature_difference_k: float
    datetime: datetime
    error_flags: int
    status: int
    due_date: date
    energy_due_kwh: int


@dataclass(frozen=True, slots=True)
class Transmission:
    """One telegram on the air: when, from whom, its bytes, its level and its values."""

    t: float
    """Unix time (simulated) it was sent."""
    spec: MeterSpec
    telegram: bytes
    """From the L-field on, block CRCs removed (as a receiver delivers it)."""
    rssi_dbm: int
    access_number: int
    values: WaterValues | HeatValues


class WirelessMeter:
    """A meter's state between telegrams; subclasses model the medium."""

    kind: ClassVar[str]

    def __init__(self, spec: MeterSpec, *, seed: int = 0, start: float) -> None:
        self.spec = spec
        self.status = 0
        """The transport header's status byte (settable: e.g. 0x04 power low)."""
        self.error_flags = 0
        """The ``FD 17`` error flags (settable)."""
        self._rng = random.Random(seed)
        self.access_number = self._rng.randrange(256)
        self.t = start
        day = datetime.fromtimestamp(start).date()
        self.due_date = date(day.year - 1, 12, 31)

    def advance_to(self, t: float) -> None:
        """Integrate the meter's physics up to Unix time ``t`` (never backwards)."""
        seconds = t - self.t
        if seconds <= 0:
            return
        steps = min(_MAX_STEPS, max(1, math.ceil(seconds / _STEP)))
        dt = seconds / steps
        for _ in range(steps):
            self.t += dt
            self._step(dt)
        self.t = t

    def _step(self, dt: float) -> None:
        raise NotImplementedError

    def values(self) -> WaterValues | HeatValues:
        """The values now, rounded as the records carry them."""
        raise NotImplementedError

    def records(self, values: WaterValues | HeatValues) -> bytes:
        """The data records of a telegram carrying ``values``."""
        raise NotImplementedError

    def transmit(self, t: float) -> Transmission:
        """Advance to ``t`` and send a telegram (the access number counts on)."""
        self.advance_to(t)
        values = self.values()
        self.access_number = (self.access_number + 1) % 256
        spec = self.spec
        data = telegram(
            manufacturer=spec.manufacturer,
            ident=spec.ident,
            version=spec.version,
            device_type=DEVICE_TYPES[spec.kind],
            access_number=self.access_number,
            status=self.status,
            records=self.records(values),
            key=spec.key,
        )
        rssi = round(max(-120.0, min(-20.0, spec.rssi + self._rng.gauss(0, 2))))
        return Transmission(t, spec, data, rssi, self.access_number, values)

    def _moment(self) -> datetime:
        return datetime.fromtimestamp(self.t).replace(second=0, microsecond=0)


class WaterMeter(WirelessMeter):
    """A cold (or warm) water meter of a few flats."""

    kind = "water"

    def __init__(self, spec: MeterSpec, *, seed: int = 0, start: float) -> None:
        super().__init__(spec, seed=seed, start=start)
        self._volume_l = self._rng.uniform(50_000, 900_000)
        self._volume_due_l = self._volume_l * self._rng.uniform(0.8, 0.95)
        self._flow_lh = 0.0
        self._burst_until = 0.0
        warm = spec.kind == "warm_water"
        self._water_c = self._rng.uniform(48.0, 55.0) if warm else self._rng.uniform(9.0, 14.0)

    def _step(self, dt: float) -> None:
        hour = datetime.fromtimestamp(self.t).hour
        if self.t >= self._burst_until and self._rng.random() < dt / 1800:
            self._burst_until = self.t + self._rng.uniform(30, 400)  # a shower, a machine
        target = _WATER_PROFILE[hour] + (450.0 if self.t < self._burst_until else 0.0)
        self._flow_lh = max(0.0, self._flow_lh + 0.3 * (target - self._flow_lh))
        self._flow_lh *= self._rng.uniform(0.9, 1.1)
        self._volume_l += self._flow_lh * dt / 3600
        self._water_c += self._rng.gauss(0, 0.02) * math.sqrt(dt / _STEP)

    def values(self) -> WaterValues:
        return WaterValues(
            volume_m3=math.floor(self._volume_l) / 1000,
            flow_m3h=round(self._flow_lh) / 1000,
            flow_temperature_c=round(self._water_c * 10) / 10,
            datetime=self._moment(),
            error_flags=self.error_flags,
            status=self.status,
            due_date=self.due_date,
            volume_due_m3=math.floor(self._volume_due_l) / 1000,
        )

    def records(self, values: WaterValues | HeatValues) -> bytes:
        assert isinstance(values, WaterValues)
        v = values
        return b"".join(
            r.encode()
            for r in (
                Record(b"\x0c", b"\x13", bcd(round(v.volume_m3 * 1000), 8)),
                Record(b"\x02", b"\x3b", int_data(round(v.flow_m3h * 1000), 2)),
                Record(b"\x02", b"\x5a", int_data(round(v.flow_temperature_c * 10), 2)),
                Record(b"\x04", b"\x6d", datetime_f(v.datetime)),
                Record(b"\x02", b"\xfd\x17", int_data(v.error_flags, 2)),
                Record(Record.dib_for(0x02, storage=1), b"\x6c", date_g(v.due_date)),
                Record(
                    Record.dib_for(0x0C, storage=1), b"\x13", bcd(round(v.volume_due_m3 * 1000), 8)
                ),
            )
        )


class HeatMeter(WirelessMeter):
    """A building's heat meter: demand follows the outdoor temperature (season and hour)."""

    kind = "heat"

    def __init__(self, spec: MeterSpec, *, seed: int = 0, start: float) -> None:
        super().__init__(spec, seed=seed, start=start)
        self._energy_kwh = self._rng.uniform(5_000, 40_000)
        self._energy_due_kwh = self._energy_kwh * self._rng.uniform(0.6, 0.9)
        self._volume_m3 = self._energy_kwh / self._rng.uniform(15, 25)
        self._power_kw = 0.0
        self._flow_c = 55.0
        self._return_c = 40.0
        self._flow_m3h = 0.0
        self._step(0.0)

    def _outdoor_c(self) -> float:
        moment = datetime.fromtimestamp(self.t)
        season = -8.0 * math.cos(2 * math.pi * (moment.timetuple().tm_yday - 15) / 365)
        hour = moment.hour + moment.minute / 60
        daily = -4.0 * math.cos(2 * math.pi * (hour - 3) / 24)  # coldest near 05:00
        return 10.0 + season + daily

    def _step(self, dt: float) -> None:
        outdoor = self._outdoor_c()
        hour = datetime.fromtimestamp(self.t).hour
        setback = 0.6 if hour < 5 or hour >= 23 else 1.0
        demand = 0.4 + max(0.0, 0.55 * (18.0 - outdoor)) * setback  # hot water + heating, kW
        self._power_kw += 0.2 * (demand - self._power_kw)
        self._power_kw = max(0.1, self._power_kw * self._rng.uniform(0.97, 1.03))
        self._flow_c = min(75.0, max(40.0, 40.0 + 1.2 * (18.0 - outdoor)))
        self._flow_c += self._rng.gauss(0, 0.2)
        spread = 8.0 + 12.0 * min(1.0, self._power_kw / 12.0)  # K
        self._return_c = self._flow_c - spread
        self._flow_m3h = self._power_kw / (1.163 * spread)  # 1.163 kWh per m³ per K of water
        self._energy_kwh += self._power_kw * dt / 3600
        self._volume_m3 += self._flow_m3h * dt / 3600

    def values(self) -> HeatValues:
        flow_c = round(self._flow_c * 10) / 10
        return_c = round(self._return_c * 10) / 10
        return HeatValues(
            energy_kwh=math.floor(self._energy_kwh),
            volume_m3=math.floor(self._volume_m3 * 100) / 100,
            power_kw=round(self._power_kw * 1000) / 1000,
            flow_m3h=round(self._flow_m3h * 1000) / 1000,
            flow_temperature_c=flow_c,
            return_temperature_c=return_c,
            temperature_difference_k=round((self._flow_c - self._return_c) * 100) / 100,
            datetime=self._moment(),
            error_flags=self.error_flags,
            status=self.status,
            due_date=self.due_date,
            energy_due_kwh=math.floor(self._energy_due_kwh),
        )

    def records(self, values: WaterValues | HeatValues) -> bytes:
        assert isinstance(values, HeatValues)
        v = values
        return b"".join(
            r.encode()
            for r in (
                Record(b"\x0c", b"\x06", bcd(v.energy_kwh, 8)),
                Record(b"\x0c", b"\x14", bcd(round(v.volume_m3 * 100), 8)),
                Record(b"\x03", b"\x2b", int_data(round(v.power_kw * 1000), 3)),
                Record(b"\x03", b"\x3b", int_data(round(v.flow_m3h * 1000), 3)),
                Record(b"\x02", b"\x5a", int_data(round(v.flow_temperature_c * 10), 2)),
                Record(b"\x02", b"\x5e", int_data(round(v.return_temperature_c * 10), 2)),
                Record(b"\x02", b"\x61", int_data(round(v.temperature_difference_k * 100), 2)),
                Record(b"\x04", b"\x6d", datetime_f(v.datetime)),
                Record(b"\x02", b"\xfd\x17", int_data(v.error_flags, 2)),
                Record(Record.dib_for(0x02, storage=1), b"\x6c", date_g(v.due_date)),
                Record(Record.dib_for(0x0C, storage=1), b"\x06", bcd(v.energy_due_kwh, 8)),
            )
        )


def make_meter(spec: MeterSpec, *, seed: int = 0, start: float) -> WirelessMeter:
    """The state of the meter ``spec`` describes, starting at Unix time ``start``."""
    if spec.kind == "heat":
        return HeatMeter(spec, seed=seed, start=start)
    return WaterMeter(spec, seed=seed, start=start)
