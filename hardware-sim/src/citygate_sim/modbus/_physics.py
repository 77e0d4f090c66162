"""A building's electrical supply, pure computation (no clock, no I/O).

Each phase draws a load that follows a daily curve with slow random variation;
some installations also have rooftop PV that can push a phase into export.
From the active power P (signed: negative is export), a power factor magnitude
and the phase voltage V follow, exactly:

    S = |P| / |PF|,  I = S / V,  |Q| = sqrt(S² - P²),  PF = P / S,
    phase angle = atan2(Q, P) (so cos(angle) = PF).

Q is negative (capacitive) at light load, where power-factor correction banks
overcompensate. Random variation is Ornstein-Uhlenbeck noise, stepped exactly for
any time step, so the statistics do not depend on how often the meter is read.
"""

from __future__ import annotations

import cmath
import math
import random
from dataclasses import dataclass

__all__ = ["LOAD_CURVES", "Noise", "PhaseState", "Supply", "line_to_line", "neutral_current"]

SECONDS_PER_DAY = 86400.0

# Fraction of peak load at each hour of local time (linear in between).
LOAD_CURVES: dict[str, tuple[float, ...]] = {
    "office": (
        0.25, 0.22, 0.21, 0.20, 0.20, 0.23, 0.35, 0.60, 0.85, 0.95, 1.00, 1.00,
        0.92, 0.97, 1.00, 0.96, 0.88, 0.70, 0.48, 0.36, 0.31, 0.29, 0.27, 0.26,
    ),
    "residential": (
        0.30, 0.26, 0.23, 0.21, 0.21, 0.25, 0.45, 0.72, 0.62, 0.46, 0.41, 0.43,
        0.52, 0.47, 0.41, 0.43, 0.52, 0.72, 0.95, 1.00, 0.92, 0.76, 0.56, 0.40,
    ),
    "shop": (
        0.18, 0.17, 0.17, 0.17, 0.17, 0.18, 0.22, 0.40, 0.75, 0.92, 0.97, 1.00,
        1.00, 0.98, 0.97, 0.97, 0.98, 1.00, 0.95, 0.80, 0.45, 0.25, 0.20, 0.19,
    ),
    "street_lighting": (
        1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 0.95, 0.45, 0.03, 0.02, 0.02, 0.02,
        0.02, 0.02, 0.02, 0.02, 0.02, 0.03, 0.40, 0.95, 1.00, 1.00, 1.00, 1.00,
    ),
}  # fmt: skip

_PHASE_VOLTAGE_ANGLES = (0.0, -120.0, 120.0)


class Noise:
    """Ornstein-Uhlenbeck process around ``mean``, clamped to ``[low, high]``."""

    def __init__(
        self,
        rng: random.Random,
        *,
        mean: float,
        sigma: float,
        tau: float,
        low: float,
        high: float,
    ) -> None:
        self._rng = rng
        self._mean = mean
        self._sigma = sigma
        self._tau = tau
        self._low = low
        self._high = high
        self.value = min(max(rng.gauss(mean, sigma), low), high)

    def step(self, dt: float) -> float:
        """Advance by ``dt`` seconds (exact discretisation) and return the value."""
        if dt > 0:
            decay = math.exp(-dt / self._tau)
            spread = self._sigma * math.sqrt(1.0 - decay * decay)
            drifted = self._mean + (self.value - self._mean) * decay
            drifted += spread * self._rng.gauss(0.0, 1.0)
            self.value = min(max(drifted, self._low), self._high)
        return self.value


@dataclass(frozen=True, slots=True)
class PhaseState:
    """The electrical state of one phase (Eastron sign conventions)."""

    voltage: float  # V, line to neutral
    voltage_angle: float  # deg: 0, -120, 120
    current: float  # A
    active_power: float  # W, negative: export
    apparent_power: float  # VA
    reactive_power: float  # var, negative: capacitive
    power_factor: float  # signed like active_power
    phase_angle: float  # deg, atan2(Q, P)
    voltage_thd: float  # %
    current_thd: float  # %

    def current_phasor(self) -> complex:
        """The current as a phasor (the voltage of L1 at angle 0)."""
        angle = math.radians(self.voltage_angle - self.phase_angle)
        return cmath.rect(self.current, angle)

    def voltage_phasor(self) -> complex:
        """The line-to-neutral voltage as a phasor."""
        return cmath.rect(self.voltage, math.radians(self.voltage_angle))


def line_to_line(a: PhaseState, b: PhaseState) -> float:
    """Magnitude of the voltage between two phases (V)."""
    return abs(a.voltage_phasor() - b.voltage_phasor())


def neutral_current(phases: list[PhaseState]) -> float:
    """Magnitude of the phasor sum of the phase currents (A)."""
    return abs(sum((phase.current_phasor() for phase in phases), 0j))


