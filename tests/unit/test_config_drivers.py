"""citygate.drivers.mbus.config and citygate.drivers.ble.config: checks a key table cannot make."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.api import DeviceContext, DriverConfigError, SerialLineConfig
from citygate.drivers.ble import config as ble
from citygate.drivers.mbus import config as mbus
from citygate.drivers.mbus.config import PrimaryAddress, SecondaryAddress, parse_address

LINE = SerialLineConfig("mbus", "/dev/ttyAMA0", 2400, "E", 1, 8, 1.0)
CONTEXT = DeviceContext("water-1", 900.0, Path("/etc/citygate"), {"mbus": LINE})


def issues_of(configure: Any, options: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(DriverConfigError) as exc:
        configure(options, CONTEXT)
    return [(issue.path, issue.message) for issue in exc.value.issues]


# ------------------------------------------------------------------ mbus


def test_mbus_fields_and_default_interval() -> None:
    assert set(mbus.FIELDS) == {"serial", "address", "records"}
    assert mbus.DEFAULT_INTERVAL == 900.0


def test_mbus_configure_returns_the_line_address_and_records() -> None:
    config = mbus.configure(
        {"serial": "mbus", "address": "12345678", "records": ["volume", "volume_flow"]}, CONTEXT
    )
    assert config.serial is LINE
    assert config.address == SecondaryAddress("12345678")
    assert config.records == frozenset({"volume", "volume_flow"})
    assert (
        mbus.configure({"serial": "mbus", "address": 0, "records": None}, CONTEXT).records is None
    )


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (0, PrimaryAddress(0)),
        (250, PrimaryAddress(250)),
        ("12345678", SecondaryAddress("12345678")),
        ("1234FFFF", SecondaryAddress("1234FFFF")),
        ("92752244a5112907", SecondaryAddress("92752244", "A511", "29", "07")),
        ("FFFFFFFFFFFFFFFF", SecondaryAddress("FFFFFFFF", "FFFF", "FF", "FF")),
    ],
)
def test_mbus_addresses(text: int | str, address: PrimaryAddress | SecondaryAddress) -> None:
    assert parse_address(text) == address


def test_a_secondary_address_prints_as_its_digits() -> None:
    assert str(parse_address("92752244A5112907")) == "92752244A5112907"
    assert str(parse_address("9275224f")) == "9275224F"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (251, "a primary address is 0–250, found 251"),
        (-1, "found -1"),
        ("5", 'found 1 in "5" (for a primary address write the number without quotes)'),
        ("1234567A", 'the id part of "1234567A" must be 8 BCD digits 0–9 (F: any digit)'),
        ("12345678ZZ112907", "holds a character that is not a hex digit"),
        ("1234 5678", "8 or 16 hex digits, found 9"),
        (True, "expected an integer 0–250 or a string"),
    ],
)
def test_bad_mbus_addresses(text: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_address(text)


@given(st.one_of(st.integers(), st.text(max_size=20), st.none(), st.floats()))
def test_any_address_is_parsed_or_refused_with_a_value_error(value: Any) -> None:
    try:
        address = parse_address(value)
    except ValueError:
        return
    if isinstance(address, PrimaryAddress):
        assert 0 <= address.value <= 250
        assert address.value == value
    else:
        assert re.fullmatch(r"[0-9F]{8}([0-9A-F]{8})?", str(address))
        assert str(address) == value.upper()


@given(
    st.text(alphabet="0123456789F", min_size=8, max_size=8),
    st.text("0123456789ABCDEF", min_size=8, max_size=8),
)
def test_every_bcd_id_with_any_tail_is_a_secondary_address(id_digits: str, tail: str) -> None:
    address = parse_address(id_digits + tail.lower())
    assert isinstance(address, SecondaryAddress)
    assert (address.id, address.manufacturer, address.version, address.medium) == (
        id_digits,
        tail[:4],
        tail[4:6],
        tail[6:],
    )


def test_mbus_configure_reports_every_issue_by_path() -> None:
    assert issues_of(
        mbus.configure,
        {"serial": "mbuss", "address": 300, "records": ["volume", "Volume", "volume"]},
    ) == [
        (("serial",), '"serial": no [[serial]] line "mbuss"; did you mean "mbus"?'),
        (("address",), '"address": a primary address is 0–250, found 300'),
        (
            ("records", 1),
            '"records": "Volume" is not a quantity name '
            "(lower-case letters, digits and _, e.g. volume or energy_t1)",
        ),
        (("records", 2), '"records": "volume" is listed twice'),
    ]


def test_mbus_names_the_defined_lines_when_none_is_close() -> None:
    assert issues_of(mbus.configure, {"serial": "zzz", "address": 1, "records": None}) == [
        (("serial",), '"serial": no [[serial]] line "zzz"; defined: "mbus"')
    ]
    with pytest.raises(DriverConfigError) as exc:
        mbus.configure(
            {"serial": "zzz", "address": 1, "records": None},
            DeviceContext("w", 900.0, Path("/etc")),
        )
    assert exc.value.issues[0].message.endswith("; no [[serial]] line is defined")


# ------------------------------------------------------------------ ble


def test_ble_fields_and_default_interval() -> None:
    assert set(ble.FIELDS) == {"address", "format", "bindkey"}
    assert ble.FIELDS["bindkey"].kind == "secret"
    assert ble.DEFAULT_INTERVAL == 60.0


def test_ble_configure_normalises_the_address_and_decodes_the_key() -> None:
    config = ble.configure(
        {
            "address": "a4:c1:38:5b:0f:21",
            "format": "bthome",
            "bindkey": "231D39C1D7CC1AB1AEE224CD096DB932",
        },
        CONTEXT,
    )
    assert config.address == "A4:C1:38:5B:0F:21"
    assert config.format == "bthome"
    assert config.bindkey == bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
    assert (
        ble.configure({"address": "A4:C1:38:5B:0F:21", "format": "auto"}, CONTEXT).bindkey is None
    )


@pytest.mark.parametrize(
    ("options", "issues"),
    [
        (
            {"address": "A4:C1:38:5B:0F", "format": "auto"},
            [
                (
                    ("address",),
                    '"address": expected a Bluetooth address like "A4:C1:38:5B:0F:21", '
                    'found "A4:C1:38:5B:0F"',
                )
            ],
        ),
        (
            {"address": "A4:C1:38:5B:0F:21", "format": "auto", "bindkey": "abc"},
            [(("bindkey",), '"bindkey": expected 32 hex digits, found 3 characters')],
        ),
        (
            {"address": "A4:C1:38:5B:0F:21", "format": "auto", "bindkey": "g" * 32},
            [(("bindkey",), '"bindkey": expected 32 hex digits, found other characters')],
        ),
        (
            {"address": "A4:C1:38:5B:0F:21", "format": "atc", "bindkey": "0" * 32},
            [(("bindkey",), '"bindkey": only BTHome adverts are encrypted; format is "atc"')],
        ),
    ],
)
def test_ble_configure_reports_issues(options: dict[str, Any], issues: list[Any]) -> None:
    assert issues_of(ble.configure, options) == issues


@given(st.text("0123456789abcdefXYZ", min_size=6, max_size=40))
def test_a_bad_bindkey_is_never_echoed(key: str) -> None:
    try:
        ble.configure({"address": "A4:C1:38:5B:0F:21", "format": "auto", "bindkey": key}, CONTEXT)
    except DriverConfigError as exc:
        message = str(exc)
    else:
        message = ""
        assert len(key) == 32
    assert key not in message
