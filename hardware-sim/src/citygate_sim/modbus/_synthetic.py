"""Synthetic units: ``generic<N>`` (benchmark load) and ``typed`` (every type × order,
a string in every order).

``typed`` is built by struct-packing documented values directly, so a driver's
decoder can be checked against it without sharing any code with it. It also
serves the worked examples of the Modbus Application Protocol specification
(section 6) at their addresses, so a client can be checked byte for byte.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Mapping

from ._meter import Clock, Meter, Register, Unmapped
from ._pdu import FunctionCode, Table
from ._values import ValueType, WordOrder

__all__ = [
    "SPEC_COILS_ON",
    "SPEC_DISCRETE_INPUTS_ON",
    "TYPED_BASE_ADDRESS",
    "TYPED_TEXT",
    "TYPED_TEXT_ADDRESS",
    "TYPED_TEXT_REGISTERS",
    "TYPED_VALUES",
    "GenericMeter",
    "TypedMeter",
    "typed_address",
]

# -- typed --------------------------------------------------------------------------------

TYPED_BASE_ADDRESS = 1000
"""First register of the typed block (holding and input tables alike)."""

TYPED_VALUES: dict[ValueType, float] = {
    ValueType.INT16: -12345,  # 0xCFC7
    ValueType.UINT16: 0xCAFE,  # 51966
    ValueType.INT32: -123456789,  # 0xF8A432EB
    ValueType.UINT32: 0xDEADBEEF,  # 3735928559
    ValueType.INT64: -1234567890123456789,  # 0xEEDDEF0B82167EEB
    ValueType.UINT64: 0x0123456789ABCDEF,  # 81985529216486895
    # 230.2 V as the SDM meter of vectors/modbus M1 sends it: bits 0x43663334
    ValueType.FLOAT32: struct.unpack(">f", bytes.fromhex("43663334"))[0],
    ValueType.FLOAT64: -1234.5678,  # 0xC0934A456D5CFAAD
    ValueType.INT48: -0x123456789ABC,  # 0xEDCBA9876544
    ValueType.UINT48: 0x0123456789AB,  # 81985529216939
}
"""One value per type; each has eight (or two, four, six) different bytes, so any
mix-up of byte or word order shows."""

TYPED_TEXT = "CG-SIM v1.0.3"
"""The text of the typed map's string registers: 13 ASCII characters, NUL-padded."""
TYPED_TEXT_ADDRESS = 1200
"""First register of the string block (holding and input tables alike)."""
TYPED_TEXT_REGISTERS = 8
"""Registers of each string (16 bytes: the text and 3 NULs)."""

_TYPES = tuple(TYPED_VALUES)
_ORDERS = tuple(WordOrder)
_SLOT_REGISTERS = 4
_TYPED_END = TYPED_BASE_ADDRESS + len(_TYPES) * len(_ORDERS) * _SLOT_REGISTERS


def typed_address(value_type: ValueType, order: WordOrder) -> int:
    """Address of ``value_type`` in ``order``: base + 16 × type index + 4 × order index.

    Type index: int16 0, uint16 1, int32 2, uint32 3, int64 4, uint64 5, float32 6,
    float64 7, int48 8, uint48 9; order index: ABCD 0, CDAB 1, BADC 2, DCBA 3. A slot
    is 4 registers; registers after a shorter value hold 0 and are mapped. A string:
    :data:`TYPED_TEXT_ADDRESS` + 8 × order index.
    """
    if value_type is ValueType.STRING:
        return TYPED_TEXT_ADDRESS + TYPED_TEXT_REGISTERS * _ORDERS.index(order)
    return (
        TYPED_BASE_ADDRESS
        + _SLOT_REGISTERS * len(_ORDERS) * _TYPES.index(value_type)
        + _SLOT_REGISTERS * _ORDERS.index(order)
    )


