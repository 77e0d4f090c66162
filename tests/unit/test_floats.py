"""Shortest decimal text for float32 values (issue 13 point 2): property tests over random
float32 bit patterns, against a brute-force reference."""

from __future__ import annotations

import math
import struct

from hypothesis import example, given
from hypothesis import strategies as st

from citygate.drivers.api import shortest_float32

F32 = struct.Struct("<f")


def widen(bits: int) -> float:
    return float(F32.unpack(bits.to_bytes(4, "little"))[0])


def narrow(value: float) -> float:
    return float(F32.unpack(F32.pack(value))[0])


def fewest_digits(value: float) -> int:
    """Brute force: the fewest significant digits that read back to the same float32."""
    for digits in range(1, 10):
        try:
            if narrow(float(f"{value:.{digits}g}")) == value:
                return digits
        except OverflowError:
            continue
    raise AssertionError(f"no decimal of at most 9 digits reads back as {value!r}")


def significant_digits(value: float) -> int:
    mantissa = repr(abs(value)).split("e")[0].replace(".", "").lstrip("0").rstrip("0")
    return max(1, len(mantissa))


@given(st.integers(0, 2**32 - 1))
@example(0x4344999A)  # 196.6
@example(0x00000001)  # the smallest subnormal
@example(0x7F7FFFFF)  # the largest float32
@example(0x80000000)  # -0.0
def test_reads_back_as_the_same_float32_with_the_fewest_digits(bits: int) -> None:
    value = widen(bits)
    result = shortest_float32(value)
    if math.isnan(value):
        assert math.isnan(result)
        return
    assert narrow(result) == value
    assert math.copysign(1.0, result) == math.copysign(1.0, value)
    if math.isfinite(value) and value != 0.0:
        assert significant_digits(result) == fewest_digits(value)
        assert float(repr(result)) == result  # the text a consumer reads is this value


def test_meter_values_read_as_written() -> None:
    for text in ("196.6", "230.4", "49.99", "0.1", "1234.567", "-12.5", "3.4028235e+38"):
        assert repr(shortest_float32(narrow(float(text)))) == text
