"""The shortest decimal text for a single-precision value (re-exported by the driver API)."""

from __future__ import annotations

import math
import struct
from decimal import Decimal

_F32 = struct.Struct("<f")
_LOG10_2 = math.log10(2.0)
_POW10 = tuple(10.0**k for k in range(23))  # exact doubles


def _fast_entry(exponent: int) -> tuple[float, float, float] | None:
    # The candidate decimals of the values with frexp exponent ``exponent``: their float32 ulp is
    # 2**(exponent-24), so the nearest decimal with k = -floor(log10(ulp)) decimals reads back
    # (one digit more than needed at most), and k - 1 decimals may. Both scales must be exact
    # powers of ten (k <= 22) and k - 1 >= 0.
    k = -math.floor((exponent - 24) * _LOG10_2)
    if not 1 <= k <= 22:
        return None
    return (_POW10[k - 1], _POW10[k], math.ldexp(1.0, exponent - 25))


# frexp exponent -> (scale for one decimal fewer, scale that always works, half a float32 ulp)
# for the magnitudes from 2**-20 to 2**23. Exponent 0 is kept apart: frexp gives it to zero,
# NaN and the infinities as well as to [0.5, 1), so _other checks for those first.
_FAST: dict[int, tuple[float, float, float]] = {
    exponent: entry
    for exponent in range(-19, 24)
    if exponent != 0 and (entry := _fast_entry(exponent)) is not None
}
_FAST_ZERO = _fast_entry(0)


def shortest_float32(value: float) -> float:
    """The float64 with the fewest significant digits that converts back to the same float32.

    A float32 register holding 196.6 unpacks to 196.60000610351562; this returns 196.6, whose
    ``repr`` is what a SenML consumer reads, and which gives the register's exact float32 back
    when converted to single precision. ``value`` must be a float32 widened to float64; NaN,
    infinities and zeros come back as they are.
    """
    # Fast path for the usual magnitudes (one look-up by binary exponent, no log10, no cache):
    # the candidate decimal r / 10**k with an exact power of ten is the double nearest to that
    # decimal (one correctly rounded division), and it reads back as the same float32 when it
    # lies within half a float32 ulp of the value (the difference of two doubles that close is
    # exact). The candidate with one decimal fewer is tried first: if any shorter decimal reads
    # back, so does it (see _slow_shortest). A candidate missed at a rounding boundary only
    # sends the search on to the slow path, which is always right. x // 1.0 is floor(x) as a
    # float, without the detour through an int.
    fast = _FAST.get(math.frexp(value)[1])
    if fast is None:
        return _other(value)
    coarse, fine, half_ulp = fast
    candidate = (value * coarse + 0.5) // 1.0 / coarse
    gap = candidate - value
    if -half_ulp < gap < half_ulp:
        return candidate
    if abs(gap) == half_ulp and _even(value):
        return candidate
    candidate = (value * fine + 0.5) // 1.0 / fine
    gap = candidate - value
    if -half_ulp < gap < half_ulp:
        return candidate
    return _tie(value, candidate, half_ulp)


def _tie(value: float, candidate: float, half_ulp: float) -> float:
    """The fast path's last candidate, exactly half an ulp away or missed."""
    if abs(candidate - value) == half_ulp and _even(value):
        return candidate
    return _slow_shortest(value)


def _other(value: float) -> float:
    """Zeros, NaN, infinities, [0.5, 1) and magnitudes outside the fast path's table."""
    if not math.isfinite(value) or value == 0.0:
        return value
    if math.frexp(value)[1] == 0 and _FAST_ZERO is not None:
        coarse, fine, half_ulp = _FAST_ZERO
        for scale in (coarse, fine):
            candidate = (value * scale + 0.5) // 1.0 / scale
            gap = abs(candidate - value)
            if gap < half_ulp or (gap == half_ulp and _even(value)):
                return candidate
    return _slow_shortest(value)


def _even(value: float) -> bool:
    """The float32 ``value`` has an even significand (ties round to it)."""
    return not _F32.pack(value)[0] & 1