# Modbus Application Protocol V1.1b3, section 6: the examples' data, as the text states
# it ("outputs 27-20 ... CD hex", "inputs 204-197 ... AC hex"), in 0-based addresses.
SPEC_COILS_ON = frozenset(n - 1 for n in (20, 22, 23, 26, 27, 28, 29, 31, 33, 34, 36, 38))
"""Coils ON (0-based); the other coils 0..63 are OFF. Example 6.1: read coils 20-38."""
SPEC_DISCRETE_INPUTS_ON = frozenset(
    n - 1 for n in (199, 200, 202, 204, 205, 206, 208, 209, 211, 212, 213, 215, 217, 218)
)
"""Discrete inputs ON (0-based); the others 0..255 are OFF. Example 6.2: inputs 197-218."""
_SPEC_HOLDING = {107: 0x022B, 108: 0x0000, 109: 0x0064}  # example 6.3: registers 108-110
_SPEC_INPUT = {8: 0x000A}  # example 6.4: input register 9
_SPEC_HOLDING_RANGE = (100, 120)
_SPEC_INPUT_RANGE = (0, 16)
_COIL_COUNT = 64
_DISCRETE_COUNT = 256


def _typed_registers() -> list[Register]:
    registers = []
    for table in (Table.HOLDING_REGISTERS, Table.INPUT_REGISTERS):
        for value_type in _TYPES:
            for order in _ORDERS:
                registers.append(
                    Register(
                        f"{table}_{value_type}_{order.lower()}",
                        typed_address(value_type, order),
                        table,
                        value_type,
                        None,
                        f"{value_type} {TYPED_VALUES[value_type]!r} in order {order}",
                        order,
                    )
                )
        for order in _ORDERS:
            registers.append(
                Register(
                    f"{table}_string_{order.lower()}",
                    typed_address(ValueType.STRING, order),
                    table,
                    ValueType.STRING,
                    None,
                    f"string {TYPED_TEXT!r} in order {order}",
                    order,
                    TYPED_TEXT_REGISTERS,
                )
            )
    for address, word in _SPEC_HOLDING.items():
        registers.append(
            Register(
                f"spec_holding_{address}",
                address,
                Table.HOLDING_REGISTERS,
                ValueType.UINT16,
                None,
                f"Modbus spec example 6.3: register {address + 1} = {word}",
            )
        )
    for address, word in _SPEC_INPUT.items():
        registers.append(
            Register(
                f"spec_input_{address}",
                address,
                Table.INPUT_REGISTERS,
                ValueType.UINT16,
                None,
                f"Modbus spec example 6.4: input register {address + 1} = {word}",
            )
        )
    registers += [
        Register(f"coil_{a}", a, Table.COILS, ValueType.BOOL, None, "spec example 6.1 pattern")
        for a in range(_COIL_COUNT)
    ]
    registers += [
        Register(
            f"discrete_{a}", a, Table.DISCRETE_INPUTS, ValueType.BOOL, None, "example 6.2 pattern"
        )
        for a in range(_DISCRETE_COUNT)
    ]
    return registers


