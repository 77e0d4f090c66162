"""A bounded CBOR decoder (RFC 8949) for SenML CBOR packs: sans-I/O, bytes in, values out.

The sink decodes what :mod:`citygate.cbor` writes (and what any SenML CBOR producer writes for
the same data): unsigned and negative integers, byte and text strings, arrays and maps of
definite length, false/true/null, half, single and double floats, and decimal fractions (tag 4,
``[exponent, mantissa]``, read as the double its decimal text gives, as a JSON reader would).
Anything else — indefinite lengths, other tags, simple values, nesting deeper than
:data:`MAX_DEPTH`, a length past the end of the input, trailing bytes — is a
:class:`CborDecodeError`. Every item takes at least one byte, so a declared length is checked
against the bytes left before anything is allocated: memory stays within a small multiple of
the input's size.
"""

from __future__ import annotations

import struct

__all__ = ["MAX_DEPTH", "CborDecodeError", "decode"]

MAX_DEPTH = 8
"""A SenML pack is an array of maps of scalars (a decimal fraction adds one level)."""

_HALF = struct.Struct(">e")
_SINGLE = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")


class CborDecodeError(ValueError):
    """The bytes are not one well-formed CBOR item of the supported subset."""


def decode(data: bytes) -> object:
    """The one CBOR item ``data`` holds (a trailing byte is an error)."""
    reader = _Reader(data)
    value = reader.item(0)
    if reader.pos != len(data):
        raise CborDecodeError(f"{len(data) - reader.pos} bytes after the end of the item")
    return value


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.data):
            raise CborDecodeError("truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def head(self) -> tuple[int, int, int]:
        """(major type, additional info, argument)."""
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info <= 27:
            return major, info, int.from_bytes(self.take(1 << (info - 24)), "big")
        if info == 31:
            raise CborDecodeError("indefinite lengths are not supported")
        raise CborDecodeError(f"reserved additional information {info}")

    def count(self, argument: int, per_item: int) -> int:
        """A container's or string's length, checked against the bytes left."""
        if argument * per_item > len(self.data) - self.pos:
            raise CborDecodeError(f"length {argument} runs past the end of the input")
        return argument

    def item(self, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise CborDecodeError(f"nested deeper than {MAX_DEPTH}")
        major, info, argument = self.head()
        if major == 0:
            return argument
        if major == 1:
            return -1 - argument
        if major == 2:
            return self.take(self.count(argument, 1))
        if major == 3:
            raw = self.take(self.count(argument, 1))
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise CborDecodeError("a text string is not UTF-8") from None
        if major == 4:
            return [self.item(depth + 1) for _ in range(self.count(argument, 1))]
        if major == 5:
            result: dict[object, object] = {}
            for _ in range(self.count(argument, 2)):
                key = self.item(depth + 1)
                if not isinstance(key, int | str):
                    raise CborDecodeError("a map key is neither an integer nor a text string")
                if key in result:
                    raise CborDecodeError(f"map key {key!r} appears twice")
                result[key] = self.item(depth + 1)
            return result
        if major == 6:
            return self.tagged(argument, depth)
        return self.simple(info, argument)

    def tagged(self, tag: int, depth: int) -> float:
        if tag != 4:
            raise CborDecodeError(f"tag {tag} is not supported")
        pair = self.item(depth + 1)
        if not isinstance(pair, list) or len(pair) != 2 or not all(type(x) is int for x in pair):
            raise CborDecodeError("a decimal fraction is not [exponent, mantissa]")
        exponent, mantissa = pair
        if abs(exponent) > 400:  # past any double: 0.0 or infinity, no long arithmetic
            raise CborDecodeError(f"decimal fraction exponent {exponent} out of range")
        return float(f"{mantissa}e{exponent}")

    def simple(self, info: int, argument: int) -> object:
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        bits = argument.to_bytes(1 << (info - 24), "big") if 25 <= info <= 27 else b""
        if info == 25:
            return float(_HALF.unpack(bits)[0])
        if info == 26:
            return float(_SINGLE.unpack(bits)[0])
        if info == 27:
            return float(_DOUBLE.unpack(bits)[0])
        raise CborDecodeError(f"simple value {argument} is not supported")
