"""More meters from their public register maps: Eastron SDM72D-M, Carlo Gavazzi
EM24, ABB B23/B24, Schneider Electric iEM3255.

Register maps from the manufacturers' documents as reproduced by long-used
open-source readers (../shared/vectors/modbus/README.md C.4: mbmd
``meters/rs485/*.go``; the SDM72D-M from Eastron's "SDM72D-M-2 Modbus protocol"
as transcribed in reaper7 SDM.h). Each row below gives the datasheet's encoding:
the address, the table, the type and word order, the unit and the divisor the
datasheet states (``value = raw / divisor``), independent of citygate's
profiles.

The electrical values come from a simulated building supply (the same physics
as the SDM630 simulator, seeded per model), so the meters' readings move like
real ones and agree with each other. Each model also serves the identity
registers its document gives (:func:`identity`: serial number, model code or
name, firmware version), fixed per seed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._eastron import Sdm630
from ._meter import Clock, Meter, Register, Unmapped
from ._pdu import Table
from ._values import ValueType, WordOrder

__all__ = ["OTHER_MODELS", "MappedMeter", "Row", "identity", "make_other"]

_IN = Table.INPUT_REGISTERS
_HOLD = Table.HOLDING_REGISTERS
_F32 = ValueType.FLOAT32
_ABCD = WordOrder.ABCD
_CDAB = WordOrder.CDAB


@dataclass(frozen=True, slots=True)
class Row:
    """One datasheet row: ``physical = raw / divisor`` in ``unit``.

    ``source`` names the supply quantity it shows and ``factor`` converts the
    supply's unit (V, A, W, kWh, Hz) into the datasheet's (1000 for kWh → Wh).
    """

    address: int
    name: str
    table: Table
    type: ValueType
    unit: str | None
    divisor: float = 1.0
    order: WordOrder = _ABCD
    source: str | None = None
    factor: float = 1.0


def _phases(
    addresses: tuple[int, int, int],
    name: str,
    table: Table,
    value_type: ValueType,
    unit: str | None,
    divisor: float = 1.0,
    order: WordOrder = _ABCD,
    factor: float = 1.0,
) -> list[Row]:
    return [
        Row(address, name.format(n=n), table, value_type, unit, divisor, order, factor=factor)
        for n, address in zip((1, 2, 3), addresses, strict=True)
    ]


# Eastron SDM72D-M(-2): input registers, float32 ABCD (30001-based numbering).
SDM72D_ROWS: tuple[Row, ...] = (
    *_phases((0x0000, 0x0002, 0x0004), "voltage_l{n}", _IN, _F32, "V"),
    *_phases((0x0006, 0x0008, 0x000A), "current_l{n}", _IN, _F32, "A"),
    *_phases((0x000C, 0x000E, 0x0010), "active_power_l{n}", _IN, _F32, "W"),
    Row(0x0034, "active_power", _IN, _F32, "W"),
    Row(0x003E, "power_factor", _IN, _F32, None),
    Row(0x0046, "frequency", _IN, _F32, "Hz"),
    Row(0x0048, "energy_import", _IN, _F32, "kWh"),
    Row(0x004A, "energy_export", _IN, _F32, "kWh"),
    Row(0x0156, "energy_total", _IN, _F32, "kWh"),
)

# Carlo Gavazzi EM24: input registers; int32 with the low word first, int16.
_I32 = ValueType.INT32
_I16 = ValueType.INT16
EM24_ROWS: tuple[Row, ...] = (
    *_phases((0x00, 0x02, 0x04), "voltage_l{n}", _IN, _I32, "V", 10, _CDAB),
    *_phases((0x0C, 0x0E, 0x10), "current_l{n}", _IN, _I32, "A", 1000, _CDAB),
    *_phases((0x12, 0x14, 0x16), "active_power_l{n}", _IN, _I32, "W", 10, _CDAB),
    Row(0x28, "active_power", _IN, _I32, "W", 10, _CDAB),
    *_phases((0x32, 0x33, 0x34), "power_factor_l{n}", _IN, _I16, None, 1000),
    Row(0x35, "power_factor", _IN, _I16, None, 1000),
    Row(0x37, "frequency", _IN, _I16, "Hz", 10),
    Row(0x42, "energy_import", _IN, _I32, "kWh", 10, _CDAB),
    *_phases((0x46, 0x48, 0x4A), "energy_import_l{n}", _IN, _I32, "kWh", 10, _CDAB),
    Row(0x5C, "energy_export", _IN, _I32, "kWh", 10, _CDAB),
)

# ABB B23/B24: holding registers, big-endian unsigned/signed 16/32/64-bit.
_U16, _U32, _U64 = ValueType.UINT16, ValueType.UINT32, ValueType.UINT64
ABB_B23_ROWS: tuple[Row, ...] = (
    Row(0x5000, "energy_import", _HOLD, _U64, "kWh", 100),
    Row(0x5004, "energy_export", _HOLD, _U64, "kWh", 100),
    *_phases((0x5460, 0x5464, 0x5468), "energy_import_l{n}", _HOLD, _U64, "kWh", 100),
    *_phases((0x546C, 0x5470, 0x5474), "energy_export_l{n}", _HOLD, _U64, "kWh", 100),
    *_phases((0x5B00, 0x5B02, 0x5B04), "voltage_l{n}", _HOLD, _U32, "V", 10),
    *_phases((0x5B0C, 0x5B0E, 0x5B10), "current_l{n}", _HOLD, _U32, "A", 100),
    Row(0x5B14, "active_power", _HOLD, _I32, "W", 100),
    *_phases((0x5B16, 0x5B18, 0x5B1A), "active_power_l{n}", _HOLD, _I32, "W", 100),
    Row(0x5B2C, "frequency", _HOLD, _U16, "Hz", 100),
    Row(0x5B3A, "power_factor", _HOLD, _I16, None, 1000),
    *_phases((0x5B3B, 0x5B3C, 0x5B3D), "power_factor_l{n}", _HOLD, _I16, None, 1000),
)

# Schneider Electric iEM3255 (iEM3000 series): holding registers, float32 ABCD
# (power in kW), energies int64 in Wh; address = the manual's register - 1.
_I64 = ValueType.INT64
IEM3255_ROWS: tuple[Row, ...] = (
    *_phases((0x0BB7, 0x0BB9, 0x0BBB), "current_l{n}", _HOLD, _F32, "A"),
    Row(0x0BC1, "current_avg", _HOLD, _F32, "A"),
    *_phases((0x0BD3, 0x0BD5, 0x0BD7), "voltage_l{n}", _HOLD, _F32, "V"),
    Row(0x0BDB, "voltage_avg", _HOLD, _F32, "V"),
    *_phases((0x0BED, 0x0BEF, 0x0BF1), "active_power_l{n}", _HOLD, _F32, "kW", factor=0.001),
    Row(0x0BF3, "active_power", _HOLD, _F32, "kW", factor=0.001),
    Row(0x0BFB, "reactive_power", _HOLD, _F32, "kvar", factor=0.001),
    Row(0x0C03, "apparent_power", _HOLD, _F32, "kVA", factor=0.001),
    Row(0x0C25, "frequency", _HOLD, _F32, "Hz"),
    Row(0x0C83, "energy_import", _HOLD, _I64, "Wh", factor=1000),
    Row(0x0C87, "energy_export", _HOLD, _I64, "Wh", factor=1000),
    Row(0x0C93, "reactive_energy_import", _HOLD, _I64, "varh", factor=1000),
    Row(0x0C97, "reactive_energy_export", _HOLD, _I64, "varh", factor=1000),
    *_phases((0x0DBD, 0x0DC1, 0x0DC5), "energy_import_l{n}", _HOLD, _I64, "Wh", factor=1000),
)

OTHER_MODELS: dict[str, tuple[Row, ...]] = {
    "sdm72d": SDM72D_ROWS,
    "em24": EM24_ROWS,
    "abb-b23": ABB_B23_ROWS,
    "iem3255": IEM3255_ROWS,
}
"""The models of this module and their datasheet rows."""

_STR = ValueType.STRING


def identity(model: str, seed: int = 0) -> tuple[tuple[Register, float | str], ...]:
    """The identity registers of ``model`` (one of :data:`OTHER_MODELS`) and their
    values for ``seed``: what the documents cited in citygate's profiles place there."""
    rng = random.Random(f"{model}/identity/{seed}")
    serial = rng.randrange(10_000_000, 100_000_000)

    def reg(
        name: str, address: int, table: Table, kind: ValueType, length: int | None = None
    ) -> Register:
        return Register(name, address, table, kind, None, name, _ABCD, length)

    if model == "sdm72d":  # holding 464513: serial number, unsigned int32
        return ((reg("serial_number", 0xFC00, _HOLD, _U32), serial),)
    if model == "em24":  # 000Bh identification code; 5000h serial number, 7 registers ASCII
        return (
            (reg("model", 0x000B, _IN, ValueType.UINT16), 1648),
            (reg("serial_number", 0x5000, _HOLD, _STR, 7), f"KY{rng.randrange(10**10, 10**11)}"),
        )
    if model == "abb-b23":  # 8900 serial number; 8908 firmware version, ASCII, NUL-padded
        return (
            (reg("serial_number", 0x8900, _HOLD, _U32), serial),
            (reg("firmware_version", 0x8908, _HOLD, _STR, 8), "1.4.0"),
        )
    if model == "iem3255":  # System table: model, manufacturer, serial, firmware (DLF)
        return (
            (reg("model", 0x0031, _HOLD, _STR, 20), "iEM3255"),
            (reg("manufacturer", 0x0045, _HOLD, _STR, 20), "Schneider Electric"),
            (reg("serial_number", 0x0081, _HOLD, _U32), serial),
            (reg("firmware_version", 0x0664, _HOLD, ValueType.UINT16), 132),
        )
    return ()


