"""Issue 17 point 4: every real telegram in ``telegrams/`` decodes to its source's values.

Each file holds a telegram as a public source published it (wmbusmeters' driver tests, the
OMS Annex N examples), its key, and the standard records' reference values in citygate's
names and canonical units (see telegrams/README.md). The decoder runs every layer — link
frame, ELL, AFL, transport header, AES mode 5/7 — and the wired EN 13757-3 decoder; the
readings, converted to canonical units as the runtime does, must equal the references.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

from citygate.drivers.api import canonical
from citygate.drivers.mbus.decode import to_measurements
from citygate.drivers.wmbus.decode import decode_telegram
from tests.drivers.wmbus.check_telegrams import Telegram, load_telegrams

TELEGRAMS = load_telegrams()


def readings(vector: Telegram) -> dict[str, tuple[object, str | None]]:
    frame_format = vector.frame_format if vector.frame_format in ("A", "B") else None
    telegram = decode_telegram(
        vector.data,
        vector.key,
        vector.crc_present,
        frame_format=frame_format,  # type: ignore[arg-type]
    )
    out: dict[str, tuple[object, str | None]] = {}
    for m in to_measurements(telegram):
        value, unit = m.value, m.unit
        if unit is not None and isinstance(value, int | float) and not isinstance(value, bool):
            unit, factor = canonical(unit)
            value = value * factor
        out[m.name] = (value, unit)
    return out


def test_the_collection_is_as_large_as_the_issue_asks() -> None:
    manufacturers = Counter(t.manufacturer for t in TELEGRAMS)
    security = Counter(t.security_mode for t in TELEGRAMS)
    assert len(TELEGRAMS) >= 40
    assert len(manufacturers) >= 10
    assert security[0] and security[5] and security[7]
    assert {"T1", "C1"} <= {t.mode for t in TELEGRAMS}


@pytest.mark.parametrize("vector", TELEGRAMS, ids=[t.path.stem for t in TELEGRAMS])
def test_real_telegram_decodes_to_the_reference_values(vector: Telegram) -> None:
    got = readings(vector)
    for expected in vector.expected:
        name = expected["name"]
        assert name in got, f"{name} missing; decoded: {sorted(got)}"
        value, unit = got[name]
        assert unit == expected["unit"], f"{name}: unit {unit!r}, reference {expected}"
        want = expected["value"]
        if isinstance(want, str):
            assert value == want, f"{name}: {value!r}, reference {expected}"
        else:
            assert isinstance(value, int | float)
            assert math.isclose(value, want, rel_tol=1e-6, abs_tol=1e-9), (
                f"{name}: {value!r}, reference {expected}"
            )
