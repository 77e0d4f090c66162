"""EN 13757-3 application layer: headers, data types, VIF tables, names, properties.

Telegrams here are written byte by byte from the standard's tables (the helper
below only concatenates a header and records), never through the decoder.
"""

from __future__ import annotations

import contextlib
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.api import CONVERSIONS, DecodeError, Measurement, shortest_float32
from citygate.drivers.mbus.decode import (
    Telegram,
    combine,
    decode_frame,
    decode_user_data,
    to_measurements,
)
from citygate.drivers.mbus.link import parse_frame
from tests.drivers.mbus.libmbus import FRAMES

# id 92752244, manufacturer HYD (H=8 Y=25 D=4: 8<<10 | 25<<5 | 4 = 0x2324), version 41,
# medium 07 (water), access number 0x2A, status 0x00, signature 0000
HEADER = bytes.fromhex("44 22 75 92 24 23 29 07 2A 00 00 00")


def records(hex_records: str, status: int = 0) -> Telegram:
    header = bytearray(HEADER)
    header[9] = status
    return decode_user_data(0x72, bytes(header) + bytes.fromhex(hex_records))


def one(hex_record: str) -> tuple[str, object, str | None]:
    (record,) = records(hex_record).records
    return record.name, record.value, record.unit


# --------------------------------------------------------------------------- header


def test_header_and_meter_info() -> None:
    telegram = records("", status=0x04)
    assert telegram.header is not None
    assert telegram.header.meter_info() == {
        "id": "92752244",
        "manufacturer": "HYD",
        "version": 41,
        "medium": "water",
    }
    assert telegram.header.access_number == 0x2A
    assert to_measurements(telegram) == [Measurement("meter_status", 4)]


def test_msb_first_variable_data() -> None:
    # CI 0x76: multi-byte fields most significant byte first
    header = bytes.fromhex("92 75 22 44 23 24 29 07 2A 00 00 00")
    telegram = decode_user_data(0x76, header + bytes.fromhex("04 13 00 00 30 39"))
    assert telegram.header is not None
    assert (telegram.header.id, telegram.header.manufacturer) == ("92752244", "HYD")
    assert [(r.name, r.value, r.unit) for r in telegram.records] == [("volume", 12.345, "m3")]


@pytest.mark.parametrize(("code", "word"), [(0x04, "heat"), (0x16, "cold_water"), (0x7A, None)])
def test_medium_words(code: int, word: str | None) -> None:
    header = bytearray(HEADER)
    header[7] = code
    telegram = decode_user_data(0x72, bytes(header))
    assert telegram.header is not None
    assert telegram.header.medium == (word or f"medium_0x{code:02x}")


@pytest.mark.parametrize("ci", [0x51, 0x7F, 0xA0])
def test_unknown_ci_is_a_decode_error(ci: int) -> None:
    with pytest.raises(DecodeError, match="CI"):
        decode_user_data(ci, HEADER)


def test_a_request_frame_is_not_a_telegram() -> None:
    with pytest.raises(DecodeError, match="RSP_UD"):
        decode_frame(parse_frame(bytes.fromhex("68 04 04 68 53 FE 51 01 A3 16")))


# --------------------------------------------------------------------------- data types


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([(0x01, 1), (0x02, 2), (0x03, 3), (0x04, 4), (0x06, 6), (0x07, 8)]), st.data()
)
def test_signed_integers(field: tuple[int, int], data: st.DataObject) -> None:
    dif, size = field
    value = data.draw(st.integers(-(2 ** (8 * size - 1)), 2 ** (8 * size - 1) - 1))
    raw = value.to_bytes(size, "little", signed=True)
    # VIF 0x16: volume, 10^0 m3
    assert one(f"{dif:02x} 16 {raw.hex()}") == ("volume", value, "m3")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([(0x09, 2), (0x0A, 4), (0x0B, 6), (0x0C, 8), (0x0E, 12)]), st.data())
def test_bcd(field: tuple[int, int], data: st.DataObject) -> None:
    dif, digits = field
    negative = data.draw(st.booleans())
    magnitude = data.draw(st.integers(0, 10 ** (digits - 1 if negative else digits) - 1))
    text = f"{magnitude:0{digits}d}"
    if negative:
        text = "F" + text[1:]  # EN 13757-3: a top nibble F marks a negative BCD number
    raw = bytes.fromhex(text)[::-1]
    assert one(f"{dif:02x} 16 {raw.hex()}") == (
        "volume",
        -magnitude if negative else magnitude,
        "m3",
    )


