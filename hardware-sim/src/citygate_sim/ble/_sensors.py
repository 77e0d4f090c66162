"""Simulated BLE environmental sensors: weather, batteries and advert timing.

Each sensor draws its own story from its seed: temperature follows the day
(a sine with its minimum before dawn) plus a slow random walk; relative
humidity falls as the air warms; pressure wanders around 1013 hPa; the battery
voltage declines with every advert and with time, and the percentage follows
it. Adverts come every ``interval`` seconds plus the 0-10 ms random delay the
Bluetooth specification adds to each advertising event.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from citygate_sim.ble import _formats

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One simulated sensor."""

    address: str
    kind: str
    """``bthome``, ``ruuvi``, ``pvvx`` or ``atc``."""
    interval: float
    """Seconds between adverts."""
    name: str | None = None
    bindkey: bytes | None = None
    """Encrypted BTHome when set."""
    rssi: int = -70
    base_temperature: float = 18.0


class SimSensor:
    """The state of one sensor between adverts."""

    def __init__(self, spec: SensorSpec, seed: int, start: float) -> None:
        self.spec = spec
        self._rng = random.Random(f"{seed}:{spec.address}")
        self._phase = self._rng.uniform(-0.5, 0.5)  # hours
        self._walk = 0.0
        self._pressure_pa = 101325.0 + self._rng.uniform(-800, 800)
        self._battery_mv = self._rng.uniform(2950.0, 3150.0)
        self._last = start
        self.sent = 0
        self.next_time = start + self._rng.uniform(0, spec.interval)

    def _advance(self, t: float) -> None:
        dt = max(0.0, t - self._last)
        self._last = t
        # Ornstein-Uhlenbeck walk around the daily curve (sigma ~0.6 °C, tau ~2 h).
        tau = 7200.0
        decay = math.exp(-dt / tau)
        self._walk = self._walk * decay + self._rng.gauss(0, 0.6 * math.sqrt(1 - decay**2))
        self._pressure_pa += self._rng.gauss(0, 3.0 * math.sqrt(dt / 60 + 1e-9))
        self._pressure_pa += (101325.0 - self._pressure_pa) * min(1.0, dt / (3 * DAY_S))
        # Each advert costs charge; self-discharge adds ~2 mV a day.
        self._battery_mv -= 0.0004 + 2.0 * dt / DAY_S
        self._battery_mv = max(2000.0, self._battery_mv)

    def temperature(self, t: float) -> float:
        hours = (t % DAY_S) / 3600.0 + self._phase
        daily = -4.0 * math.cos(2 * math.pi * (hours - 3.0) / 24.0)  # coldest at 03:00
        return self.spec.base_temperature + daily + self._walk

    def humidity(self, temperature: float) -> float:
        # Same absolute humidity: RH drops ~5 % per degree of warming.
        rh = 65.0 * math.exp(-0.06 * (temperature - self.spec.base_temperature))
        return max(5.0, min(99.0, rh + self._rng.gauss(0, 0.4)))

    @property
    def battery_percent(self) -> int:
        return max(0, min(100, round((self._battery_mv - 2200.0) / 9.0)))

    def advert(self) -> dict[str, Any]:
        """The capture record of the next advert (and schedule the one after)."""
        t = self.next_time
        self._advance(t)
        spec = self.spec
        temperature = round(self.temperature(t), 2)
        humidity = round(self.humidity(temperature), 2)
        mv = round(self._battery_mv)
        record: dict[str, Any] = {
            "t": round(t, 3),
            "address": spec.address,
            "rssi": spec.rssi + round(self._rng.gauss(0, 3)),
        }
        if spec.name is not None:
            record["name"] = spec.name
        count = self.sent
        if spec.kind == "bthome":
            values: list[tuple[str, float]] = [
                ("battery", self.battery_percent),
                ("temperature", temperature),
                ("humidity", humidity),
            ]
            if spec.bindkey is None:
                values += [("packet_id", count % 256), ("pressure", self._pressure_pa / 100)]
            payload = _formats.bthome(
                values, address=spec.address, bindkey=spec.bindkey, counter=count + 1
            )
            record["service_data"] = {_formats.BTHOME_UUID: payload.hex()}
        elif spec.kind == "ruuvi":
            z = 1000 + round(self._rng.gauss(0, 4))
            payload = _formats.ruuvi_rawv2(
                address=spec.address,
                temperature=temperature,
                humidity=humidity,
                pressure_pa=self._pressure_pa,
                acceleration_mg=(round(self._rng.gauss(0, 4)), round(self._rng.gauss(0, 4)), z),
                battery_mv=mv,
                tx_power_dbm=4,
                movement=0,
                sequence=count,
            )
            record["manufacturer_data"] = {str(_formats.RUUVI_COMPANY_ID): payload.hex()}
        elif spec.kind in ("pvvx", "atc"):
            encode = _formats.pvvx_custom if spec.kind == "pvvx" else _formats.atc1441
            payload = encode(
                address=spec.address,
                temperature=temperature,
                humidity=humidity,
                battery=self.battery_percent,
                battery_mv=mv,
                counter=count,
            )
            record["service_data"] = {_formats.ENVIRONMENT_UUID: payload.hex()}
        else:
            raise ValueError(f"unknown sensor kind {spec.kind!r}")
        self.sent += 1
        self.next_time = t + spec.interval + self._rng.uniform(0.0, 0.01)
        return record
