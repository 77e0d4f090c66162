"""The capture line format (config.md [ble] replay)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.ble.advert import Advert, CaptureError, from_line, to_line

SPEC_LINE = (
    '{"t": 1764079200.512, "address": "A4:C1:38:5B:0F:21", "rssi": -67, "name": "ATC_5B0F21", '
    '"service_data": {"0000181a-0000-1000-8000-00805f9b34fb": "a4c1385b0f2100a22f5f0bf819"}, '
    '"manufacturer_data": {"1177": "0512fc"}}'
)


def test_the_spec_example_line() -> None:
    advert = from_line(SPEC_LINE)
    assert advert.address == "A4:C1:38:5B:0F:21"
    assert advert.time == 1764079200.512
    assert advert.rssi == -67 and advert.name == "ATC_5B0F21"
    assert advert.service_data == {
        "0000181a-0000-1000-8000-00805f9b34fb": bytes.fromhex("a4c1385b0f2100a22f5f0bf819")
    }
    assert advert.manufacturer_data == {1177: bytes.fromhex("0512fc")}
    assert from_line(to_line(advert)) == advert


def test_optional_keys() -> None:
    assert from_line('{"t": 1, "address": "a4:c1:38:5b:0f:21"}') == Advert("A4:C1:38:5B:0F:21", 1.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "JSON object"),
        ('{"address": "A4:C1:38:5B:0F:21"}', '"t"'),
        ('{"t": true, "address": "A4:C1:38:5B:0F:21"}', '"t"'),
        ('{"t": 1, "address": "A4:C1"}', '"address"'),
        ('{"t": 1, "address": "A4:C1:38:5B:0F:21", "rssi": "x"}', '"rssi"'),
        ('{"t": 1, "address": "A4:C1:38:5B:0F:21", "name": 3}', '"name"'),
        ('{"t": 1, "address": "A4:C1:38:5B:0F:21", "service_data": {"x": "zz"}}', "not hex"),
        ('{"t": 1, "address": "A4:C1:38:5B:0F:21", "service_data": []}', "service_data"),
        ('{"t": 1, "address": "A4:C1:38:5B:0F:21", "manufacturer_data": {"0x499": ""}}', "decimal"),
    ],
)
def test_bad_lines_say_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(CaptureError, match=message.replace("[", r"\[")):
        from_line(line)


_ADDRESSES = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
    lambda b: ":".join(f"{x:02X}" for x in b)
)


@given(
    _ADDRESSES,
    st.floats(0, 2e9, allow_nan=False).map(lambda t: round(t, 3)),
    st.one_of(st.none(), st.integers(-127, 20)),
    st.one_of(st.none(), st.text(max_size=10)),
    st.dictionaries(st.text("0123456789abcdef-", min_size=1, max_size=36), st.binary(max_size=20)),
    st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=20)),
)
def test_round_trip(
    address: str,
    t: float,
    rssi: int | None,
    name: str | None,
    service_data: dict[str, bytes],
    manufacturer_data: dict[int, bytes],
) -> None:
    advert = Advert(address, t, rssi, name, service_data, manufacturer_data)
    assert from_line(to_line(advert)) == advert


@given(st.text(max_size=200))
def test_any_line_is_an_advert_or_a_capture_error(line: str) -> None:
    with contextlib.suppress(CaptureError):
        from_line(line)
