"""Register value types and word/byte orders, straight from ``struct``.

A value of N registers is first packed big-endian (``ABCD``: registers in order,
high byte first), then rearranged:

* ``CDAB``: the registers in reverse order, each big-endian;
* ``BADC``: the registers in order, the two bytes of each swapped;
* ``DCBA``: fully little-endian (the big-endian bytes reversed).

Each rearrangement is its own inverse, so the same function turns wire bytes back
into big-endian bytes. For a one-register value CDAB is ABCD and DCBA is BADC.

48-bit integers (three registers; ``struct`` has no code for them) are six
big-endian bytes rearranged the same way. A string is its ASCII text padded
with NULs to its registers, first character first, rearranged the same way.
"""

from __future__ import annotations

import struct
from enum import StrEnum


class ValueType(StrEnum):
    """The value types of a register map (config.md's ``type`` names)."""

    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT48 = "int48"
    UINT48 = "uint48"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"
    STRING = "string"


class WordOrder(StrEnum):
    """Byte and word order of a multi-register value (config.md's ``order``)."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


_FORMATS: dict[ValueType, str] = {
    ValueType.INT16: "h",
    ValueType.UINT16: "H",
    ValueType.INT32: "i",
    ValueType.UINT32: "I",
    ValueType.INT64: "q",
    ValueType.UINT64: "Q",
    ValueType.FLOAT32: "f",
    ValueType.FLOAT64: "d",
}

FLOAT_TYPES = frozenset({ValueType.FLOAT32, ValueType.FLOAT64})
INT48_TYPES = frozenset({ValueType.INT48, ValueType.UINT48})
STRUCT_TYPES = frozenset(_FORMATS)
"""The types one ``struct`` code packs (not bool, 48-bit or string)."""


def register_count(value_type: ValueType) -> int:
    """How many 16-bit registers a value of ``value_type`` occupies (a bit: 1).

    Raises ValueError for a string: its length is its register's.
    """
    if value_type is ValueType.BOOL:
        return 1
    if value_type in INT48_TYPES:
        return 3
    if value_type is ValueType.STRING:
        raise ValueError("a string spans as many registers as its register says")
    return struct.calcsize(_FORMATS[value_type]) // 2


def big_endian_struct(value_type: ValueType) -> struct.Struct:
    """The ``struct`` packer of ``value_type`` in ABCD order."""
    return struct.Struct(">" + _FORMATS[value_type])


def rearrange(data: bytes, order: WordOrder) -> bytes:
    """Turn big-endian bytes into wire bytes of ``order`` (and back: an involution)."""
    if order is WordOrder.ABCD:
        return data
    if order is WordOrder.DCBA:
        return data[::-1]
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order is WordOrder.CDAB:
        return b"".join(reversed(words))
    return b"".join(word[::-1] for word in words)


def encode_value(
    value: float | str,
    value_type: ValueType,
    order: WordOrder = WordOrder.ABCD,
    registers: int | None = None,
) -> bytes:
    """Wire bytes of ``value``; integer types take ``int(value)``, out of range raises.

    A string (``value`` a str of ASCII) takes ``registers`` registers, NUL-padded.
    """
    if value_type is ValueType.BOOL:
        raise ValueError("a bit is not a register value")
    if value_type is ValueType.STRING:
        if not isinstance(value, str) or registers is None:
            raise ValueError("a string register needs a str and its number of registers")
        text = value.encode("ascii")
        if len(text) > 2 * registers:
            raise ValueError(f"{value!r} does not fit in {registers} registers")
        return rearrange(text.ljust(2 * registers, b"\x00"), order)
    if isinstance(value, str):
        raise ValueError(f"a {value_type} register holds a number, not {value!r}")
    if value_type in INT48_TYPES:
        signed = value_type is ValueType.INT48
        return rearrange(int(value).to_bytes(6, "big", signed=signed), order)
    packer = big_endian_struct(value_type)
    raw = packer.pack(value if value_type in FLOAT_TYPES else int(value))
    return rearrange(raw, order)


def decode_value(data: bytes, value_type: ValueType, order: WordOrder = WordOrder.ABCD) -> float:
    """The value of wire bytes ``data`` (an ``int`` for integer types)."""
    if value_type is ValueType.BOOL or value_type is ValueType.STRING:
        raise ValueError(f"a {value_type} is not a number (decode_text reads a string)")
    if value_type in INT48_TYPES:
        return int.from_bytes(rearrange(data, order), "big", signed=value_type is ValueType.INT48)
    value: float = big_endian_struct(value_type).unpack(rearrange(data, order))[0]
    return value


def decode_text(data: bytes, order: WordOrder = WordOrder.ABCD) -> str:
    """The text of a string register's wire bytes, trailing NULs dropped."""
    return rearrange(data, order).rstrip(b"\x00").decode("ascii")
