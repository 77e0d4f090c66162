"""The simulated device: a declarative register map over sparse tables.

A :class:`Meter` keeps its physical state in subclass code and its register
images in :mod:`._banks`. State advances lazily, when a request or ``truth()``
finds that at least :data:`ADVANCE_PERIOD` seconds have passed on the injected
clock; the register images are encoded once per advance, never per request.

Writes (FC 05/06/15/16) land in the images of the ``writable`` ranges a model
declares (holding registers and coils) and stay: a written register keeps its
written bytes through every later advance. A write touching anything else is
answered with exception 02, as a meter answers a write to a read-only address.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from ._banks import AddressRanges, BitBank, RegisterBank
from ._pdu import MAX_READ_REGISTERS, ExceptionCode, FunctionCode, Table
from ._values import (
    FLOAT_TYPES,
    STRUCT_TYPES,
    ValueType,
    WordOrder,
    big_endian_struct,
    decode_text,
    decode_value,
    encode_value,
    rearrange,
    register_count,
)

__all__ = [
    "ADVANCE_PERIOD",
    "UNMAPPED_POLICIES",
    "Clock",
    "Meter",
    "Register",
    "StaticMeter",
    "Unmapped",
]

Clock = Callable[[], float]
"""Seconds from a monotonic clock (``time.monotonic`` unless a test injects one)."""

Unmapped = Literal["exception", "zero", "zero_in_map"]
"""How a read answers that covers unmapped registers: ``"exception"`` 02 (a strict
meter); ``"zero"`` reads them as 0 anywhere; ``"zero_in_map"`` reads them as 0 inside
the documented map's ranges and answers 02 for a read reaching outside them."""

UNMAPPED_POLICIES: tuple[Unmapped, ...] = ("exception", "zero", "zero_in_map")

ADVANCE_PERIOD = 0.05
"""Least clock time (s) between two state advances: cheap under heavy polling."""

_REGISTER_TABLES = (Table.HOLDING_REGISTERS, Table.INPUT_REGISTERS)
_BIT_TABLES = (Table.COILS, Table.DISCRETE_INPUTS)


@dataclass(frozen=True, slots=True)
class Register:
    """One entry of a register map: a named value at an address of a table.

    ``length`` is the number of registers of a ``string`` (2 ASCII characters each).
    """

    name: str
    address: int
    table: Table
    type: ValueType
    unit: str | None
    description: str
    order: WordOrder = WordOrder.ABCD
    length: int | None = None

    @property
    def count(self) -> int:
        """Registers (or bits) the value occupies."""
        if self.type is ValueType.STRING:
            if self.length is None or self.length < 1:
                raise ValueError(f"{self.name}: a string register needs a length of 1 or more")
            return self.length
        return register_count(self.type)


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where one register's encoded bytes live, precomputed for fast encoding."""

    name: str
    table: Table
    address: int
    count: int
    image: bytearray
    offset: int
    packer: struct.Struct | None  # None: 48-bit and string values, encoded by encode_value
    order: WordOrder
    is_float: bool
    type: ValueType