class MappedMeter(Meter):
    """A meter serving ``rows`` with values from a simulated three-phase supply."""

    def __init__(
        self,
        model: str,
        rows: tuple[Row, ...],
        seed: int = 0,
        *,
        clock: Clock = time.monotonic,
        speed: float = 1.0,
        start_time: float | None = None,
        unmapped: Unmapped = "zero_in_map",
        identity: Sequence[tuple[Register, float | str]] = (),
    ) -> None:
        self.rows = {row.name: row for row in rows}
        registers = [
            Register(row.name, row.address, row.table, row.type, row.unit, row.name, row.order)
            for row in rows
        ]
        registers += [register for register, _ in identity]
        self._identity: dict[str, float | str] = {r.name: value for r, value in identity}
        super().__init__(model, registers, clock=clock, unmapped=unmapped)
        # The building behind the meter: the SDM630 simulator's physics, seeded per model.
        self._supply = Sdm630(
            seed, clock=clock, speed=speed, start_time=start_time, unmapped="zero"
        )
        self._publish()

    def physical(self) -> dict[str, tuple[float, str | None]]:
        """The values served right now as the datasheet defines them:
        ``raw / divisor`` in the row's unit, by register name."""
        raw = self.truth()
        return {
            name: (raw[name] / row.divisor if row.divisor != 1 else raw[name], row.unit)
            for name, row in self.rows.items()
        }

    def _values(self) -> Mapping[str, float | str]:
        supply = self._supply.truth()
        values: dict[str, float | str] = dict(self._identity)
        for name, row in self.rows.items():
            value = supply[row.source or name] * row.factor
            if row.type is not ValueType.FLOAT32:
                value = round(value * row.divisor)
            values[name] = value
        return values


def make_other(
    model: str,
    seed: int = 0,
    *,
    clock: Clock = time.monotonic,
    speed: float = 1.0,
    start_time: float | None = None,
    unmapped: Unmapped | None = None,
) -> MappedMeter:
    """A meter of one of :data:`OTHER_MODELS`; raises KeyError for another name."""
    rows = OTHER_MODELS[model]
    return MappedMeter(
        model,
        rows,
        seed,
        clock=clock,
        speed=speed,
        start_time=start_time,
        unmapped="zero_in_map" if unmapped is None else unmapped,
        identity=identity(model, seed),
    )