def _slow_shortest(value: float) -> float:
    # With k significant digits the decimals are 10**(p-k+1) apart (p: the decimal exponent).
    # Once that spacing is at most the float32's ulp, the nearest k-digit decimal lies within
    # half an ulp and reads back to the value: k = sure. One digit fewer may work by luck; and
    # if any shorter decimal works, it is also the nearest (sure-1)-digit decimal (that grid is
    # coarser than an ulp), so trying sure-1 first finds the shortest.
    exponent = math.frexp(value)[1]
    ulp_log10 = max(exponent - 24, -149) * _LOG10_2
    p = math.floor(math.log10(abs(value)))
    sure = p + 1 - math.floor(ulp_log10)
    pack, unpack = _F32.pack, _F32.unpack
    for digits in (sure - 1, sure, sure + 1):
        if digits < 1:
            continue
        candidate = round(value, digits - 1 - p)
        try:
            if unpack(pack(candidate))[0] == value:
                return candidate
        except OverflowError:  # rounded up past the largest float32
            continue
    return float(f"{value:.9g}")  # 9 significant digits always identify a float32


_POW10_EXACT = tuple(10**k for k in range(23))  # ints; as floats every one is exact


def decimal_exponent(factor: float) -> int | None:
    """``k`` when ``factor`` is the double of 10**k (|k| ≤ 22: 1000.0, 0.001, 0.1), else None."""
    if not math.isfinite(factor) or factor <= 0.0:
        return None
    k = round(math.log10(factor))
    if -22 <= k <= 22 and factor == float(f"1e{k}"):
        return k
    return None


def scale_decimal(value: float | int, exponent: int) -> float:
    """``value`` × 10**``exponent`` as the double nearest to the exact decimal product of
    ``value``'s shortest text (``repr``) and the power of ten.

    A binary multiply by 0.001 turns 906.6 Wh into 0.9066000000000001 kWh (and 2301 × 0.1 into
    230.10000000000002); this gives 0.9066 and 230.1: the same reading, shifted in decimal, so
    its text stays as short as the value the device gave. A float32 value made shortest by
    :func:`shortest_float32` converts back to the register's float32 after the inverse shift.
    """
    if exponent == 0 or value == 0:
        return value * 1.0  # keeps the sign of -0.0
    if type(value) is int:
        if exponent > 0:
            return (
                float(value * _POW10_EXACT[exponent]) if exponent <= 22 else value * 10.0**exponent
            )
        if -exponent <= 22 and -(2**53) < value < 2**53:
            return value / _POW10[-exponent]  # two exact doubles: one correct rounding
        return float(f"{value}e{exponent}")
    text = repr(value)
    whole, point, rest = text.partition(".")
    if not point or "e" in rest or not whole.lstrip("-").isdigit():
        # "1e+16", "inf", "nan" (or a float subclass's repr): let float() do the decimal shift
        mantissa, _, power = text.partition("e")
        try:
            return float(f"{mantissa}e{int(power or 0) + exponent}")
        except ValueError:
            return value * 10.0**exponent
    digits = int(whole + rest)
    places = len(rest) - exponent  # value × 10**exponent == digits / 10**places
    if -(2**53) < digits < 2**53:
        if 0 <= places <= 22:
            return digits / _POW10[places]
        if -22 <= places < 0:
            return digits * _POW10[-places]
    return float(f"{whole}.{rest}e{exponent}")


def add_decimal(value: float, addend: float) -> float:
    """``value`` + ``addend`` as the double nearest to the exact sum of their shortest texts
    (-12.3 + 5.0 is -7.3, not -7.300000000000001): a register's offset, added in decimal."""
    if not (math.isfinite(value) and math.isfinite(addend)):
        return value + addend
    return float(Decimal(repr(value)) + Decimal(repr(addend)))


_PLACES = {exponent: -math.floor((exponent - 24) * _LOG10_2) for exponent in _FAST}


def shortest_float32_scaled(value: float, exponent: int) -> float:
    """``scale_decimal(shortest_float32(value), exponent)``, without the detour through text for
    the usual magnitudes: the shortest decimal's digits divided by one exact power of ten."""
    binary_exponent = math.frexp(value)[1]
    fast = _FAST.get(binary_exponent)
    if fast is not None:
        coarse, fine, half_ulp = fast
        places = _PLACES[binary_exponent]
        digits = (value * coarse + 0.5) // 1.0
        gap = digits / coarse - value
        if -half_ulp < gap < half_ulp or (abs(gap) == half_ulp and _even(value)):
            shift = places - 1 - exponent
        else:
            digits = (value * fine + 0.5) // 1.0
            gap = digits / fine - value
            shift = places - exponent if -half_ulp < gap < half_ulp else -1
        if 0 <= shift <= 22:
            return digits / _POW10[shift]
    return scale_decimal(shortest_float32(value), exponent)
