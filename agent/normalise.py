"""Measurements as drivers read them → readings in canonical units.

A conversion by a power of ten (Wh → kWh, mA → A) is a decimal shift of the value's shortest
text (:func:`~citygate.drivers.api.scale_decimal`: 906.6 Wh is 0.9066 kWh, not
0.9066000000000001); other factors (J → kWh, l/s → m3/h) multiply the value's shortest text by
the exact ratio (1/3,600,000; 3.6) and round once.

A non-finite number (NaN, ±inf: a meter's "no value" or a wrong byte order) is
dropped and counted, not the whole sample. A unit quantities.md does not know is
passed through unchanged, with one warning per device and unit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fractions import Fraction
from math import isfinite

from citygate.drivers.api import CONVERSIONS, Measurement, decimal_exponent, scale_decimal
from citygate.model import Reading

log = logging.getLogger(__name__)

# unit -> (canonical unit, factor, its power of ten or None, the exact ratio it stands for:
# 1/3600000 for J -> kWh, whose float factor is not exact)
_CONVERSIONS: dict[str, tuple[str, float, int | None, Fraction]] = {
    unit: (canonical, factor, decimal_exponent(factor), Fraction(factor).limit_denominator(10**9))
    for unit, (canonical, factor) in CONVERSIONS.items()
}


def _times_ratio(value: float | int, ratio: Fraction) -> float:
    """``value``'s shortest text times ``ratio``, rounded once (3.6e6 J is 1.0 kWh, not
    0.9999999999999999)."""
    exact = Fraction(repr(value)) if type(value) is float else Fraction(value)
    try:
        return float(exact * ratio)
    except OverflowError:
        return math.inf


class Normaliser:
    """Converts one device's measurements; keeps its drop count."""

    __slots__ = ("_device_id", "_warned_units", "invalid_readings")

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id
        self._warned_units: set[str] = set()
        self.invalid_readings = 0

    def __call__(self, measurements: Sequence[Measurement]) -> tuple[Reading, ...]:
        readings: list[Reading] = []
        append = readings.append
        conversions = _CONVERSIONS
        for m in measurements:
            value = m.value
            unit = m.unit
            if type(value) is float and not isfinite(value):
                self.invalid_readings += 1
                continue
            if unit is not None:
                conversion = conversions.get(unit)
                if conversion is None:
                    self._unknown_unit(unit, m.name)
                else:
                    unit, factor, exponent, ratio = conversion
                    if factor != 1.0 and isinstance(value, int | float) and type(value) is not bool:
                        if exponent is not None:
                            value = scale_decimal(value, exponent)
                        else:
                            value = _times_ratio(value, ratio)
                        if not isfinite(value):  # overflowed in the conversion
                            self.invalid_readings += 1
                            continue
            append(Reading(m.name, unit, value))
        return tuple(readings)

    def _unknown_unit(self, unit: str, name: str) -> None:
        if unit not in self._warned_units:
            self._warned_units.add(unit)
            log.warning(
                "%s: unit %r of %s is not a known unit; passed through unchanged",
                self._device_id,
                unit,
                name,
            )