class TypedMeter(Meter):
    """Fixed values of every type in every word order, plus the spec's examples.

    Holding and input registers ``1000..1127`` hold :data:`TYPED_VALUES` at
    :func:`typed_address` (named ``<table>_<type>_<order>``, e.g.
    ``holding_float32_cdab``), and :data:`TYPED_TEXT` in 8 registers per order from
    :data:`TYPED_TEXT_ADDRESS` (``<table>_string_<order>``, read-only). Holding
    100..119 and input 0..15 are mapped and
    hold the spec examples' words (others 0); coils 0..63 and discrete inputs
    0..255 hold the spec examples' bits. Answers function codes 01 to 04, and
    05, 06, 15, 16: the typed holding block and the coils may be written (a
    written value reads back); holding 100..119 are read-only (exception 02).
    """

    def __init__(self, *, unmapped: Unmapped = "exception") -> None:
        """The one typed map (it has no seed: its values never change)."""
        super().__init__(
            "typed",
            _typed_registers(),
            function_codes=tuple(FunctionCode),
            mapped={
                Table.HOLDING_REGISTERS: [
                    (TYPED_BASE_ADDRESS, _TYPED_END),
                    _SPEC_HOLDING_RANGE,
                ],
                Table.INPUT_REGISTERS: [(TYPED_BASE_ADDRESS, _TYPED_END), _SPEC_INPUT_RANGE],
            },
            unmapped=unmapped,
            writable={
                Table.HOLDING_REGISTERS: [(TYPED_BASE_ADDRESS, _TYPED_END)],
                Table.COILS: [(0, _COIL_COUNT)],
            },
        )
        self._fixed: dict[str, float | str] = {}
        for register in self.registers:
            if register.type is ValueType.STRING:
                self._fixed[register.name] = TYPED_TEXT
            elif register.type is ValueType.BOOL:
                on = SPEC_COILS_ON if register.table is Table.COILS else SPEC_DISCRETE_INPUTS_ON
                self._fixed[register.name] = register.address in on
            elif register.name.startswith("spec_holding_"):
                self._fixed[register.name] = _SPEC_HOLDING[register.address]
            elif register.name.startswith("spec_input_"):
                self._fixed[register.name] = _SPEC_INPUT[register.address]
            else:
                self._fixed[register.name] = TYPED_VALUES[register.type]
        self._publish()

    def _values(self) -> Mapping[str, float | str]:
        return self._fixed


# -- generic ------------------------------------------------------------------------------

MAX_GENERIC_VALUES = 32768
MAX_GENERIC_DECIMALS = 6


class GenericMeter(Meter):
    """``size`` float32 (ABCD) input registers from address 0, each a random walk.

    Value ``i`` (named ``value_<i>``) lives at registers ``2i`` and ``2i + 1``;
    it starts between 0 and 1000 and moves by about 1 per square-root second.
    With ``decimals`` each value is rounded to that many decimal places before it
    becomes a float32 (a meter of 0.1 resolution, or a simulator set to 196.6);
    without, registers hold the walk's full float32 precision.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        *,
        clock: Clock = time.monotonic,
        speed: float = 1.0,
        unmapped: Unmapped = "exception",
        decimals: int | None = None,
    ) -> None:
        """``size`` values (1..32768); ``speed`` scales how fast they wander; ``decimals``
        (0..6) rounds them."""
        if not 1 <= size <= MAX_GENERIC_VALUES:
            raise ValueError(f"generic size {size} outside 1..{MAX_GENERIC_VALUES}")
        if not speed > 0 or not math.isfinite(speed):
            raise ValueError(f"speed must be a positive number, not {speed}")
        if decimals is not None and not 0 <= decimals <= MAX_GENERIC_DECIMALS:
            raise ValueError(f"generic decimals {decimals} outside 0..{MAX_GENERIC_DECIMALS}")
        registers = [
            Register(f"value_{i}", 2 * i, Table.INPUT_REGISTERS, ValueType.FLOAT32, None, "walk")
            for i in range(size)
        ]
        model = f"generic{size}" if decimals is None else f"generic{size}d{decimals}"
        super().__init__(model, registers, clock=clock, unmapped=unmapped)
        self._rng = random.Random(f"generic/{seed}")
        self._speed = speed
        self._decimals = decimals
        self._names = [register.name for register in registers]
        self._walk = [self._rng.uniform(0.0, 1000.0) for _ in range(size)]
        self._publish()

    def _advance(self, elapsed: float) -> None:
        spread = math.sqrt(elapsed * self._speed)
        gauss = self._rng.gauss
        self._walk = [value + spread * gauss(0.0, 1.0) for value in self._walk]

    def _values(self) -> Mapping[str, float]:
        if self._decimals is not None:
            decimals = self._decimals
            return {
                name: round(v, decimals) for name, v in zip(self._names, self._walk, strict=True)
            }
        return dict(zip(self._names, self._walk, strict=True))