def test_bcd_with_hex_digits_is_kept_without_value() -> None:
    (record,) = records("0C 13 AA 00 00 00").records
    assert record.value is None
    assert record.problem is not None and "BCD" in record.problem
    assert to_measurements(records("0C 13 AA 00 00 00")) == [Measurement("meter_status", 0)]


@settings(max_examples=200, deadline=None)
@given(st.floats(width=32, allow_nan=False))
def test_real32(value: float) -> None:
    raw = struct.pack("<f", value)
    # VIF 0x2B: power 10^0 W; the value as its shortest decimal that reads back as the float32
    assert one(f"05 2B {raw.hex()}") == ("power", shortest_float32(value), "W")


def test_real32_nan_has_no_value() -> None:
    (record,) = records("05 2B " + struct.pack("<f", math.nan).hex()).records
    assert record.value is None


def test_variable_length_text_bcd_and_binary() -> None:
    # LVAR 0x06: 6 ASCII chars, last character first; FD 0B parameter set identification
    assert one("0D FD 0B 06 35 33 32 44 56 52") == ("parameter_set_id", "RVD235", None)
    # LVAR 0xC2: 4 BCD digits; 0xD2 negative; 0xE3: 3-byte binary
    assert one("0D 16 C2 34 12") == ("volume", 1234, "m3")
    assert one("0D 16 D2 34 12") == ("volume", -1234, "m3")
    assert one("0D 16 E3 01 02 03") == ("volume", 0x030201, "m3")


def test_variable_length_running_past_the_end() -> None:
    with pytest.raises(DecodeError, match="runs past the end"):
        records("0D 16 08 41 42")


@pytest.mark.parametrize(
    ("hex_record", "expected"),
    [
        # type G: day 31 | year bits 2-0 (101) << 5, month 12 | year bits 6-3 (0001) << 4
        ("02 6C BF 1C", ("date", "2013-12-31", None)),
        # type F: 11:11 on 2014-03-13
        ("04 6D 0B 0B CD 13", ("datetime", "2014-03-13T11:11:00", None)),
        # type I: 2014-03-13 11:11:42
        ("06 6D 2A 0B 0B CD 13 00", ("datetime", "2014-03-13T11:11:42", None)),
        # type J: 23:59:01
        ("03 6D 01 3B 17", ("datetime", "23:59:01", None)),
    ],
)
def test_dates(hex_record: str, expected: tuple[str, str, None]) -> None:
    assert one(hex_record) == expected


@pytest.mark.parametrize("hex_record", ["02 6C 00 00", "04 6D 8B 0B 6D 13", "04 6D 0B 0B 00 00"])
def test_invalid_dates_have_no_value(hex_record: str) -> None:
    (record,) = records(hex_record).records
    assert record.value is None and record.problem is not None


# --------------------------------------------------------------------------- VIF tables


