"""Eastron SDM630 (three-phase) and SDM120 (single-phase) energy meters.

Register maps from Eastron's "SDM630 Modbus Protocol" and "SDM120 Modbus
protocol" documents as reproduced in open-source meter readers (reaper7 SDM.h's
per-model columns, mbmd, Tasmota; ../shared/vectors/modbus/README.md C.2/C.3):
every value is an IEEE-754 float32 in two registers, high word first (ABCD);
measurements are input registers (FC 04), settings holding registers (FC 03),
except the serial number, a uint32 at holding 0xFC00.

Device rules from the same documents: "Each request for data must be restricted
to 40 parameters or less" (80 registers; the simulator answers more with
exception 03), and exception 02 (illegal data address) for "an attempt to access
an invalid address or an attempt to read or write part of a floating point value"
(an odd start address or an odd register count).

Writes: the settings (holding registers, FC 16 only, whole parameters) may be
written and read back; the serial number is read-only (exception 02).

Reserved addresses inside the documented map (0x002C, 0x0032, … on the SDM630)
read as 0 by default (``unmapped="zero_in_map"``), as meters in the field answer
such reads (nmakel/sdm_modbus reads whole blocks across them); a read reaching
beyond the documented ranges gets exception 02. ``unmapped="exception"`` models
a strict meter that refuses every read touching an unmapped register.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping

from ._meter import Clock, Meter, Register, Unmapped
from ._pdu import FunctionCode, Table
from ._physics import SECONDS_PER_DAY, PhaseState, Supply, line_to_line, neutral_current
from ._values import ValueType

__all__ = [
    "EASTRON_UNMAPPED",
    "SDM120_MAP_RANGES",
    "SDM120_REGISTERS",
    "SDM630_MAP_RANGES",
    "SDM630_REGISTERS",
    "Sdm120",
    "Sdm630",
]

EASTRON_MAX_READ_REGISTERS = 80
EASTRON_FUNCTION_CODES = (
    FunctionCode.READ_HOLDING_REGISTERS,
    FunctionCode.READ_INPUT_REGISTERS,
    FunctionCode.WRITE_MULTIPLE_REGISTERS,
)
"""The documents' function codes: 03 and 04 to read, 16 to write the settings."""
EASTRON_UNMAPPED: Unmapped = "zero_in_map"
"""The Eastron models' default answer to reads over reserved addresses."""
_SERIAL_NUMBER_RANGE = (0xFC00, 0xFC02)
DEMAND_PERIOD_MINUTES = 60.0

_IN = Table.INPUT_REGISTERS
_HOLD = Table.HOLDING_REGISTERS


def _floats(table: Table, rows: list[tuple[int, str, str | None, str]]) -> list[Register]:
    return [
        Register(name, address, table, ValueType.FLOAT32, unit, description)
        for address, name, unit, description in rows
    ]


def _per_phase(
    address: int, name: str, unit: str | None, description: str
) -> list[tuple[int, str, str | None, str]]:
    """Three consecutive float parameters, one per phase (``name`` holds ``{n}``)."""
    return [
        (address + 2 * index, name.format(n=n), unit, description.format(n=n))
        for index, n in enumerate((1, 2, 3))
    ]


