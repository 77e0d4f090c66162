"""Every real telegram of vectors/frames decodes to what libmbus documents for it.

Where libmbus is wrong or incomplete, the frame is an xfail naming the reason,
and a second test pins the documented records to our reading of EN 13757-3, so
such a frame still fails loudly if anything else in it changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from citygate.drivers.api import DecodeError
from citygate.drivers.mbus.decode import (
    MeterApplicationError,
    Telegram,
    decode_frame,
    to_measurements,
)
from citygate.drivers.mbus.link import parse_frame
from tests.drivers.mbus.libmbus import ERROR_FRAMES, FRAMES, compare, load_expected

FRAME_FILES = sorted(FRAMES.glob("*.hex"))
ERROR_FILES = sorted(ERROR_FRAMES.glob("*.hex"))

_BCD_HEX = (
    "the records 'value during error state' hold BCD digits A–F (the meter's error "
    "pattern); libmbus reads each hex digit as 10–15, we keep the record without a value"
)
# frame -> (reason, {record index: what we decode instead})
KNOWN_DIFFERENCES: dict[str, tuple[str, dict[int, object]]] = {
    "ELS_Elster-F96-Plus": (_BCD_HEX, {4: None, 5: None}),
    "abb_f95": (_BCD_HEX, {2: None, 3: None}),
    "SEN_Pollustat": (
        "VIFEs 0x50/0x58 (EN 13757-3 table 14: duration of lower/upper limit exceed, seconds) "
        "make records 12 and 13 durations; libmbus ignores them and keeps m^3/h",
        {12: 11582321, 13: 756},
    ),
    "landis+gyr_ultraheat_t230": (
        "VIFE 0x6F (date/time of last end) makes records 19–22 type F timestamps of the "
        "maxima; libmbus ignores it and prints the raw integers scaled as power/flow/"
        "temperature (19 and 20 are all-zero, an invalid date: no value)",
        {19: None, 20: None, 21: "2011-08-26T20:50:00", 22: "2011-08-09T11:43:00"},
    ),
    "sen_pollutherm": (
        "record 2 has VIF 0x7B (FB extension) without a VIFE; libmbus prints an empty "
        "record, we keep it under the generic name vif_7b with its BCD value",
        {2: 302},
    ),
}


def _decode(path: Path) -> Telegram:
    return decode_frame(parse_frame(bytes.fromhex(path.read_text())))


def _frame_params() -> list[object]:
    params: list[object] = []
    for path in FRAME_FILES:
        known = KNOWN_DIFFERENCES.get(path.stem)
        marks = [pytest.mark.xfail(reason=known[0], strict=True)] if known else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.mark.parametrize("path", _frame_params())
def test_frame_matches_libmbus(path: Path) -> None:
    telegram = _decode(path)
    info, expected = load_expected(path.with_suffix(".norm.xml"))
    assert compare(telegram, info, expected) == []


@pytest.mark.parametrize("stem", sorted(KNOWN_DIFFERENCES))
def test_known_differences_are_only_the_documented_records(stem: str) -> None:
    path = FRAMES / f"{stem}.hex"
    telegram = _decode(path)
    info, expected = load_expected(path.with_suffix(".norm.xml"))
    _, ours = KNOWN_DIFFERENCES[stem]
    problems = compare(telegram, info, expected)
    assert problems
    for problem in problems:
        assert any(problem.startswith(f"record {index} ") for index in ours), problem
    for index, value in ours.items():
        assert telegram.records[index].value == value


def test_tally() -> None:
    matched: list[str] = []
    differing: list[str] = []
    for path in FRAME_FILES:
        info, expected = load_expected(path.with_suffix(".norm.xml"))
        problems = compare(_decode(path), info, expected)
        (differing if problems else matched).append(path.stem)
    print(
        f"\nM-Bus vectors: {len(matched)}/{len(FRAME_FILES)} frames match libmbus record by "
        f"record; {len(differing)} differ where libmbus is documented wrong: "
        + ", ".join(differing)
    )
    assert sorted(differing) == sorted(KNOWN_DIFFERENCES)
    assert len(FRAME_FILES) == len(list(FRAMES.glob("*.norm.xml")))


@pytest.mark.parametrize("path", ERROR_FILES, ids=[p.stem for p in ERROR_FILES])
def test_error_frame_gives_decode_error(path: Path) -> None:
    with pytest.raises(DecodeError):
        _decode(path)


def test_application_error_frames_say_what_the_meter_reported() -> None:
    with pytest.raises(MeterApplicationError) as caught:
        _decode(ERROR_FRAMES / "application_busy.hex")
    assert caught.value.code == 8
    assert "busy" in str(caught.value)


def test_measurements_of_a_water_meter() -> None:
    telegram = _decode(FRAMES / "itron_cyble_m-bus_v1.4_water.hex")
    assert telegram.header is not None
    info = telegram.header.meter_info()
    assert info["manufacturer"] == "ACW"  # Actaris, now Itron
    assert info["medium"] == "water"
    measurements = to_measurements(telegram)
    assert measurements[0].name == "meter_status"
    names = [m.name for m in measurements]
    assert len(names) == len(set(names))
    volume = next(m for m in measurements if m.name == "volume")
    assert volume.unit == "m3"


def test_fixed_data_structure() -> None:
    # CI 0x73, status 00 (BCD counters, actual values), counter 1 in litres, counter 2
    # "same unit, historic": 1 l and 135 l
    telegram = _decode(FRAMES / "manual_frame2.hex")
    assert telegram.header is not None
    assert telegram.header.id == "12345678"
    assert telegram.header.medium == "water"
    assert [(r.name, r.value, r.unit) for r in telegram.records] == [
        ("volume", 0.001, "m3"),
        ("volume_s1", 0.135, "m3"),
    ]
