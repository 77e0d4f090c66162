"""Register value types and word/byte orders, straight from ``struct``.

A value of N registers is first packed big-endian (``ABCD``: registers in order,
high byte first), then rearranged:

* ``CDAB``: the registers in reverse order, each big-endian;
* ``BADC``: the registers in order, the two bytes of each swapped;
* ``DCBA``: fully little-endian (the big-endian bytes reversed).

Each rearrangement is its own inverse, so the same function turns wire bytes back
into big-endian bytes. For a one-register value CDAB is ABCD and DCBA is BADC.
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
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"


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


def register_count(value_type: ValueType) -> int:
    """How many 16-bit registers a value of ``value_type`` occupies (a bit: 1)."""
    if value_type is ValueType.BOOL:
        return 1
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


def encode_value(value: float, value_type: ValueType, order: WordOrder = WordOrder.ABCD) -> bytes:
    """Wire bytes of ``value``; integer types take ``int(value)``, out of range raises."""
    if value_type is ValueType.BOOL:
        raise ValueError("a bit is not a register value")
    packer = big_endian_struct(value_type)
    raw = packer.pack(value if value_type in FLOAT_TYPES else int(value))
    return rearrange(raw, order)


def decode_value(data: bytes, value_type: ValueType, order: WordOrder = WordOrder.ABCD) -> float:
    """The value of wire bytes ``data`` (an ``int`` for integer types)."""
    if value_type is ValueType.BOOL:
        raise ValueError("a bit is not a register value")
    value: float = big_endian_struct(value_type).unpack(rearrange(data, order))[0]
    return value