SDM630_REGISTERS: tuple[Register, ...] = tuple(
    _floats(
        _IN,
        [
            *_per_phase(0x0000, "voltage_l{n}", "V", "phase {n} line to neutral volts"),
            *_per_phase(0x0006, "current_l{n}", "A", "phase {n} current"),
            *_per_phase(0x000C, "active_power_l{n}", "W", "phase {n} active power"),
            *_per_phase(0x0012, "apparent_power_l{n}", "VA", "phase {n} apparent power"),
            *_per_phase(0x0018, "reactive_power_l{n}", "var", "phase {n} reactive power"),
            *_per_phase(0x001E, "power_factor_l{n}", "/", "phase {n} power factor"),
            *_per_phase(0x0024, "phase_angle_l{n}", "deg", "phase {n} phase angle"),
            (0x002A, "voltage_avg", "V", "average line to neutral volts"),
            (0x002E, "current_avg", "A", "average line current"),
            (0x0030, "current_sum", "A", "sum of line currents"),
            (0x0034, "active_power", "W", "total system power"),
            (0x0038, "apparent_power", "VA", "total system volt amps"),
            (0x003C, "reactive_power", "var", "total system VAr"),
            (0x003E, "power_factor", "/", "total system power factor"),
            (0x0042, "phase_angle", "deg", "total system phase angle"),
            (0x0046, "frequency", "Hz", "frequency of supply voltages"),
            (0x0048, "energy_import", "kWh", "total import kWh"),
            (0x004A, "energy_export", "kWh", "total export kWh"),
            (0x004C, "reactive_energy_import", "kvarh", "total import kVArh"),
            (0x004E, "reactive_energy_export", "kvarh", "total export kVArh"),
            (0x0050, "apparent_energy", "kVAh", "VAh since last reset"),
            (0x0052, "charge", "Ah", "Ah since last reset"),
            (0x0054, "demand_power", "W", "total system power demand"),
            (0x0056, "demand_power_max", "W", "maximum total system power demand"),
            (0x0064, "demand_apparent_power", "VA", "total system VA demand"),
            (0x0066, "demand_apparent_power_max", "VA", "maximum total system VA demand"),
            (0x0068, "demand_current_n", "A", "neutral current demand"),
            (0x006A, "demand_current_n_max", "A", "maximum neutral current demand"),
            (0x00C8, "voltage_l1_l2", "V", "line 1 to line 2 volts"),
            (0x00CA, "voltage_l2_l3", "V", "line 2 to line 3 volts"),
            (0x00CC, "voltage_l3_l1", "V", "line 3 to line 1 volts"),
            (0x00CE, "voltage_ll_avg", "V", "average line to line volts"),
            (0x00E0, "current_n", "A", "neutral current"),
            *_per_phase(0x00EA, "voltage_thd_l{n}", "%", "phase {n} L/N volts THD"),
            *_per_phase(0x00F0, "current_thd_l{n}", "%", "phase {n} current THD"),
            (0x00F8, "voltage_thd_avg", "%", "average line to neutral volts THD"),
            (0x00FA, "current_thd_avg", "%", "average line current THD"),
            *_per_phase(0x0102, "demand_current_l{n}", "A", "phase {n} current demand"),
            *_per_phase(0x0108, "demand_current_l{n}_max", "A", "maximum phase {n} current demand"),
            (0x014E, "voltage_thd_l1_l2", "%", "line 1 to line 2 volts THD"),
            (0x0150, "voltage_thd_l2_l3", "%", "line 2 to line 3 volts THD"),
            (0x0152, "voltage_thd_l3_l1", "%", "line 3 to line 1 volts THD"),
            (0x0154, "voltage_thd_ll_avg", "%", "average line to line volts THD"),
            (0x0156, "energy_total", "kWh", "total kWh (import + export)"),
            (0x0158, "reactive_energy_total", "kvarh", "total kVArh (import + export)"),
            *_per_phase(0x015A, "energy_import_l{n}", "kWh", "L{n} import kWh"),
            *_per_phase(0x0160, "energy_export_l{n}", "kWh", "L{n} export kWh"),
            *_per_phase(0x0166, "energy_total_l{n}", "kWh", "L{n} total kWh"),
            *_per_phase(0x016C, "reactive_energy_import_l{n}", "kvarh", "L{n} import kVArh"),
            *_per_phase(0x0172, "reactive_energy_export_l{n}", "kvarh", "L{n} export kVArh"),
            *_per_phase(0x0178, "reactive_energy_total_l{n}", "kvarh", "L{n} total kVArh"),
        ],
    )
    + _floats(
        _HOLD,
        [
            (0x0000, "demand_time", "min", "minutes into the first demand calculation"),
            (0x0002, "demand_period", "min", "demand period (0, 5, 8, 10, 15, 20, 30, 60)"),
            (0x000A, "system_type", None, "system type: 1 = 1P2W, 2 = 3P3W, 3 = 3P4W"),
            (0x000C, "pulse1_width", "ms", "pulse 1 width (60, 100, 200)"),
            (0x0012, "network_parity_stop", None, "0: 1 stop, none; 1: even; 2: odd; 3: 2 stop"),
            (0x001C, "network_baud_rate", None, "0: 2400, 1: 4800, 2: 9600, 3: 19200, 4: 38400"),
            (0x0056, "pulse1_energy_type", None, "1: import, 2: total, 4: export kWh; 5-8: kVArh"),
        ],
    )
    + [Register("serial_number", 0xFC00, _HOLD, ValueType.UINT32, None, "serial number")]
)