@pytest.mark.parametrize(
    ("hex_record", "expected"),
    [
        ("04 03 E8 03 00 00", ("energy", 1000, "Wh")),  # 0x03: Wh
        ("04 06 01 00 00 00", ("energy", 1000, "Wh")),  # 0x06: kWh
        ("04 0E 05 00 00 00", ("energy", 5000000, "J")),  # 0x0E: MJ
        ("04 13 39 30 00 00", ("volume", 12.345, "m3")),  # 0x13: litres
        ("04 1B 02 00 00 00", ("mass", 2, "kg")),
        ("04 22 02 00 00 00", ("on_time", 2, "h")),
        ("04 26 02 00 00 00", ("operating_time", 2, "h")),
        ("04 2E 02 00 00 00", ("power", 2000, "W")),  # kW
        ("04 33 24 00 00 00", ("power", 10.0, "W")),  # 36 kJ/h
        ("04 3B 10 00 00 00", ("volume_flow", 0.016, "m3/h")),  # l/h
        ("04 43 10 00 00 00", ("volume_flow", 0.0016, "m3/min")),
        ("04 53 10 00 00 00", ("mass_flow", 16, "kg/h")),
        ("02 59 39 30", ("flow_temperature", 123.45, "Cel")),
        ("02 5D 39 30", ("return_temperature", 123.45, "Cel")),
        ("02 61 39 30", ("temperature_difference", 123.45, "K")),
        ("02 65 39 30", ("external_temperature", 123.45, "Cel")),
        ("02 68 E8 03", ("pressure", 1.0, "bar")),
        ("02 6E 05 00", ("hca", 5, "count")),
        ("02 71 05 00", ("averaging_duration", 5, "min")),
        ("0C 78 44 22 75 92", ("fabrication_number", 92752244, None)),
        # FD extension table
        ("04 FD 17 04 00 00 00", ("error_flags", 4, "count")),
        ("02 FD 48 B6 08", ("voltage", 223.0, "V")),  # 10^-1 V
        ("02 FD 59 E8 03", ("current", 1.0, "A")),  # mA
        ("02 FD 0E 03 00", ("firmware_version", 3, None)),
        ("02 FD 6D 64 00", ("battery_operating_time", 100, "d")),
        # FB extension table
        ("02 FB 01 05 00", ("energy", 5000, "kWh")),  # 10^0 MWh
        ("02 FB 10 05 00", ("volume", 500, "m3")),
        ("02 FB 5B 32 00", ("flow_temperature", 10.0, "Cel")),  # 50 °F
    ],
)
def test_vif_tables(hex_record: str, expected: tuple[str, object, str | None]) -> None:
    name, value, unit = one(hex_record)
    assert (name, unit) == (expected[0], expected[2])
    assert value == pytest.approx(expected[1])


@pytest.mark.parametrize(
    ("hex_record", "name"),
    [
        ("02 6F 05 00", "vif_6f"),  # reserved primary VIF
        ("02 FD 3B 05 00", "vif_fd_3b"),  # reserved FD entry
        ("02 FB 40 05 00", "vif_fb_40"),  # reserved FB entry
        ("02 7F 05 00", "manufacturer_specific"),
        ("02 FF 80 01 05 00", "manufacturer_specific"),  # with manufacturer VIFEs
    ],
)
def test_unknown_vifs_are_kept_with_a_generic_name(hex_record: str, name: str) -> None:
    assert one(hex_record)[:2] == (name, 5)


def test_plain_text_vif() -> None:
    # VIF FC: length 3, "%RH" reversed, VIFE 74 = multiplicative factor 10^-2
    assert one("02 FC 03 48 52 25 74 D4 11") == ("relative_humidity", 45.64, "%RH")
    assert one("02 7C 03 67 6B 62 05 00") == ("text_bkg", 5, None)


def test_combinable_vifes() -> None:
    # 0x3B forward flow, 0x3C backward, 0x7D ×1000, 0x50 duration of limit exceed (s)
    assert one("04 86 3B 17 00 00 00") == ("energy_forward", 23000, "Wh")
    assert one("04 86 3C D1 01 00 00") == ("energy_backward", 465000, "Wh")
    assert one("02 96 7D 05 00") == ("volume", 5000, "m3")
    assert one("04 BE 50 10 00 00 00") == ("volume_flow_lower_limit_first_duration", 16, "s")
    # date of last end: the value becomes a type F date
    assert one("04 AD 6F 0B 0B CD 13") == ("power_last_end", "2014-03-13T11:11:00", None)


def test_record_error_vife_keeps_the_record_without_value() -> None:
    # VIFE 0x15: "no data available"
    (record,) = records("04 96 15 00 00 00 00").records
    assert (record.name, record.value) == ("volume", None)
    assert record.problem is not None and "no data available" in record.problem
    assert one("04 96 00 05 00 00 00") == ("volume", 5, "m3")  # error code 0: none


def test_too_many_vifes_and_difes() -> None:
    with pytest.raises(DecodeError, match="VIFEs"):
        records("04 96" + " 80" * 10 + " 00 00 00 00 00")
    with pytest.raises(DecodeError, match="DIFEs"):
        records("84" + " 80" * 10 + " 00 13 00 00 00 00")


# --------------------------------------------------------------------------- names


