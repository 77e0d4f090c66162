"""Canonical units and conversions (../shared/spec/quantities.md); API-private.

Public through :mod:`citygate.drivers.api`, which re-exports every name here.

Every conversion is a factor: value_in_canonical = value × factor. ``K`` is its
own canonical unit (a temperature difference), never converted to ``Cel``.
"""

from __future__ import annotations

_KWH_PER_J = 1.0 / 3.6e6
STANDARD_GRAVITY = 9.80665
"""m/s2 per g; quantities.md's acceleration units ``g``/``mg`` clash with the mass
units gram and milligram, so a unit string ``g`` always means gram here and
drivers that read acceleration in g convert with this constant themselves."""

# unit -> (canonical unit, factor)
CONVERSIONS: dict[str, tuple[str, float]] = {
    # voltage, current
    "V": ("V", 1.0), "mV": ("V", 1e-3), "kV": ("V", 1e3),
    "A": ("A", 1.0), "mA": ("A", 1e-3),
    # power
    "W": ("W", 1.0), "kW": ("W", 1e3), "MW": ("W", 1e6),
    "var": ("var", 1.0), "kvar": ("var", 1e3),
    "VA": ("VA", 1.0), "kVA": ("VA", 1e3),
    # energy
    "kWh": ("kWh", 1.0), "Wh": ("kWh", 1e-3), "MWh": ("kWh", 1e3),
    "J": ("kWh", _KWH_PER_J), "kJ": ("kWh", 1e3 * _KWH_PER_J),
    "MJ": ("kWh", 1e6 * _KWH_PER_J), "GJ": ("kWh", 1e9 * _KWH_PER_J),
    "kvarh": ("kvarh", 1.0), "varh": ("kvarh", 1e-3),
    "kVAh": ("kVAh", 1.0), "VAh": ("kVAh", 1e-3),
    # frequency, power factor, angle
    "Hz": ("Hz", 1.0), "/": ("/", 1.0), "deg": ("deg", 1.0),
    # volume and flow
    "m3": ("m3", 1.0), "l": ("m3", 1e-3), "dm3": ("m3", 1e-3),
    "m3/h": ("m3/h", 1.0), "l/h": ("m3/h", 1e-3), "l/s": ("m3/h", 3.6),
    "m3/s": ("m3/h", 3600.0), "m3/min": ("m3/h", 60.0),
    # mass and mass flow
    "kg": ("kg", 1.0), "t": ("kg", 1e3), "g": ("kg", 1e-3),
    "kg/h": ("kg/h", 1.0), "kg/s": ("kg/h", 3600.0), "t/h": ("kg/h", 1e3),
    # temperature (K is a difference, never converted)
    "Cel": ("Cel", 1.0), "K": ("K", 1.0),
    # pressure
    "hPa": ("hPa", 1.0), "Pa": ("hPa", 1e-2), "kPa": ("hPa", 10.0),
    "bar": ("hPa", 1e3), "mbar": ("hPa", 1.0),
    # ratios, concentration, light
    "%RH": ("%RH", 1.0), "%": ("%", 1.0),
    "ppm": ("ppm", 1.0), "ppb": ("ppm", 1e-3), "ug/m3": ("ug/m3", 1.0),
    "lx": ("lx", 1.0),
    # duration, count, signal, acceleration
    "s": ("s", 1.0), "min": ("s", 60.0), "h": ("s", 3600.0), "d": ("s", 86400.0),
    "count": ("count", 1.0),
    "dBm": ("dBm", 1.0),
    "m/s2": ("m/s2", 1.0),
}  # fmt: skip

CANONICAL_UNITS: frozenset[str] = frozenset(canonical for canonical, _ in CONVERSIONS.values())


class UnknownUnitError(ValueError):
    """A unit that quantities.md does not know."""


def canonical(unit: str) -> tuple[str, float]:
    """Return ``(canonical unit, factor)`` for ``unit``; raise UnknownUnitError."""
    try:
        return CONVERSIONS[unit]
    except KeyError:
        raise UnknownUnitError(f"unknown unit {unit!r}") from None


def known_units() -> list[str]:
    """Every unit a config may name, sorted."""
    return sorted(CONVERSIONS)