SDM630_MAP_RANGES: dict[Table, tuple[tuple[int, int], ...]] = {
    _IN: ((0x0000, 0x017E),),  # 30001-30382: parameters 1-191
    _HOLD: ((0x0000, 0x0058), _SERIAL_NUMBER_RANGE),  # 40001-40088, 464513-464514
}
"""The documented SDM630 map's ``(start, end)`` address ranges (end exclusive)."""

SDM120_REGISTERS: tuple[Register, ...] = tuple(
    _floats(
        _IN,
        [
            (0x0000, "voltage", "V", "voltage"),
            (0x0006, "current", "A", "current"),
            (0x000C, "active_power", "W", "active power"),
            (0x0012, "apparent_power", "VA", "apparent power"),
            (0x0018, "reactive_power", "var", "reactive power"),
            (0x001E, "power_factor", "/", "power factor"),
            (0x0024, "phase_angle", "deg", "phase angle"),
            (0x0046, "frequency", "Hz", "frequency"),
            (0x0048, "energy_import", "kWh", "import active energy"),
            (0x004A, "energy_export", "kWh", "export active energy"),
            (0x004C, "reactive_energy_import", "kvarh", "import reactive energy"),
            (0x004E, "reactive_energy_export", "kvarh", "export reactive energy"),
            (0x0054, "demand_power", "W", "total system power demand"),
            (0x0056, "demand_power_max", "W", "maximum total system power demand"),
            (0x0058, "demand_power_import", "W", "import system power demand"),
            (0x005A, "demand_power_import_max", "W", "maximum import system power demand"),
            (0x005C, "demand_power_export", "W", "export system power demand"),
            (0x005E, "demand_power_export_max", "W", "maximum export system power demand"),
            (0x0102, "demand_current", "A", "current demand"),
            (0x0108, "demand_current_max", "A", "maximum current demand"),
            (0x0156, "energy_total", "kWh", "total active energy (import + export)"),
            (0x0158, "reactive_energy_total", "kvarh", "total reactive energy (import + export)"),
        ],
    )
    + _floats(
        _HOLD,
        [
            (0x0012, "network_parity_stop", None, "0: 1 stop, none; 1: even; 2: odd; 3: 2 stop"),
            (0x001C, "network_baud_rate", None, "0 = 2400, 1 = 4800, 2 = 9600, 5 = 1200"),
        ],
    )
    + [Register("serial_number", 0xFC00, _HOLD, ValueType.UINT32, None, "serial number")]
)

SDM120_MAP_RANGES: dict[Table, tuple[tuple[int, int], ...]] = {
    _IN: ((0x0000, 0x015A),),  # 30001-30346
    _HOLD: ((0x0012, 0x001E), _SERIAL_NUMBER_RANGE),  # 40019-40030, 464513-464514
}
"""The documented SDM120 map's ``(start, end)`` address ranges (end exclusive)."""


def _settings(registers: tuple[Register, ...]) -> list[tuple[int, int]]:
    """The writable holding registers: every setting, not the serial number."""
    return [
        (register.address, register.address + register.count)
        for register in registers
        if register.table is _HOLD and register.name != "serial_number"
    ]


class _Demand:
    """A demand value (a moving average over the demand period) and its maximum.

    Eastron meters average over a sliding window; an exponential average with the
    same time constant moves alike and needs no history.
    """

    def __init__(self, value: float, maximum: float) -> None:
        self.value = value
        self.maximum = max(value, maximum)

    def update(self, present: float, dt: float, period: float) -> None:
        self.value += (present - self.value) * (1.0 - math.exp(-dt / period))
        self.maximum = max(self.maximum, self.value)


def _seconds_of_day(unix_time: float) -> float:
    local = time.localtime(unix_time)
    return (local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + unix_time % 1.0) % (
        SECONDS_PER_DAY
    )


