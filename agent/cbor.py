"""A small CBOR encoder (RFC 8949) for what SenML packs hold: sans-I/O, values in, bytes out.

Only what :mod:`citygate.senml` needs: unsigned and negative integers, text strings, booleans,
arrays and maps of known length, and numbers. A number is written in the smallest form that
gives back exactly the same IEEE double a JSON reader gets from the same value's shortest text
(RFC 8428 §6): an integer when it is one, else a half, single or double float when it holds
the value exactly, else a decimal fraction (tag 4, ``[exponent, mantissa]``) when that is
shorter than a double — ``230.2`` is six bytes (``C4 82 20 19 08 FE``) instead of nine.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence

__all__ = ["CborEncodeError", "encode", "encode_head", "encode_number"]

_HALF = struct.Struct(">e")
_SINGLE = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")
_DECIMAL_FRACTION = b"\xc4\x82"  # tag 4, an array of two


class CborEncodeError(ValueError):
    """A value of a type the encoder does not write."""


def encode_head(major: int, argument: int) -> bytes:
    """The initial byte(s) of an item of major type ``major`` with ``argument`` (≥ 0)."""
    kind = major << 5
    if argument < 24:
        return bytes((kind | argument,))
    if argument < 0x100:
        return bytes((kind | 24, argument))
    if argument < 0x10000:
        return bytes((kind | 25,)) + argument.to_bytes(2, "big")
    if argument < 0x100000000:
        return bytes((kind | 26,)) + argument.to_bytes(4, "big")
    if argument < 0x10000000000000000:
        return bytes((kind | 27,)) + argument.to_bytes(8, "big")
    raise CborEncodeError(f"integer {argument} does not fit in 64 bits")


def _integer(value: int) -> bytes:
    return encode_head(0, value) if value >= 0 else encode_head(1, -1 - value)


def encode_number(value: float | int) -> bytes:
    """``value`` in its shortest exact form (see the module docstring)."""
    if isinstance(value, int):
        return _integer(value)
    if not math.isfinite(value):
        return b"\xf9" + _HALF.pack(value)  # NaN and infinities fit in a half
    if value == 0.0 and math.copysign(1.0, value) < 0:
        return b"\xf9\x80\x00"  # -0.0: an integer would lose the sign
    if value.is_integer() and abs(value) < 2**63:
        return _integer(int(value))
    try:
        if float(_HALF.unpack(_HALF.pack(value))[0]) == value:
            return b"\xf9" + _HALF.pack(value)
    except OverflowError:
        pass
    try:
        if float(_SINGLE.unpack(_SINGLE.pack(value))[0]) == value:
            return b"\xfa" + _SINGLE.pack(value)
    except OverflowError:
        pass
    double = b"\xfb" + _DOUBLE.pack(value)
    fraction = _decimal_fraction(value)
    return fraction if fraction is not None and len(fraction) < len(double) else double


def _decimal_fraction(value: float) -> bytes | None:
    """Tag 4 for the digits of ``repr(value)`` (the shortest text that reads back as it)."""
    text = repr(value)
    mantissa_text, _, exponent_text = text.partition("e")
    whole, _, decimals = mantissa_text.partition(".")
    exponent = (int(exponent_text) if exponent_text else 0) - len(decimals)
    mantissa = int(whole + decimals)
    if not -(2**63) <= mantissa < 2**63:
        return None
    return _DECIMAL_FRACTION + _integer(exponent) + _integer(mantissa)


def encode(value: object) -> bytes:
    """``value`` (None excluded) as CBOR: str, bool, int, float, sequences and mappings."""
    out = bytearray()
    _encode_into(out, value)
    return bytes(out)


def _encode_into(out: bytearray, value: object) -> None:
    if isinstance(value, str):
        data = value.encode("utf-8")
        out += encode_head(3, len(data))
        out += data
    elif value is True:
        out += b"\xf5"
    elif value is False:
        out += b"\xf4"
    elif isinstance(value, int | float):
        out += encode_number(value)
    elif isinstance(value, Mapping):
        out += encode_head(5, len(value))
        for key, item in value.items():
            _encode_into(out, key)
            _encode_into(out, item)
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out += encode_head(4, len(value))
        for item in value:
            _encode_into(out, item)
    else:
        raise CborEncodeError(f"cannot encode {type(value).__name__} as CBOR")
