"""Compare pymeterbus with citygate's M-Bus decoder on the libmbus vectors.

Not a test and not a dependency: pymeterbus is installed by hand for this
comparison only (``.venv/bin/pip install pymeterbus==0.8.5``), then::

    .venv/bin/python -m tests.drivers.mbus.compare_pymeterbus

It prints, for both decoders: frames decoded, frames whose every data record
matches libmbus's documented value (after unit normalisation), records
matching, error frames rejected, telegrams per second, and what importing
pymeterbus does to the root logger.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from citygate.drivers.api import DecodeError, canonical
from citygate.drivers.mbus.decode import decode_frame
from citygate.drivers.mbus.link import parse_frame
from tests.drivers.mbus.libmbus import (
    ERROR_FRAMES,
    FRAMES,
    MANUFACTURER_FUNCTIONS,
    UNITS,
    compare,
    load_expected,
)

_PYMETERBUS_UNITS = {
    "Wh": "Wh",
    "J": "J",
    "m^3": "m3",
    "m^3/h": "m3/h",
    "W": "W",
    "C": "Cel",
    "K": "K",
    "V": "V",
    "A": "A",
    "seconds": "s",
}


def _pymeterbus_matches(telegram: Any, expected_path: Any) -> tuple[int, int]:
    """(records matching libmbus, records libmbus documents) for one pymeterbus telegram."""
    _, expected = load_expected(expected_path)
    wanted = [e for e in expected if e.function not in MANUFACTURER_FUNCTIONS]
    records = [
        r
        for r in telegram.records
        if "SPECIAL" not in str(r.function) and "MORE_RECORDS" not in str(r.function)
    ]
    matched = 0
    for want, record in zip(wanted, records, strict=False):
        try:
            value = record.parsed_value
        except Exception:
            continue
        text = (want.value or "").strip()
        if isinstance(value, str):
            if text.removesuffix("Z").startswith(value) or value.strip() == text:
                matched += 1
            continue
        if value is None:
            continue
        try:
            number = float(text)
        except ValueError:
            continue
        factor = got_factor = 1.0
        unit = UNITS.get(want.unit or "")
        if unit is not None:
            _, factor = canonical(unit)
            theirs = _PYMETERBUS_UNITS.get(str(record.unit))
            if theirs is None:
                continue
            _, got_factor = canonical(theirs)
        if math.isclose(
            float(value) * got_factor, number * factor, rel_tol=1e-6, abs_tol=0.5e-6 * factor
        ):
            matched += 1
    return matched, len(wanted)


def _rate(decode: Callable[[bytes], object], frames: list[bytes], seconds: float = 1.0) -> float:
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for frame in frames:
            try:
                decode(frame)
            except Exception:
                continue
        count += len(frames)
    return count / elapsed


def main() -> None:
    """Print the comparison."""
    level_before = logging.getLogger().level
    import meterbus  # type: ignore[import-not-found,import-untyped,unused-ignore]  # optional, installed by hand

    level_after = logging.getLogger().level

    paths = sorted(FRAMES.glob("*.hex"))
    frames = [bytes.fromhex(p.read_text()) for p in paths]

    theirs_loaded = theirs_full = theirs_records = total_records = 0
    theirs_errors: dict[str, str] = {}
    theirs_differ: list[str] = []
    for path, data in zip(paths, frames, strict=True):
        try:
            telegram = meterbus.load(data)
            [r.parsed_value for r in telegram.records]  # values are decoded lazily
        except Exception as exc:
            theirs_errors[path.stem] = f"{type(exc).__name__}: {exc}"
            _, expected = load_expected(path.with_suffix(".norm.xml"))
            total_records += sum(e.function not in MANUFACTURER_FUNCTIONS for e in expected)
            continue
        theirs_loaded += 1
        matched, wanted = _pymeterbus_matches(telegram, path.with_suffix(".norm.xml"))
        theirs_records += matched
        total_records += wanted
        if matched == wanted:
            theirs_full += 1
        else:
            theirs_differ.append(f"{path.stem} ({wanted - matched} records)")

    ours_full = ours_differing_records = 0
    for path, data in zip(paths, frames, strict=True):
        info, expected = load_expected(path.with_suffix(".norm.xml"))
        problems = compare(decode_frame(parse_frame(data)), info, expected)
        ours_full += not problems
        ours_differing_records += len({p.split(" (")[0] for p in problems})

    error_paths = sorted(ERROR_FRAMES.glob("*.hex"))
    theirs_accepted, ours_accepted = [], []
    for path in error_paths:
        data = bytes.fromhex(path.read_text())
        try:
            meterbus.load(data)
            theirs_accepted.append(path.stem)
        except Exception:
            pass
        try:
            decode_frame(parse_frame(data))
            ours_accepted.append(path.stem)
        except DecodeError:
            pass

    trailing = frames[0] + b"\x00"
    try:
        meterbus.load(trailing)
        theirs_trailing = "accepted"
    except Exception as exc:
        theirs_trailing = f"rejected ({type(exc).__name__}: {exc})"

    sample = meterbus.load(bytes.fromhex((FRAMES / "ELV-Elvaco-CMa10.hex").read_text()))
    decimal_value = next(
        r.parsed_value
        for r in sample.records
        if isinstance(r.parsed_value, Decimal) and r.parsed_value != int(r.parsed_value)
    )

    print(f"frames: {len(frames)}, data records documented by libmbus: {total_records}")
    print(f"pymeterbus {meterbus.__version__ if hasattr(meterbus, '__version__') else '0.8.5'}:")
    print(f"  decoded {theirs_loaded}/{len(frames)} frames; raised on: {theirs_errors}")
    print(f"  frames matching libmbus record by record: {theirs_full}/{len(frames)}")
    print(f"  records matching libmbus: {theirs_records}/{total_records}")
    print(f"  frames differing: {theirs_differ}")
    print(f"  error frames accepted silently: {len(theirs_accepted)}/{len(error_paths)} "
          f"{theirs_accepted}")  # fmt: skip
    print(f"  a frame followed by one byte: {theirs_trailing}")
    print(f"  a real32 value comes back as {decimal_value!r}")
    print(f"  root logger level before/after import: {level_before} -> {level_after}")
    print(f"  {_rate(meterbus.load, frames):.0f} telegrams/s")
    print("citygate citygate.drivers.mbus:")
    print(f"  frames matching libmbus record by record: {ours_full}/{len(frames)}")
    print(f"  records matching libmbus: {total_records - ours_differing_records}/{total_records}")
    print(f"  error frames accepted: {len(ours_accepted)}/{len(error_paths)} {ours_accepted}")
    print(f"  {_rate(lambda d: decode_frame(parse_frame(d)), frames):.0f} telegrams/s")


if __name__ == "__main__":
    main()