class _SupplyMeter(Meter):
    """An energy meter on a :class:`Supply`: counters, demands, time of day, speed."""

    def __init__(
        self,
        model: str,
        registers: tuple[Register, ...],
        map_ranges: dict[Table, tuple[tuple[int, int], ...]],
        supply: Supply,
        rng: random.Random,
        *,
        clock: Clock,
        speed: float,
        start_time: float | None,
        unmapped: Unmapped,
    ) -> None:
        if not speed > 0 or not math.isfinite(speed):
            raise ValueError(f"speed must be a positive number, not {speed}")
        super().__init__(
            model,
            registers,
            clock=clock,
            map_ranges=map_ranges,
            unmapped=unmapped,
            function_codes=EASTRON_FUNCTION_CODES,
            max_read_registers=EASTRON_MAX_READ_REGISTERS,
            parameter_registers=2,
            writable={_HOLD: _settings(registers)},
        )
        self.supply = supply
        self._speed = speed
        self._start_of_day = _seconds_of_day(time.time() if start_time is None else start_time)
        self.simulated_seconds = 0.0
        self.phases = supply.phases(self._start_of_day)
        count = len(self.phases)
        has_pv = supply.pv_peak_power > 0
        self.energy_import = [rng.uniform(300.0, 15000.0) for _ in range(count)]
        self.energy_export = [rng.uniform(50.0, 3000.0) if has_pv else 0.0 for _ in range(count)]
        self.reactive_import = [rng.uniform(50.0, 4000.0) for _ in range(count)]
        self.reactive_export = [rng.uniform(5.0, 400.0) for _ in range(count)]
        self.apparent_energy = 1.1 * (sum(self.energy_import) + sum(self.energy_export))
        self.charge = self.apparent_energy * 1000.0 / 230.0
        self.serial_number = rng.randrange(10_000_000, 100_000_000)

    @property
    def seconds_of_day(self) -> float:
        """Simulated local time of day (s since midnight)."""
        return (self._start_of_day + self.simulated_seconds) % SECONDS_PER_DAY

    def _advance(self, elapsed: float) -> None:
        dt = elapsed * self._speed
        hours = dt / 3600.0
        # The meter integrates the power it measured over the interval just ended.
        for index, phase in enumerate(self.phases):
            kw, kvar = phase.active_power / 1000.0, phase.reactive_power / 1000.0
            if kw >= 0:
                self.energy_import[index] += kw * hours
            else:
                self.energy_export[index] -= kw * hours
            if kvar >= 0:
                self.reactive_import[index] += kvar * hours
            else:
                self.reactive_export[index] -= kvar * hours
        self.apparent_energy += sum(p.apparent_power for p in self.phases) / 1000.0 * hours
        self.charge += sum(p.current for p in self.phases) * hours
        self._update_demands(dt)
        self.simulated_seconds += dt
        self.supply.step(dt)
        self.phases = self.supply.phases(self.seconds_of_day)

    def _update_demands(self, dt: float) -> None:
        raise NotImplementedError


