"""Shortest decimal text for float32 values (issue 13 point 2): property tests over random
float32 bit patterns, against a brute-force reference."""

from __future__ import annotations

import math
import random
import struct
from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st

from citygate.drivers import _floats
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


def from_parts(negative: bool, biased_exponent: int, fraction: int) -> float:
    return widen((negative << 31) | (biased_exponent << 23) | fraction)


EDGE_FRACTIONS = (0, 1, 2, 0x400000, 0x7FFFFE, 0x7FFFFF)


def check(value: float) -> None:
    result = shortest_float32(value)
    assert narrow(result) == value
    assert math.copysign(1.0, result) == math.copysign(1.0, value)
    assert significant_digits(result) == fewest_digits(value)


def test_every_binary_exponent_at_its_edges() -> None:
    """Every float32 exponent (the fast path's table and the slow path either side of it),
    each with the fractions where rounding and the binade's ends lie."""
    for biased in range(1, 255):
        for fraction in EDGE_FRACTIONS:
            for negative in (False, True):
                check(from_parts(negative, biased, fraction))
    for fraction in EDGE_FRACTIONS[1:]:  # subnormals
        check(from_parts(False, 0, fraction))


@given(st.integers(1, 254), st.integers(0, 2**23 - 1), st.booleans())
@example(127 - 20, 0x123456, False)  # the fast path's lowest exponent (2**-20 to 2**-19)
@example(127 + 22, 0x7FFFFF, False)  # its highest: just below 2**23
@example(126, 0x7FFFFF, False)  # [0.5, 1): frexp exponent 0
def test_any_significand_of_any_exponent(biased: int, fraction: int, negative: bool) -> None:
    check(from_parts(negative, biased, fraction))


def test_the_fast_path_answers_the_usual_magnitudes() -> None:
    """Meter values (2**-19 to 2**23) never need the slow path: an operation count, the
    fast path being the one cheap enough for 80,000 readings/s."""
    calls = 0
    slow = _floats._slow_shortest

    def counting(value: float) -> float:
        nonlocal calls
        calls += 1
        return slow(value)

    rng = random.Random(13)
    values = [narrow(rng.uniform(-1000.0, 1000.0)) for _ in range(20_000)]
    values += [narrow(10.0 ** rng.uniform(-5.5, 6.9)) for _ in range(20_000)]
    _floats._slow_shortest = counting
    try:
        answers = [shortest_float32(v) for v in values]
    finally:
        _floats._slow_shortest = slow
    assert calls <= len(values) // 1000
    assert all(narrow(a) == v for a, v in zip(answers, values, strict=True))


# -- decimal shifts and sums (unit factors and register scales that are powers of ten) ------


@given(
    value=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-(2**63), 2**63),
        st.integers(0, 2**32 - 1).map(lambda bits: shortest_float32(widen(bits))),
    ),
    exponent=st.integers(-12, 12),
)
@example(value=906.6, exponent=-3)
@example(value=2301, exponent=-1)
@example(value=1e16, exponent=-3)
@example(value=-0.0, exponent=3)
def test_scale_decimal_is_the_exact_decimal_shift_rounded_once(
    value: float | int, exponent: int
) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        return
    result = _floats.scale_decimal(value, exponent)
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        expected = float(Decimal(text).scaleb(exponent))
    except OverflowError:  # beyond the doubles: a multiply overflows as well
        assert math.isinf(result)
        return
    assert result == expected
    assert math.copysign(1.0, result) == math.copysign(1.0, float(value))
    if isinstance(value, float) and result != 0.0 and math.isfinite(result):
        # the shift never lengthens the text: the same digits read back as the result
        assert significant_digits(result) <= significant_digits(value)


def test_scale_decimal_examples() -> None:
    assert repr(_floats.scale_decimal(906.6, -3)) == "0.9066"  # 906.6 * 0.001: 0.9066000000000001
    assert repr(_floats.scale_decimal(2301, -1)) == "230.1"  # 2301 * 0.1: 230.10000000000002
    assert _floats.scale_decimal(12, 3) == 12000.0
    assert repr(_floats.scale_decimal(1.5e-7, 3)) == "0.00015"
    assert math.isinf(_floats.scale_decimal(math.inf, -3))


def test_decimal_exponent_knows_the_powers_of_ten_only() -> None:
    cases = {1e-3: -3, 1e3: 3, 0.1: -1, 1.0: 0, 1e6: 6, 10.0: 1, 1e-22: -22}
    for factor, exponent in cases.items():
        assert _floats.decimal_exponent(factor) == exponent
    for factor in (3.6, 2.5, 0.0, -1.0, math.inf, math.nan, 1 / 3.6e6, 0.1 * 0.001 * 3):
        assert _floats.decimal_exponent(factor) is None


@given(
    st.floats(-1e12, 1e12, allow_nan=False),
    st.floats(-1e6, 1e6, allow_nan=False),
)
@example(-12.3, 5.0)
def test_add_decimal_is_the_exact_sum_rounded_once(value: float, addend: float) -> None:
    result = _floats.add_decimal(value, addend)
    assert result == float(Decimal(repr(value)) + Decimal(repr(addend)))
    assert abs(result - (value + addend)) <= 2 * math.ulp(value + addend) + 1e-300


@given(st.integers(0, 2**32 - 1), st.integers(-9, 9))
@example(bits=int.from_bytes(F32.pack(906.6), "little"), exponent=-3)
def test_shortest_float32_scaled_is_the_shortest_decimal_shifted(bits: int, exponent: int) -> None:
    value = widen(bits)
    if not math.isfinite(value):
        return
    expected = _floats.scale_decimal(shortest_float32(value), exponent)
    assert _floats.shortest_float32_scaled(value, exponent) == expected


def test_shortest_float32_scaled_on_every_binary_exponent() -> None:
    rng = random.Random(13)
    for _ in range(200_000):
        value = widen(rng.getrandbits(32))
        if math.isfinite(value):
            exponent = rng.randrange(-6, 7)
            expected = _floats.scale_decimal(shortest_float32(value), exponent)
            assert _floats.shortest_float32_scaled(value, exponent) == expected, (value, exponent)