class Meter:
    """A simulated Modbus unit: its register map, values, and the PDU-facing reads.

    Subclasses override :meth:`_values` (the physical values by register name)
    and, if their values move, :meth:`_advance`; they call :meth:`_publish` at
    the end of ``__init__``.
    """

    def __init__(
        self,
        model: str,
        registers: Sequence[Register],
        *,
        clock: Clock = time.monotonic,
        function_codes: Iterable[int] = (
            FunctionCode.READ_HOLDING_REGISTERS,
            FunctionCode.READ_INPUT_REGISTERS,
        ),
        mapped: Mapping[Table, Iterable[tuple[int, int]]] | None = None,
        map_ranges: Mapping[Table, Iterable[tuple[int, int]]] | None = None,
        unmapped: Unmapped = "exception",
        max_read_registers: int = MAX_READ_REGISTERS,
        parameter_registers: int = 1,
        writable: Mapping[Table, Iterable[tuple[int, int]]] | None = None,
    ) -> None:
        """Build empty tables for ``registers`` plus the extra ``mapped`` ranges.

        ``map_ranges``: the documented map's ``(start, end)`` ranges per table, for
        ``unmapped="zero_in_map"`` (default: each table from its first register to
        the end of its last). ``max_read_registers`` below 125 and
        ``parameter_registers`` above 1 are device rules (the Eastron meters': at
        most 80 registers, whole 2-register parameters only; writes too).
        ``writable``: the ``(start, end)`` ranges of holding registers and coils
        that writes may set (they must be mapped); none by default.
        """
        names = [register.name for register in registers]
        if len(set(names)) != len(names):
            raise ValueError(f"{model}: register names repeat")
        if unmapped not in UNMAPPED_POLICIES:
            raise ValueError(
                f"unmapped must be one of {', '.join(UNMAPPED_POLICIES)}, not {unmapped!r}"
            )
        self.model = model
        self._registers = tuple(registers)
        self._clock = clock
        self._function_codes = frozenset(int(code) for code in function_codes)
        self._unmapped: Unmapped = unmapped
        self._max_read_registers = max_read_registers
        self._parameter_registers = parameter_registers
        extra = mapped or {}
        self._register_banks = {
            table: RegisterBank(
                [(r.address, r.address + r.count) for r in registers if r.table is table]
                + list(extra.get(table, ()))
            )
            for table in _REGISTER_TABLES
        }
        self._bit_banks = {
            table: BitBank.unset(
                [r.address for r in registers if r.table is table]
                + [a for start, end in extra.get(table, ()) for a in range(start, end)]
            )
            for table in _BIT_TABLES
        }
        self._map_ranges = _map_ranges(model, registers, extra, map_ranges)
        given_writable = writable or {}
        if set(given_writable) - {Table.HOLDING_REGISTERS, Table.COILS}:
            raise ValueError(f"{model}: only holding registers and coils can be writable")
        self._writable = {
            table: AddressRanges(given_writable.get(table, ()))
            for table in (Table.HOLDING_REGISTERS, Table.COILS)
        }
        self._written_words: dict[str, bytes] = {}  # register name -> its bytes as written
        self._written_bits: dict[str, bool] = {}
        self._bit_names = {
            (register.table, register.address): register.name
            for register in registers
            if register.type is ValueType.BOOL
        }
        self._slots: list[_Slot] = []
        for register in registers:
            if register.type is ValueType.BOOL:
                if register.table not in _BIT_TABLES:
                    raise ValueError(f"{register.name}: a bit belongs in a bit table")
                continue
            if register.table not in _REGISTER_TABLES:
                raise ValueError(f"{register.name}: a register value needs a register table")
            image, offset = self._register_banks[register.table].slot(
                register.address, register.count
            )
            self._slots.append(
                _Slot(
                    register.name,
                    register.table,
                    register.address,
                    register.count,
                    image,
                    offset,
                    big_endian_struct(register.type) if register.type in STRUCT_TYPES else None,
                    register.order,
                    register.type in FLOAT_TYPES,
                    register.type,
                )
            )
        self._last_advance = clock()
        self._frozen = False

    # -- the map and its values ---------------------------------------------------------

    @property
    def registers(self) -> tuple[Register, ...]:
        """The documented register map."""
        return self._registers

    @property
    def function_codes(self) -> frozenset[int]:
        """Function codes this unit implements."""
        return self._function_codes

    @property
    def frozen(self) -> bool:
        """True while values stand still."""
        return self._frozen

    def freeze(self) -> None:
        """Stop values moving (counters too), so tests can compare exactly."""
        self._frozen = True

    def unfreeze(self) -> None:
        """Let values move again; the frozen time is skipped, not integrated."""
        if self._frozen:
            self._frozen = False
            self._last_advance = self._clock()

    def refresh(self) -> None:
        """Advance the state to the clock's now, at most once per ADVANCE_PERIOD."""
        if self._frozen:
            return
        now = self._clock()
        elapsed = now - self._last_advance
        if elapsed < ADVANCE_PERIOD:
            return
        self._last_advance = now
        self._advance(elapsed)
        self._publish()

    def truth(self) -> dict[str, float]:
        """The values served right now, by register name, decoded from the images.

        Values are exactly what a client decodes from the wire: float32 registers
        give float32-rounded values, integer registers give ``int``, bits ``bool``.
        Units are the registers' (:attr:`registers`), those of the datasheet.
        String registers are in :meth:`texts`.
        """
        self.refresh()
        values: dict[str, float] = {}
        for register in self._registers:
            if register.type is ValueType.STRING:
                continue
            if register.type is ValueType.BOOL:
                values[register.name] = self._bit_banks[register.table].get(register.address)
                continue
            data = self._register_banks[register.table].read(register.address, register.count)
            assert data is not None  # every register lies in a mapped range
            values[register.name] = decode_value(data, register.type, register.order)
        return values

    def texts(self) -> dict[str, str]:
        """The texts of the string registers served right now, by register name."""
        self.refresh()
        texts: dict[str, str] = {}
        for register in self._registers:
            if register.type is ValueType.STRING:
                data = self._register_banks[register.table].read(register.address, register.count)
                assert data is not None  # every register lies in a mapped range
                texts[register.name] = decode_text(data, register.order)
        return texts

    # -- what a PDU handler calls ------------------------------------------------------

    @property
    def unmapped(self) -> Unmapped:
        """How reads covering unmapped registers are answered (see :data:`Unmapped`)."""
        return self._unmapped

    def map_ranges(self, table: Table) -> list[tuple[int, int]]:
        """The documented map's ``(start, end)`` ranges of ``table`` (end exclusive)."""
        return self._map_ranges[table].ranges

    def _zero_filled(self, table: Table, address: int, count: int) -> bool:
        """True if unmapped registers of this read are answered as zeros."""
        if self._unmapped == "zero":
            return True
        return self._unmapped == "zero_in_map" and self._map_ranges[table].contains(address, count)

    def read_bits(self, table: Table, address: int, count: int) -> bytes | ExceptionCode:
        """Packed bits of a bit table, or exception 02 for unmapped ones."""
        self.refresh()
        bank = self._bit_banks[table]
        if self._zero_filled(table, address, count):
            return bank.read_zero_filled(address, count)
        data = bank.read(address, count)
        return ExceptionCode.ILLEGAL_DATA_ADDRESS if data is None else data

    def read_registers(self, table: Table, address: int, count: int) -> bytes | ExceptionCode:
        """Register bytes, or the exception the device's rules call for."""
        if count > self._max_read_registers:
            return ExceptionCode.ILLEGAL_DATA_VALUE
        step = self._parameter_registers
        if address % step or count % step:
            return ExceptionCode.ILLEGAL_DATA_ADDRESS
        self.refresh()
        bank = self._register_banks[table]
        if self._zero_filled(table, address, count):
            return bank.read_zero_filled(address, count)
        data = bank.read(address, count)
        return ExceptionCode.ILLEGAL_DATA_ADDRESS if data is None else data

    def writable(self, table: Table) -> list[tuple[int, int]]:
        """The ``(start, end)`` ranges of ``table`` writes may set (end exclusive)."""
        ranges = self._writable.get(table)
        return ranges.ranges if ranges is not None else []

    def write_bits(self, address: int, bits: list[bool]) -> ExceptionCode | None:
        """Set coils from ``address``; exception 02 unless all are writable."""
        if not self._writable[Table.COILS].contains(address, len(bits)):
            return ExceptionCode.ILLEGAL_DATA_ADDRESS
        bank = self._bit_banks[Table.COILS]
        if bank.read(address, len(bits)) is None:
            return ExceptionCode.ILLEGAL_DATA_ADDRESS
        self.refresh()
        for offset, bit in enumerate(bits):
            bank.set(address + offset, bit)
            name = self._bit_names.get((Table.COILS, address + offset))
            if name is not None:
                self._written_bits[name] = bit
        return None

    def write_registers(self, address: int, data: bytes) -> ExceptionCode | None:
        """Store wire bytes in holding registers from ``address``; exception 02 unless
        all are writable (and, on a meter of whole parameters, whole ones)."""
        count = len(data) // 2
        step = self._parameter_registers
        if address % step or count % step:
            return ExceptionCode.ILLEGAL_DATA_ADDRESS
        if not self._writable[Table.HOLDING_REGISTERS].contains(address, count):
            return ExceptionCode.ILLEGAL_DATA_ADDRESS
        bank = self._register_banks[Table.HOLDING_REGISTERS]
        if bank.read(address, count) is None:
            return ExceptionCode.ILLEGAL_DATA_ADDRESS
        self.refresh()
        bank.write(address, data)
        end = address + count
        for slot in self._slots:
            overlaps = slot.address < end and address < slot.address + slot.count
            if slot.table is Table.HOLDING_REGISTERS and overlaps:
                size = 2 * slot.count
                self._written_words[slot.name] = bytes(slot.image[slot.offset : slot.offset + size])
        return None

    # -- subclass hooks --------------------------------------------------------------------

    def _advance(self, elapsed: float) -> None:
        """Move the physical state on by ``elapsed`` clock seconds (default: static)."""

    def _values(self) -> Mapping[str, float | str]:
        """The physical value of every register, by name (a str for a string register)."""
        raise NotImplementedError

    def _publish(self) -> None:
        """Encode the current values into the register images."""
        values = self._values()
        written = self._written_words
        for slot in self._slots:
            if written and slot.name in written:
                data = written[slot.name]
                slot.image[slot.offset : slot.offset + len(data)] = data
                continue
            value = values[slot.name]
            if slot.packer is None or isinstance(value, str):
                encoded = encode_value(value, slot.type, slot.order, slot.count)
                slot.image[slot.offset : slot.offset + len(encoded)] = encoded
                continue
            if not slot.is_float:
                value = int(value)
            if slot.order is WordOrder.ABCD:
                slot.packer.pack_into(slot.image, slot.offset, value)
            else:
                encoded = rearrange(slot.packer.pack(value), slot.order)
                slot.image[slot.offset : slot.offset + len(encoded)] = encoded
        bits = self._written_bits
        for register in self._registers:
            if register.type is ValueType.BOOL:
                value = bits[register.name] if register.name in bits else values[register.name]
                self._bit_banks[register.table].set(register.address, bool(value))