class Sdm630(_SupplyMeter):
    """Eastron SDM630 on a three-phase, four-wire building supply."""

    def __init__(
        self,
        seed: int = 0,
        *,
        clock: Clock = time.monotonic,
        speed: float = 1.0,
        start_time: float | None = None,
        unmapped: Unmapped = EASTRON_UNMAPPED,
    ) -> None:
        """A meter whose building, load and counters follow from ``seed``."""
        rng = random.Random(f"sdm630/{seed}")
        curve = rng.choice(("office", "residential", "shop", "street_lighting"))
        peak = rng.uniform(6_000.0, 45_000.0)
        has_pv = curve != "street_lighting" and rng.random() < 0.35
        pv = rng.uniform(0.3, 1.2) * peak if has_pv else 0.0
        supply = Supply(rng, phases=3, peak_power=peak, curve=curve, pv_peak_power=pv)
        super().__init__(
            "sdm630",
            SDM630_REGISTERS,
            SDM630_MAP_RANGES,
            supply,
            rng,
            clock=clock,
            speed=speed,
            start_time=start_time,
            unmapped=unmapped,
        )
        total_power = sum(p.active_power for p in self.phases)
        total_va = sum(p.apparent_power for p in self.phases)
        self._power_demand = _Demand(total_power, abs(total_power) * rng.uniform(1.2, 1.8))
        self._va_demand = _Demand(total_va, total_va * rng.uniform(1.2, 1.8))
        i_n = neutral_current(self.phases)
        self._neutral_demand = _Demand(i_n, i_n * rng.uniform(1.2, 1.8))
        self._current_demands = [
            _Demand(p.current, p.current * rng.uniform(1.2, 1.8)) for p in self.phases
        ]
        self._publish()

    def _update_demands(self, dt: float) -> None:
        period = DEMAND_PERIOD_MINUTES * 60.0
        self._power_demand.update(sum(p.active_power for p in self.phases), dt, period)
        self._va_demand.update(sum(p.apparent_power for p in self.phases), dt, period)
        self._neutral_demand.update(neutral_current(self.phases), dt, period)
        for demand, phase in zip(self._current_demands, self.phases, strict=True):
            demand.update(phase.current, dt, period)

    def _values(self) -> Mapping[str, float]:
        phases = self.phases
        values: dict[str, float] = {}
        for n, phase in enumerate(phases, start=1):
            index = n - 1
            values |= {
                f"voltage_l{n}": phase.voltage,
                f"current_l{n}": phase.current,
                f"active_power_l{n}": phase.active_power,
                f"apparent_power_l{n}": phase.apparent_power,
                f"reactive_power_l{n}": phase.reactive_power,
                f"power_factor_l{n}": phase.power_factor,
                f"phase_angle_l{n}": phase.phase_angle,
                f"voltage_thd_l{n}": phase.voltage_thd,
                f"current_thd_l{n}": phase.current_thd,
                f"demand_current_l{n}": self._current_demands[index].value,
                f"demand_current_l{n}_max": self._current_demands[index].maximum,
                f"energy_import_l{n}": self.energy_import[index],
                f"energy_export_l{n}": self.energy_export[index],
                f"energy_total_l{n}": self.energy_import[index] + self.energy_export[index],
                f"reactive_energy_import_l{n}": self.reactive_import[index],
                f"reactive_energy_export_l{n}": self.reactive_export[index],
                f"reactive_energy_total_l{n}": (
                    self.reactive_import[index] + self.reactive_export[index]
                ),
            }
        active = sum(p.active_power for p in phases)
        apparent = sum(p.apparent_power for p in phases)
        reactive = sum(p.reactive_power for p in phases)
        line_voltages = [
            line_to_line(phases[0], phases[1]),
            line_to_line(phases[1], phases[2]),
            line_to_line(phases[2], phases[0]),
        ]
        thd = [p.voltage_thd for p in phases]
        line_thds = [(thd[0] + thd[1]) / 2, (thd[1] + thd[2]) / 2, (thd[2] + thd[0]) / 2]
        energy_import, energy_export = sum(self.energy_import), sum(self.energy_export)
        reactive_import, reactive_export = sum(self.reactive_import), sum(self.reactive_export)
        values |= {
            "voltage_avg": sum(p.voltage for p in phases) / 3,
            "current_avg": sum(p.current for p in phases) / 3,
            "current_sum": sum(p.current for p in phases),
            "active_power": active,
            "apparent_power": apparent,
            "reactive_power": reactive,
            "power_factor": active / apparent if apparent > 0 else 1.0,
            "phase_angle": math.degrees(math.atan2(reactive, active)),
            "frequency": self.supply.frequency,
            "energy_import": energy_import,
            "energy_export": energy_export,
            "reactive_energy_import": reactive_import,
            "reactive_energy_export": reactive_export,
            "apparent_energy": self.apparent_energy,
            "charge": self.charge,
            "demand_power": self._power_demand.value,
            "demand_power_max": self._power_demand.maximum,
            "demand_apparent_power": self._va_demand.value,
            "demand_apparent_power_max": self._va_demand.maximum,
            "demand_current_n": self._neutral_demand.value,
            "demand_current_n_max": self._neutral_demand.maximum,
            "voltage_l1_l2": line_voltages[0],
            "voltage_l2_l3": line_voltages[1],
            "voltage_l3_l1": line_voltages[2],
            "voltage_ll_avg": sum(line_voltages) / 3,
            "current_n": neutral_current(phases),
            "voltage_thd_avg": sum(thd) / 3,
            "current_thd_avg": sum(p.current_thd for p in phases) / 3,
            "voltage_thd_l1_l2": line_thds[0],
            "voltage_thd_l2_l3": line_thds[1],
            "voltage_thd_l3_l1": line_thds[2],
            "voltage_thd_ll_avg": sum(line_thds) / 3,
            "energy_total": energy_import + energy_export,
            "reactive_energy_total": reactive_import + reactive_export,
            "demand_time": min(self.simulated_seconds / 60.0, DEMAND_PERIOD_MINUTES),
            "demand_period": DEMAND_PERIOD_MINUTES,
            "system_type": 3.0,
            "pulse1_width": 100.0,
            "network_parity_stop": 0.0,
            "network_baud_rate": 2.0,
            "pulse1_energy_type": 4.0,
            "serial_number": self.serial_number,
        }
        return values


