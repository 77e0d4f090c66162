"""A simulated wired M-Bus water meter: its state and its RSP_UD telegrams.

The meter integrates a household-like flow (a daily profile with bursts) into
its volume, which therefore only increases; it keeps a due date and the volume
at that date (storage 1), flow and water temperatures, an operating time, the
header status byte and the error flags of VIFE FD 17. Time comes from a clock
(``time.time`` by default) scaled by ``speed``; :meth:`WaterMeter.freeze`
stops it, so a test can compare what a driver read with :meth:`WaterMeter.values`.

Telegrams follow EN 13757-3's variable data structure (CI 0x72); ``telegrams``
> 1 spreads the records over a multi-telegram readout (DIF 0x1F at the end of
every telegram but the last). ``unknown_vif`` adds a record whose VIF the
standard reserves (0x6F), as real meters sometimes send.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

from ._encode import (
    C_RSP_UD,
    CI_RSP_UD_VARIABLE,
    DIF_MANUFACTURER,
    DIF_MORE_RECORDS,
    MEDIUM_CODES,
    Record,
    bcd,
    date_g,
    datetime_f,
    int_data,
    long_frame,
    real32,
    variable_header,
)

__all__ = ["STATUS_BITS", "MeterValues", "WaterMeter"]

Clock = Callable[[], float]

STATUS_BITS: Final[dict[str, int]] = {
    "busy": 0x01,
    "application_error": 0x02,
    "power_low": 0x04,
    "permanent_error": 0x08,
    "temporary_error": 0x10,
}
"""Header status byte bits (EN 13757-3, table "status field")."""

_STEP: Final = 10.0  # seconds of simulated time per integration step
_MAX_STEPS: Final = 10_000  # a long pause is integrated in at most this many steps
# Litres per hour over a day, hour by hour: night, morning peak, evening peak.
_PROFILE: Final = (
    5, 3, 2, 2, 3, 10, 60, 140, 120, 70, 50, 45,
    55, 50, 40, 35, 45, 70, 110, 130, 100, 70, 35, 15,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MeterValues:
    """What the meter reports, in the units a reader gets after decoding."""

    volume_m3: float
    """Total volume: 8-digit BCD litres (VIF 0x13)."""
    volume_due_m3: float
    """Volume at the due date (storage 1)."""
    flow_m3h: float
    """Volume flow (VIF 0x3B, l/h; real32 for warm-water meters)."""
    flow_temperature_c: float
    """Water temperature (VIF 0x59: 0.01 °C)."""
    external_temperature_c: float
    """Ambient temperature (VIF 0x65: 0.01 °C)."""
    operating_time_h: int
    """Operating time in hours (VIF 0x26)."""
    datetime: datetime
    due_date: date
    status: int
    error_flags: int


class WaterMeter:
    """One M-Bus water meter (see the module docstring).

    ``ident`` is the 8-digit identification number; ``address`` the primary
    address (0–250; 0 is the factory default of many meters).
    """

    def __init__(
        self,
        ident: int,
        address: int = 0,
        *,
        manufacturer: str = "HYD",
        version: int = 0x29,
        medium: str = "water",
        telegrams: int = 1,
        unknown_vif: bool = False,
        seed: int = 0,
        speed: float = 1.0,
        clock: Clock = time.time,
        start_volume_m3: float | None = None,
    ) -> None:
        if not 0 <= ident <= 99_999_999:
            raise ValueError("the identification number has 8 digits")
        if not 0 <= address <= 250:
            raise ValueError("a primary address is 0–250")
        if medium not in MEDIUM_CODES:
            raise ValueError(f"medium {medium!r}: one of {', '.join(MEDIUM_CODES)}")
        if not 1 <= telegrams <= 4:
            raise ValueError("telegrams: 1–4")
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.ident = ident
        self.address = address
        self.manufacturer = manufacturer
        self.version = version
        self.medium = medium
        self.medium_code = MEDIUM_CODES[medium]
        self.telegrams = telegrams
        self.unknown_vif = unknown_vif
        self.speed = speed
        self.status = 0
        self.error_flags = 0
        self.access_number = seed % 256
        self._rng = random.Random(seed)
        self._clock = clock
        self._frozen: float | None = None
        self._epoch_real = clock()
        self._sim_time = self._epoch_real
        self._volume_l = (
            start_volume_m3 * 1000
            if start_volume_m3 is not None
            else self._rng.uniform(100_000, 900_000)
        )
        self._flow_lh = 0.0
        self._burst_until = 0.0
        self._operating_s = self._rng.uniform(1e7, 5e7)
        self._water_c = self._rng.uniform(9.0, 14.0) if medium != "warm_water" else 52.0
        day = datetime.fromtimestamp(self._sim_time).date()
        self._due = date(day.year - 1 if day.month < 12 else day.year, 12, 31)
        self._volume_due_l = self._volume_l * self._rng.uniform(0.8, 0.95)
        self._last_real = self._epoch_real

    # -- time --------------------------------------------------------------------------

    def freeze(self) -> None:
        """Stop time: every later telegram carries the same values."""
        self._advance()
        self._frozen = self._sim_time

    def advance(self, seconds: float) -> None:
        """Move simulated time on by ``seconds`` (also while frozen)."""
        self._integrate(seconds)

    def _advance(self) -> None:
        if self._frozen is not None:
            return
        now = self._clock()
        elapsed = max(0.0, now - self._last_real) * self.speed
        self._last_real = now
        self._integrate(elapsed)

    def _integrate(self, seconds: float) -> None:
        steps = min(_MAX_STEPS, max(1, math.ceil(seconds / _STEP)))
        dt = seconds / steps
        for _ in range(steps):
            self._sim_time += dt
            hour = datetime.fromtimestamp(self._sim_time).hour
            base = _PROFILE[hour]
            if self._sim_time >= self._burst_until and self._rng.random() < dt / 600:
                self._burst_until = self._sim_time + self._rng.uniform(30, 300)
            burst = 400.0 if self._sim_time < self._burst_until else 0.0
            target = base + burst
            self._flow_lh = max(0.0, self._flow_lh + 0.3 * (target - self._flow_lh))
            self._flow_lh *= self._rng.uniform(0.9, 1.1)
            self._volume_l += self._flow_lh * dt / 3600
            self._operating_s += dt
            self._water_c += self._rng.gauss(0, 0.02) * math.sqrt(dt / _STEP)
        if self._frozen is not None:
            self._frozen = self._sim_time

    # -- values and telegrams ----------------------------------------------------------

    def values(self) -> MeterValues:
        """The meter's values now, as its telegrams encode them (rounded likewise)."""
        self._advance()
        moment = datetime.fromtimestamp(self._sim_time).replace(second=0, microsecond=0)
        if self.medium == "warm_water":
            flow = _as_real32(self._flow_lh / 1000)
        else:
            flow = round(self._flow_lh) / 1000
        return MeterValues(
            volume_m3=math.floor(self._volume_l) / 1000,
            volume_due_m3=math.floor(self._volume_due_l) / 1000,
            flow_m3h=flow,
            flow_temperature_c=round(self._water_c * 100) / 100,
            external_temperature_c=round((self._water_c + 6.5) * 100) / 100,
            operating_time_h=int(self._operating_s // 3600),
            datetime=moment,
            due_date=self._due,
            status=self.status,
            error_flags=self.error_flags,
        )

    def records(self) -> list[Record]:
        """The data records of a full readout, in order."""
        v = self.values()
        flow = (
            Record(Record.dib_for(0x05), b"\x3e", real32(v.flow_m3h))  # real32, m³/h
            if self.medium == "warm_water"
            else Record(Record.dib_for(0x02), b"\x3b", int_data(round(v.flow_m3h * 1000), 2))
        )
        records = [
            Record(Record.dib_for(0x0C), b"\x13", bcd(round(v.volume_m3 * 1000), 8)),
            flow,
            Record(Record.dib_for(0x04), b"\x6d", datetime_f(v.datetime)),
            Record(Record.dib_for(0x02), b"\x59", int_data(round(v.flow_temperature_c * 100), 2)),
            Record(
                Record.dib_for(0x02), b"\x65", int_data(round(v.external_temperature_c * 100), 2)
            ),
            Record(Record.dib_for(0x03), b"\x26", int_data(v.operating_time_h, 3)),
            Record(Record.dib_for(0x02, storage=1), b"\x6c", date_g(v.due_date)),
            Record(Record.dib_for(0x0C, storage=1), b"\x13", bcd(round(v.volume_due_m3 * 1000), 8)),
            Record(Record.dib_for(0x0C), b"\x78", bcd(self.ident, 8)),  # fabrication number
            Record(Record.dib_for(0x02), b"\xfd\x17", int_data(v.error_flags, 2)),
        ]
        if self.unknown_vif:
            records.append(Record(Record.dib_for(0x02), b"\x6f", int_data(4711, 2)))
        return records

    def readout(self) -> list[bytes]:
        """The RSP_UD frames of one full readout (one per telegram)."""
        records = self.records()
        count = self.telegrams
        size = math.ceil(len(records) / count)
        frames: list[bytes] = []
        for index in range(count):
            chunk = records[index * size : (index + 1) * size]
            last = index == count - 1
            body = b"".join(r.encode() for r in chunk)
            body += bytes((DIF_MANUFACTURER,)) + b"\x01\x02" if last else bytes((DIF_MORE_RECORDS,))
            self.access_number = (self.access_number + 1) % 256
            header = variable_header(
                self.ident,
                self.manufacturer,
                self.version,
                self.medium_code,
                self.access_number,
                self.status,
            )
            frames.append(long_frame(C_RSP_UD, self.address, CI_RSP_UD_VARIABLE, header + body))
        return frames


def _as_real32(value: float) -> float:
    """``value`` as a real32 carries it."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])
