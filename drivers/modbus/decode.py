"""Sans-I/O Modbus value decoding: register words or bits in, measurements out.

A :class:`BlockDecoder` is compiled once per read request (configure time) and
then turns the words (or bits) of every reply into :class:`Measurement` values
with one ``struct`` unpack per group of registers and one multiply-add per value.

Byte orders, for a value of N registers (A = most significant byte)::

    ABCD  big-endian: registers in order, high byte first
    CDAB  word-swapped: registers in reverse order, each big-endian
    BADC  byte-swapped: registers in order, bytes swapped within each
    DCBA  little-endian: the exact reverse of ABCD

16-bit types: ABCD/CDAB are big-endian, BADC/DCBA byte-swapped. Every order is
one ``struct`` unpack from one of two byte images of the reply: the words packed
big-endian (the wire image) or little-endian (bytes swapped within each word)::

    ABCD  '>' on the wire image        BADC  '>' on the swapped image
    DCBA  '<' on the wire image        CDAB  '<' on the swapped image

The same four definitions hold for any number of registers. ``int48``/``uint48``
(3 registers, which ``struct`` has no code for) are unpacked as their 6 bytes
from the same images and read as one integer, big-endian for '>' lanes,
little-endian for '<' lanes: CDAB is the low register first, DCBA the exact
reverse of ABCD. A ``string`` of ``count`` registers is 2 ASCII bytes per
register, in the same byte sequence (ABCD: the first character is the high byte
of the first register; BADC: the low byte; CDAB: the registers in reverse order;
DCBA: the whole text reversed). Trailing NULs and spaces are dropped; a text
with any other byte outside printable ASCII (0x20–0x7E) is invalid: the decoder
gives NaN for it, so the runtime drops and counts it like any invalid reading
(:func:`decode_value` raises :class:`DecodeError`), never a garbled string.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from citygate.drivers.api import (
    DecodeError,
    Measurement,
    Value,
    add_decimal,
    canonical,
    decimal_exponent,
    scale_decimal,
    shortest_float32,
    shortest_float32_scaled,
)

__all__ = [
    "BIT_TABLES",
    "BYTE_ORDERS",
    "DATA_TYPES",
    "FLOAT_TYPES",
    "REGISTER_WIDTH",
    "TABLES",
    "TEXT_TYPES",
    "BlockDecoder",
    "ByteOrder",
    "DataType",
    "RegisterSpec",
    "Table",
    "bench_decode",
    "decode_text",
    "decode_value",
    "encode_value",
    "raw_range",
    "register_width",
    "string_bytes",
]

Table = Literal["input", "holding", "coil", "discrete"]
DataType = Literal[
    "int16", "uint16", "int32", "uint32", "int48", "uint48", "int64", "uint64",
    "float32", "float64", "bool", "string",
]  # fmt: skip
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

TABLES: Final[tuple[Table, ...]] = get_args(Table)
DATA_TYPES: Final[tuple[DataType, ...]] = get_args(DataType)
BYTE_ORDERS: Final[tuple[ByteOrder, ...]] = get_args(ByteOrder)
BIT_TABLES: Final[frozenset[Table]] = frozenset({"coil", "discrete"})
FLOAT_TYPES: Final[frozenset[DataType]] = frozenset({"float32", "float64"})
TEXT_TYPES: Final[frozenset[DataType]] = frozenset({"string"})
"""Types whose width is the register's ``count`` and whose value is a str."""

REGISTER_WIDTH: Final[dict[DataType, int]] = {
    "int16": 1, "uint16": 1, "bool": 1,
    "int32": 2, "uint32": 2, "float32": 2,
    "int48": 3, "uint48": 3,
    "int64": 4, "uint64": 4, "float64": 4,
}  # fmt: skip
"""Registers one value of each fixed-width type occupies (on a register table);
a ``string`` spans its ``count``."""