class Sdm120(_SupplyMeter):
    """Eastron SDM120 on a single-phase supply (a flat, a shop, a lighting circuit)."""

    def __init__(
        self,
        seed: int = 0,
        *,
        clock: Clock = time.monotonic,
        speed: float = 1.0,
        start_time: float | None = None,
        unmapped: Unmapped = EASTRON_UNMAPPED,
    ) -> None:
        """A meter whose installation, load and counters follow from ``seed``."""
        rng = random.Random(f"sdm120/{seed}")
        curve = rng.choice(("residential", "shop", "street_lighting"))
        peak = rng.uniform(1_500.0, 7_000.0)
        has_pv = curve != "street_lighting" and rng.random() < 0.3
        pv = rng.uniform(0.5, 1.3) * peak if has_pv else 0.0
        supply = Supply(rng, phases=1, peak_power=peak, curve=curve, pv_peak_power=pv)
        super().__init__(
            "sdm120",
            SDM120_REGISTERS,
            SDM120_MAP_RANGES,
            supply,
            rng,
            clock=clock,
            speed=speed,
            start_time=start_time,
            unmapped=unmapped,
        )
        phase = self.phases[0]
        p = phase.active_power
        self._power_demand = _Demand(p, abs(p) * rng.uniform(1.2, 1.8))
        self._import_demand = _Demand(max(p, 0.0), max(p, 0.0) * rng.uniform(1.2, 1.8))
        self._export_demand = _Demand(max(-p, 0.0), max(-p, 0.0) * rng.uniform(1.2, 1.8))
        self._current_demand = _Demand(phase.current, phase.current * rng.uniform(1.2, 1.8))
        self._publish()

    def _update_demands(self, dt: float) -> None:
        period = DEMAND_PERIOD_MINUTES * 60.0
        phase = self.phases[0]
        self._power_demand.update(phase.active_power, dt, period)
        self._import_demand.update(max(phase.active_power, 0.0), dt, period)
        self._export_demand.update(max(-phase.active_power, 0.0), dt, period)
        self._current_demand.update(phase.current, dt, period)

    def _values(self) -> Mapping[str, float]:
        phase: PhaseState = self.phases[0]
        energy_import, energy_export = self.energy_import[0], self.energy_export[0]
        reactive_import, reactive_export = self.reactive_import[0], self.reactive_export[0]
        return {
            "voltage": phase.voltage,
            "current": phase.current,
            "active_power": phase.active_power,
            "apparent_power": phase.apparent_power,
            "reactive_power": phase.reactive_power,
            "power_factor": phase.power_factor,
            "phase_angle": phase.phase_angle,
            "frequency": self.supply.frequency,
            "energy_import": energy_import,
            "energy_export": energy_export,
            "reactive_energy_import": reactive_import,
            "reactive_energy_export": reactive_export,
            "demand_power": self._power_demand.value,
            "demand_power_max": self._power_demand.maximum,
            "demand_power_import": self._import_demand.value,
            "demand_power_import_max": self._import_demand.maximum,
            "demand_power_export": self._export_demand.value,
            "demand_power_export_max": self._export_demand.maximum,
            "demand_current": self._current_demand.value,
            "demand_current_max": self._current_demand.maximum,
            "energy_total": energy_import + energy_export,
            "reactive_energy_total": reactive_import + reactive_export,
            "network_parity_stop": 0.0,
            "network_baud_rate": 0.0,
            "serial_number": self.serial_number,
        }
