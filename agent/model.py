"""The values that flow through the pipeline: readings and samples."""

from __future__ import annotations

from dataclasses import dataclass

from citygate.drivers.api import Value


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one quantity in its canonical unit (None: no unit, a string)."""

    name: str
    unit: str | None
    value: Value


@dataclass(frozen=True, slots=True)
class Sample:
    """The readings of one device taken at one moment.

    ``time`` is Unix seconds (UTC); ``clock_synced`` is False when the system
    clock was not synchronised when the sample was taken.
    """

    device_id: str
    time: float
    readings: tuple[Reading, ...]
    clock_synced: bool = True