_STRUCT_CODE: Final[dict[DataType, str]] = {
    "int16": "h", "uint16": "H", "bool": "H",
    "int32": "i", "uint32": "I", "float32": "f",
    "int48": "6s", "uint48": "6s",
    "int64": "q", "uint64": "Q", "float64": "d",
}  # fmt: skip
_BYTES_TYPES: Final[frozenset[DataType]] = frozenset({"int48", "uint48", "string"})
"""Types unpacked as raw bytes and converted after (:func:`_converter`)."""

# (reads the swapped image, struct endianness) per order, for multi-register and 16-bit values
_WIDE_LAYOUT: Final[dict[ByteOrder, tuple[bool, str]]] = {
    "ABCD": (False, ">"), "DCBA": (False, "<"), "BADC": (True, ">"), "CDAB": (True, "<"),
}  # fmt: skip
_NARROW_LAYOUT: Final[dict[ByteOrder, tuple[bool, str]]] = {
    "ABCD": (False, ">"), "CDAB": (False, ">"), "BADC": (False, "<"), "DCBA": (False, "<"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One value to read: a ``[[registers]]`` table, validated.

    ``unit`` is the unit of the scaled value (raw × scale + offset); decoding
    converts it to the canonical unit of quantities.md. ``writable`` registers
    (holding registers and coils) may be written, a number only within
    ``minimum``–``maximum`` (in ``unit``, before scale and offset are undone).
    """

    name: str
    address: int
    table: Table = "holding"
    type: DataType = "uint16"
    order: ByteOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    writable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    count: int | None = None
    """Registers a ``string`` spans (None for every other type)."""

    @property
    def width(self) -> int:
        """Addresses the value occupies in its table (one per bit on bit tables)."""
        if self.table in BIT_TABLES:
            return 1
        return register_width(self.type, self.count)

    @property
    def end(self) -> int:
        """First address after the value."""
        return self.address + self.width


def register_width(data_type: DataType, count: int | None = None) -> int:
    """Registers a value of ``data_type`` spans: ``count`` for a string (at least 1)."""
    if data_type in TEXT_TYPES:
        return max(1, count or 1)
    return REGISTER_WIDTH[data_type]


def _layout(data_type: DataType, order: ByteOrder) -> tuple[bool, str]:
    wide = data_type in TEXT_TYPES or REGISTER_WIDTH[data_type] > 1
    return (_WIDE_LAYOUT if wide else _NARROW_LAYOUT)[order]


def _struct_code(spec: RegisterSpec) -> str:
    if spec.type in TEXT_TYPES:
        return f"{2 * spec.width}s"
    return _STRUCT_CODE[spec.type]


_PRINTABLE: Final = bytes(range(0x20, 0x7F))


def decode_text(data: bytes) -> str | None:
    """The text of a string register's bytes (in reading order): trailing NULs and
    spaces dropped; None if another byte lies outside printable ASCII."""
    text = data.rstrip(b"\x00 ")
    if text.translate(None, _PRINTABLE):
        return None
    return text.decode("ascii")


def _converter(spec: RegisterSpec) -> Callable[[bytes], Value] | None:
    """For the types unpacked as bytes: bytes (from the spec's lane) → raw value."""
    if spec.type not in _BYTES_TYPES:
        return None
    little = _layout(spec.type, spec.order)[1] == "<"
    if spec.type in TEXT_TYPES:
        if little:
            return lambda data: _text_or_nan(data[::-1])
        return _text_or_nan
    signed = spec.type == "int48"
    byteorder: Literal["little", "big"] = "little" if little else "big"
    return lambda data: int.from_bytes(data, byteorder, signed=signed)


def _text_or_nan(data: bytes) -> Value:
    text = decode_text(data)
    return math.nan if text is None else text


# post-processing kinds: value as unpacked, multiply-add, non-zero test; for float32 the
# value is first made its shortest decimal (196.6, not 196.60000610351562)
_AS_IS: Final = 0
_LINEAR: Final = 1
_NON_ZERO: Final = 2
_FLOAT32: Final = 3
_FLOAT32_LINEAR: Final = 4
_DECIMAL: Final = 5  # multiplier 10**k: a decimal shift (230.1, not 230.10000000000002)
_FLOAT32_DECIMAL: Final = 6

_Post = tuple[str, str | None, int, float, float]
# name, unit, kind, factor (the decimal exponent for the _DECIMAL kinds), addend


def _post(spec: RegisterSpec) -> _Post:
    if spec.type == "bool":
        return (spec.name, None, _NON_ZERO, 1.0, 0.0)
    if spec.type in TEXT_TYPES:
        return (spec.name, None, _AS_IS, 1.0, 0.0)
    unit, factor = canonical(spec.unit) if spec.unit is not None else (None, 1.0)
    multiplier = float(spec.scale) * factor
    addend = float(spec.offset) * factor
    single = spec.type == "float32"
    if multiplier == 1.0 and addend == 0.0:
        return (spec.name, unit, _FLOAT32 if single else _AS_IS, 1.0, 0.0)
    scale_exponent = decimal_exponent(float(spec.scale))
    unit_exponent = decimal_exponent(factor)
    if scale_exponent is not None and unit_exponent is not None:
        exponent = float(scale_exponent + unit_exponent)
        addend = scale_decimal(float(spec.offset), unit_exponent)
        return (spec.name, unit, _FLOAT32_DECIMAL if single else _DECIMAL, exponent, addend)
    return (spec.name, unit, _FLOAT32_LINEAR if single else _LINEAR, multiplier, addend)


def _describe(table: Table, address: int, count: int) -> str:
    what = {
        "input": "input registers",
        "holding": "holding registers",
        "coil": "coils",
        "discrete": "discrete inputs",
    }[table]
    if count == 1:
        return f"{what} 0x{address:04X}"
    return f"{what} 0x{address:04X}–0x{address + count - 1:04X}"


class BlockDecoder:
    """Decodes the reply to one read request (``count`` addresses of ``table``
    from ``address``) into the measurements of ``registers``.

    Measurements come out in address order (ties: the order given).
    """

    __slots__ = (
        "_converters",
        "_groups",
        "_pack_swapped",
        "_pack_wire",
        "_permutation",
        "_posts",
        "address",
        "count",
        "registers",
        "table",
    )

    def __init__(
        self, table: Table, address: int, count: int, registers: Sequence[RegisterSpec]
    ) -> None:
        ordered = sorted(registers, key=lambda spec: spec.address)
        for spec in ordered:
            if spec.table != table or spec.address < address or spec.end > address + count:
                raise ValueError(
                    f"register {spec.name!r} lies outside {_describe(table, address, count)}"
                )
        self.table: Table = table
        self.address = address
        self.count = count
        self.registers: tuple[RegisterSpec, ...] = tuple(ordered)
        self._pack_wire = struct.Struct(f">{count}H")
        self._pack_swapped: struct.Struct | None = None
        self._groups: tuple[tuple[struct.Struct, bool, int], ...] = ()
        self._permutation: tuple[int, ...] | None = None
        self._converters: tuple[Callable[[bytes], Value] | None, ...] | None = None
        if table in BIT_TABLES:
            self._posts = tuple(_post(spec) for spec in ordered)
            return
        self._compile_groups(ordered)

    def _compile_groups(self, ordered: Sequence[RegisterSpec]) -> None:
        # One struct per (image, endianness) lane; registers that overlap an
        # earlier one of the same lane open another lane.
        lanes: list[tuple[bool, str, list[RegisterSpec]]] = []
        for spec in ordered:
            swapped, endian = _layout(spec.type, spec.order)
            for lane_swapped, lane_endian, members in lanes:
                if (lane_swapped, lane_endian) == (swapped, endian) and (
                    members[-1].end <= spec.address
                ):
                    members.append(spec)
                    break
            else:
                lanes.append((swapped, endian, [spec]))
        groups: list[tuple[struct.Struct, bool, int]] = []
        emitted: list[RegisterSpec] = []
        for swapped, endian, members in lanes:
            parts = [endian]
            cursor = members[0].address
            for spec in members:
                if spec.address > cursor:
                    parts.append(f"{2 * (spec.address - cursor)}x")
                parts.append(_struct_code(spec))
                cursor = spec.end
            layout = struct.Struct("".join(parts))
            groups.append((layout, swapped, 2 * (members[0].address - self.address)))
            emitted.extend(members)
        self._groups = tuple(groups)
        if any(swapped for _, swapped, _ in groups):
            self._pack_swapped = struct.Struct(f"<{self.count}H")
        position = {id(spec): index for index, spec in enumerate(emitted)}
        permutation = tuple(position[id(spec)] for spec in ordered)
        if permutation != tuple(range(len(ordered))):
            self._permutation = permutation
        self._posts = tuple(_post(spec) for spec in ordered)
        converters = tuple(_converter(spec) for spec in ordered)
        if any(converters):
            self._converters = converters

    def describe(self) -> str:
        """``input registers 0x0000–0x0047``: the request, for messages."""
        return _describe(self.table, self.address, self.count)

    def decode(self, values: Sequence[int] | Sequence[bool]) -> list[Measurement]:
        """Decode the ``count`` words (register tables) or bits (bit tables) of
        one reply; raise :class:`DecodeError` if there are not exactly ``count``
        of them or a word is not 16 bits. NaN and infinities are returned as is.
        """
        if len(values) != self.count:
            raise DecodeError(
                f"reply to reading {self.describe()} holds {len(values)} values,"
                f" expected {self.count}"
            )
        if self.table in BIT_TABLES:
            # Any: a raw is a number (the post-processing below) or, for a string, a str
            raws: Sequence[Any] = [values[spec.address - self.address] for spec in self.registers]
        else:
            try:
                wire = self._pack_wire.pack(*values)
                swapped = self._pack_swapped.pack(*values) if self._pack_swapped else wire
            except struct.error:
                raise DecodeError(
                    f"reply to reading {self.describe()} holds a value that is not 16 bits"
                ) from None
            if len(self._groups) == 1:
                layout, use_swapped, start = self._groups[0]
                raws = layout.unpack_from(swapped if use_swapped else wire, start)
            else:
                unpacked: list[Any] = []
                for layout, use_swapped, start in self._groups:
                    unpacked.extend(layout.unpack_from(swapped if use_swapped else wire, start))
                raws = unpacked
                if self._permutation is not None:
                    raws = [unpacked[index] for index in self._permutation]
            if self._converters is not None:
                raws = [
                    raw if convert is None else convert(raw)
                    for convert, raw in zip(self._converters, raws, strict=True)
                ]
        measurements: list[Measurement] = []
        append = measurements.append
        for (name, unit, kind, multiplier, addend), raw in zip(self._posts, raws, strict=True):
            if kind == _AS_IS:
                append(Measurement(name, raw, unit))
            elif kind == _FLOAT32:
                append(Measurement(name, shortest_float32(raw), unit))
            elif kind == _LINEAR:
                append(Measurement(name, raw * multiplier + addend, unit))
            elif kind == _FLOAT32_LINEAR:
                append(Measurement(name, shortest_float32(raw) * multiplier + addend, unit))
            elif kind == _DECIMAL:
                value = scale_decimal(raw, int(multiplier))
                append(Measurement(name, add_decimal(value, addend) if addend else value, unit))
            elif kind == _FLOAT32_DECIMAL:
                value = shortest_float32_scaled(raw, int(multiplier))
                append(Measurement(name, add_decimal(value, addend) if addend else value, unit))
            else:
                append(Measurement(name, raw != 0, unit))
        return measurements


def string_bytes(words: Sequence[int], order: ByteOrder = "ABCD") -> bytes:
    """The bytes of a string's registers in reading order (first character first)."""
    return _image(words, "string", order)


def _image(words: Sequence[int], data_type: DataType, order: ByteOrder) -> bytes:
    """The value's bytes, most significant (or first character) first."""
    swapped, endian = _layout(data_type, order)
    image = struct.pack(f"{'<' if swapped else '>'}{len(words)}H", *words)
    return image[::-1] if endian == "<" else image


def decode_value(words: Sequence[int], data_type: DataType, order: ByteOrder = "ABCD") -> Value:
    """Decode one raw value (no scale, no unit) from exactly the words it spans
    (a string: any number of words, one or more).

    The slow, simple path for the byte-order assistant; the same layouts as
    :class:`BlockDecoder`. Raises ValueError for the wrong number of words and
    :class:`DecodeError` for a string that is not printable ASCII.
    """
    if data_type in TEXT_TYPES:
        if not words:
            raise ValueError("a string needs at least one register")
        text = decode_text(_image(words, data_type, order))
        if text is None:
            raise DecodeError("not printable ASCII text")
        return text
    width = REGISTER_WIDTH[data_type]
    if len(words) != width:
        raise ValueError(f"{data_type} needs {width} registers, got {len(words)}")
    if data_type in _BYTES_TYPES:
        return int.from_bytes(_image(words, data_type, order), "big", signed=data_type == "int48")
    swapped, endian = _layout(data_type, order)
    image = struct.pack(f"{'<' if swapped else '>'}{width}H", *words)
    raw: Value = struct.unpack(endian + _STRUCT_CODE[data_type], image)[0]
    if data_type == "float32" and isinstance(raw, float):
        return shortest_float32(raw)
    return raw != 0 if data_type == "bool" else raw


def raw_range(data_type: DataType) -> tuple[int, int] | None:
    """The raw values an integer type holds (``(low, high)``); None for floats, bool
    and string."""
    if data_type in FLOAT_TYPES or data_type in TEXT_TYPES or data_type == "bool":
        return None
    bits = 16 * REGISTER_WIDTH[data_type]
    if data_type.startswith("u"):
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def encode_value(
    raw: float | int | bool, data_type: DataType, order: ByteOrder = "ABCD"
) -> list[int]:
    """The register words of one raw value (no scale, no unit): the inverse of
    :func:`decode_value`, with the same layouts.

    ``bool`` gives one word, 1 or 0. Raises ValueError for a value the type cannot
    hold (an integer out of range, a non-integer for an integer type, a float
    beyond float32's range).
    """
    if data_type == "bool":
        return [1 if raw else 0]
    if data_type in TEXT_TYPES:
        raise ValueError("a string register is not written")
    limits = raw_range(data_type)
    if limits is not None:
        if isinstance(raw, float):
            if not raw.is_integer():
                raise ValueError(f"{data_type} holds whole numbers, not {raw!r}")
            raw = int(raw)
        low, high = limits
        if not low <= raw <= high:
            raise ValueError(f"{raw} is outside {data_type}'s range {low}…{high}")
    swapped, endian = _layout(data_type, order)
    width = REGISTER_WIDTH[data_type]
    try:
        if data_type in _BYTES_TYPES:
            big = int(raw).to_bytes(2 * width, "big", signed=data_type == "int48")
            image = big[::-1] if endian == "<" else big
        else:
            image = struct.pack(endian + _STRUCT_CODE[data_type], raw)
    except (OverflowError, struct.error):
        raise ValueError(f"{raw!r} is outside {data_type}'s range") from None
    return list(struct.unpack(f"{'<' if swapped else '>'}{width}H", image))


def bench_decode(n_values: int = 100, rounds: int = 2000) -> float:
    """Time :meth:`BlockDecoder.decode` on ``n_values`` float32 registers with a
    unit conversion (W → W is free, so kW → W); return CPU µs per value."""
    specs = [
        RegisterSpec(f"value_{i}", 2 * i, "input", "float32", "ABCD", 1.0, 0.0, "kW")
        for i in range(n_values)
    ]
    decoder = BlockDecoder("input", 0, 2 * n_values, specs)
    rng = random.Random(0)
    image = struct.pack(f">{n_values}f", *(rng.uniform(0.0, 500.0) for _ in range(n_values)))
    words = list(struct.unpack(f">{2 * n_values}H", image))
    decode = decoder.decode
    started = time.process_time()
    for _ in range(rounds):
        decode(words)
    elapsed = time.process_time() - started
    return elapsed / (rounds * n_values) * 1e6