def test_function_tariff_storage_subunit_suffixes() -> None:
    telegram = records(
        "04 13 01 00 00 00"  # volume
        " 14 13 02 00 00 00"  # maximum
        " 24 13 03 00 00 00"  # minimum
        " 34 13 04 00 00 00"  # value during error state
        " 84 10 13 05 00 00 00"  # DIFE tariff 1
        " 44 13 06 00 00 00"  # storage 1 (DIF bit 6)
        " 84 02 13 07 00 00 00"  # DIFE storage bits 0010, above the DIF's bit: 4
        " 84 40 13 08 00 00 00"  # DIFE subunit 1
        " C4 C0 51 13 09 00 00 00"  # two DIFEs, see below
        " 04 13 0A 00 00 00"  # repeated name
    )
    names = [r.name for r in telegram.records]
    # last-but-one: DIF C4 (storage bit 1), DIFE C0 (subunit 1, more), DIFE 51 (tariff 1<<2,
    # storage 1<<5, subunit 1<<1): storage 1 + 32 = 33, tariff 4, subunit 3
    assert names == [
        "volume",
        "volume_max",
        "volume_min",
        "volume_err",
        "volume_t1",
        "volume_s1",
        "volume_s4",
        "volume_u1",
        "volume_t4_s33_u3",
        "volume_2",
    ]


def test_manufacturer_data_and_more_records_follow() -> None:
    telegram = records("04 13 01 00 00 00 1F 01 02 03")
    assert telegram.more_records_follow
    assert telegram.manufacturer_data == b"\x01\x02\x03"
    telegram = records("2F 2F 04 13 01 00 00 00 0F")
    assert not telegram.more_records_follow
    assert [r.name for r in telegram.records] == ["volume"]


def test_combine_a_multi_telegram_readout() -> None:
    first = records("04 13 01 00 00 00 1F")
    second = records("04 13 02 00 00 00 44 13 03 00 00 00", status=0x10)
    combined = combine([first, second])
    assert [(r.name, r.value) for r in combined.records] == [
        ("volume", 0.001),
        ("volume_2", 0.002),
        ("volume_s1", 0.003),
    ]
    assert not combined.more_records_follow
    assert combined.header is not None and combined.header.status == 0x10


def test_keep_filters_measurements() -> None:
    telegram = records("04 13 01 00 00 00 02 59 39 30")
    kept = to_measurements(telegram, keep=frozenset({"flow_temperature"}))
    assert [m.name for m in kept] == ["meter_status", "flow_temperature"]


# --------------------------------------------------------------------------- properties

REAL = [bytes.fromhex(p.read_text()) for p in sorted(FRAMES.glob("*.hex"))]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_random_records_give_a_telegram_or_decode_error(data: bytes) -> None:
    try:
        telegram = decode_user_data(0x72, HEADER + data)
    except DecodeError:
        return
    to_measurements(telegram)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(range(256)), st.binary(max_size=80))
def test_random_user_data_under_any_ci(ci: int, data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_user_data(ci, data)


def _with_checksum(frame: bytearray) -> bytes:
    length = frame[1]
    frame[-2] = sum(frame[4 : 4 + length]) & 0xFF
    return bytes(frame)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(REAL), st.data())
def test_corrupted_real_frames_give_a_telegram_or_decode_error(
    frame: bytes, data: st.DataObject
) -> None:
    corrupt = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(7, len(frame) - 3))
        corrupt[index] = data.draw(st.integers(0, 255))
    try:
        telegram = decode_frame(parse_frame(_with_checksum(corrupt)))
    except DecodeError:
        return
    measurements = to_measurements(telegram)
    assert len({m.name for m in measurements}) == len(measurements)


def _every_vib() -> list[str]:
    primary = [f"{code:02x}" for code in range(0x7B)] + ["7e"]
    extended = [f"{table} {code:02x}" for table in ("fb", "fd") for code in range(0x80)]
    return primary + extended


@pytest.mark.parametrize("vib", _every_vib())
def test_every_vif_gives_a_unit_the_agent_knows(vib: str) -> None:
    # int32 data under every VIF of the primary, FB and FD tables
    (record,) = records(f"04 {vib} 01 00 00 00").records
    assert record.unit is None or record.unit in CONVERSIONS
    assert record.name.replace("_", "").isalnum() and record.name.islower()
