"""The shortest decimal text for a single-precision value (re-exported by the driver API)."""

from __future__ import annotations

import math
import struct

_F32 = struct.Struct("<f")
_LOG10_2 = math.log10(2.0)
_MIN_EXPONENT = -148  # frexp exponent of the smallest float32 normal is -125; subnormal ulp 2**-149
_CACHE_LIMIT = 4096
_cache: dict[float, float] = {}


def shortest_float32(value: float) -> float:
    """The float64 with the fewest significant digits that converts back to the same float32.

    A float32 register holding 196.6 unpacks to 196.60000610351562; this returns 196.6, whose
    ``repr`` is what a SenML consumer reads, and which gives the register's exact float32 back
    when converted to single precision. ``value`` must be a float32 widened to float64; NaN,
    infinities and zeros come back as they are. Meter values repeat from poll to poll, so the
    answers are cached (bounded).
    """
    known = _cache.get(value)
    if known is not None:
        return known
    if not math.isfinite(value) or value == 0.0:
        return value
    result = _shortest(value)
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    _cache[value] = result
    return result


_POW10 = tuple(10.0**k for k in range(23))  # exact doubles


def _shortest(value: float) -> float:
    # Fast path for the usual magnitudes: the candidate decimal r / 10**k with an exact power
    # of ten (k <= 22) is the double nearest to that decimal (one correctly rounded division),
    # and it reads back as the same float32 when it lies within half a float32 ulp of the value
    # (the difference of two doubles that close is exact). A candidate missed at a rounding
    # boundary only sends the search on to the slow path below, which is always right.
    exponent = math.frexp(value)[1]
    if -20 < exponent < 27:
        half_ulp = math.ldexp(1.0, exponent - 25)
        p = math.floor(math.log10(abs(value)))
        sure = p + 1 - math.floor(max(exponent - 24, -149) * _LOG10_2)
        for digits in (sure - 1, sure):
            k = digits - 1 - p
            if digits < 1 or not 0 <= k <= 22:
                break
            scale = _POW10[k]
            candidate = math.floor(value * scale + 0.5) / scale
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
