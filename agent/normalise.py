"""Measurements as drivers read them → readings in canonical units.

A non-finite number (NaN, ±inf: a meter's "no value" or a wrong byte order) is
dropped and counted, not the whole sample. A unit quantities.md does not know is
passed through unchanged, with one warning per device and unit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from math import isfinite

from citygate.drivers.api import CONVERSIONS, Measurement
from citygate.model import Reading

log = logging.getLogger(__name__)


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
        conversions = CONVERSIONS
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
                    unit, factor = conversion
                    if factor != 1.0 and isinstance(value, int | float) and type(value) is not bool:
                        value = value * factor
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