def curve_fraction(curve: tuple[float, ...], seconds_of_day: float) -> float:
    """The curve's value at a time of day, linear between the hours."""
    hours = (seconds_of_day % SECONDS_PER_DAY) / 3600.0
    hour = int(hours) % 24
    weight = hours - int(hours)
    return curve[hour] * (1.0 - weight) + curve[(hour + 1) % 24] * weight


def daylight(seconds_of_day: float) -> float:
    """Clear-sky PV output as a fraction of peak: a sine from 06:00 to 20:00."""
    hours = (seconds_of_day % SECONDS_PER_DAY) / 3600.0
    if not 6.0 < hours < 20.0:
        return 0.0
    return math.sin(math.pi * (hours - 6.0) / 14.0)


class Supply:
    """The supply of one installation: 1 or 3 phases, a load curve, maybe PV."""

    def __init__(
        self,
        rng: random.Random,
        *,
        phases: int,
        peak_power: float,
        curve: str,
        pv_peak_power: float = 0.0,
    ) -> None:
        """``peak_power`` and ``pv_peak_power`` are in W for the whole installation."""
        self.curve_name = curve
        self.pv_peak_power = pv_peak_power
        self._curve = LOAD_CURVES[curve]
        shares = [rng.uniform(0.75, 1.25) for _ in range(phases)]
        total_share = sum(shares)
        self._peaks = [peak_power * share / total_share for share in shares]
        self._pv_peaks = [pv_peak_power / phases] * phases
        self._voltage_angles = _PHASE_VOLTAGE_ANGLES[:phases]
        nominal = 230.0 + rng.uniform(-3.0, 3.0)
        self._voltages = [
            Noise(rng, mean=nominal, sigma=1.2, tau=20.0, low=207.0, high=253.0)
            for _ in range(phases)
        ]
        self._loads = [
            Noise(rng, mean=1.0, sigma=0.06, tau=45.0, low=0.7, high=1.3) for _ in range(phases)
        ]
        pf_mean = rng.uniform(0.90, 0.97)
        self._power_factors = [
            Noise(rng, mean=pf_mean, sigma=0.015, tau=120.0, low=0.85, high=0.99)
            for _ in range(phases)
        ]
        self._voltage_thds = [
            Noise(rng, mean=rng.uniform(1.5, 3.5), sigma=0.3, tau=60.0, low=0.5, high=6.0)
            for _ in range(phases)
        ]
        self._current_thds = [
            Noise(rng, mean=rng.uniform(5.0, 15.0), sigma=1.5, tau=60.0, low=2.0, high=30.0)
            for _ in range(phases)
        ]
        self._frequency = Noise(rng, mean=50.0, sigma=0.015, tau=10.0, low=49.95, high=50.05)
        self._clouds = Noise(rng, mean=0.8, sigma=0.15, tau=600.0, low=0.2, high=1.0)
        self._capacitive_below = rng.uniform(0.15, 0.30)

    @property
    def frequency(self) -> float:
        """Supply frequency (Hz), 50 ± 0.05."""
        return self._frequency.value

    def step(self, dt: float) -> None:
        """Let the random variation run for ``dt`` seconds."""
        for noises in (
            self._voltages,
            self._loads,
            self._power_factors,
            self._voltage_thds,
            self._current_thds,
        ):
            for noise in noises:
                noise.step(dt)
        self._frequency.step(dt)
        self._clouds.step(dt)

    def phases(self, seconds_of_day: float) -> list[PhaseState]:
        """The state of every phase at this time of day."""
        load_fraction = curve_fraction(self._curve, seconds_of_day)
        sun = daylight(seconds_of_day) * self._clouds.value
        states = []
        for index, peak in enumerate(self._peaks):
            load = peak * (0.02 + load_fraction * self._loads[index].value)
            active = load - self._pv_peaks[index] * sun
            pf_magnitude = self._power_factors[index].value
            apparent = abs(active) / pf_magnitude
            voltage = self._voltages[index].value
            reactive = math.sqrt(max(apparent * apparent - active * active, 0.0))
            if load < self._capacitive_below * peak:
                reactive = -reactive
            states.append(
                PhaseState(
                    voltage=voltage,
                    voltage_angle=self._voltage_angles[index],
                    current=apparent / voltage,
                    active_power=active,
                    apparent_power=apparent,
                    reactive_power=reactive,
                    power_factor=active / apparent if apparent > 0 else 1.0,
                    phase_angle=math.degrees(math.atan2(reactive, active)),
                    voltage_thd=self._voltage_thds[index].value,
                    current_thd=self._current_thds[index].value,
                )
            )
        return states