def _map_ranges(
    model: str,
    registers: Sequence[Register],
    mapped: Mapping[Table, Iterable[tuple[int, int]]],
    given: Mapping[Table, Iterable[tuple[int, int]]] | None,
) -> dict[Table, AddressRanges]:
    """The documented map's ranges per table, checked to hold every register."""
    spans: dict[Table, list[tuple[int, int]]] = {table: [] for table in Table}
    for register in registers:
        spans[register.table].append((register.address, register.address + register.count))
    for table, ranges in mapped.items():
        spans[table].extend(ranges)
    if given is None:
        return {
            table: AddressRanges(
                [(min(s for s, _ in table_spans), max(e for _, e in table_spans))]
                if table_spans
                else []
            )
            for table, table_spans in spans.items()
        }
    result = {table: AddressRanges(given.get(table, ())) for table in Table}
    for table, table_spans in spans.items():
        for start, end in table_spans:
            if not result[table].contains(start, end - start):
                raise ValueError(
                    f"{model}: {table} {start}..{end - 1} lies outside the documented map"
                )
    return result


class StaticMeter(Meter):
    """A unit serving fixed words and bits: for hand-written protocol tests.

    Every word is a ``uint16`` register named ``<table>_<address>`` (e.g.
    ``holding_107``), every bit a ``bool`` named the same way.
    """

    def __init__(
        self,
        *,
        holding: Mapping[int, int] | None = None,
        input: Mapping[int, int] | None = None,
        coils: Mapping[int, bool] | None = None,
        discrete: Mapping[int, bool] | None = None,
        unmapped: Unmapped = "exception",
    ) -> None:
        """Serve the given maps of address to word (0..65535) or to bit."""
        words = {Table.HOLDING_REGISTERS: holding or {}, Table.INPUT_REGISTERS: input or {}}
        bits = {Table.COILS: coils or {}, Table.DISCRETE_INPUTS: discrete or {}}
        registers = [
            Register(f"{table}_{address}", address, table, ValueType.UINT16, None, "static word")
            for table, table_words in words.items()
            for address in sorted(table_words)
        ] + [
            Register(f"{table}_{address}", address, table, ValueType.BOOL, None, "static bit")
            for table, table_bits in bits.items()
            for address in sorted(table_bits)
        ]
        super().__init__("static", registers, function_codes=tuple(FunctionCode), unmapped=unmapped)
        self._fixed: dict[str, float] = {}
        for table, table_words in words.items():
            for address, word in table_words.items():
                if not 0 <= word <= 0xFFFF:
                    raise ValueError(f"{table} {address}: word {word} outside 0..65535")
                self._fixed[f"{table}_{address}"] = word
        for table, table_bits in bits.items():
            for address, bit in table_bits.items():
                self._fixed[f"{table}_{address}"] = bit
        self._publish()

    def _values(self) -> Mapping[str, float]:
        return self._fixed
