"""The byte-order assistant: the plausible reading stands out."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.api import shortest_float32
from citygate.drivers.modbus.assistant import (
    ASSISTANT_TYPES,
    assistant_json,
    format_assistant,
    is_plausible,
)


def decodings(words: list[int], address: int = 0) -> dict[tuple[str, int, str], dict[str, object]]:
    report = assistant_json(words, address)
    return {
        (entry["type"], entry["address"], order): found
        for entry in report["decodings"]
        for order, found in entry["orders"].items()
    }


def test_the_meter_voltage_is_found_under_its_order() -> None:
    # 230.2 V (0x43663334) as a CDAB meter sends it, at input register 0x0048
    words = [0x3334, 0x4366]
    found = decodings(words, 0x48)
    assert found[("float32", 0x48, "CDAB")] == {
        "value": shortest_float32(struct.unpack(">f", bytes.fromhex("43663334"))[0]),
        "text": "230.2",
        "plausible": True,
    }
    assert found[("float32", 0x48, "ABCD")]["text"] == "4.197081e-08"
    text = format_assistant(words, 0x48)
    assert "0x0048   0x3334    13108" in text
    assert "230.2" in text


def test_implausible_floats_are_marked() -> None:
    words = [0x7FC0, 0x0000, 0x0000, 0x0001]  # NaN, then a denormal
    found = decodings(words)
    nan = found[("float32", 0, "ABCD")]
    assert nan == {"value": None, "text": "nan", "plausible": False}
    assert found[("float32", 2, "ABCD")]["plausible"] is False
    assert found[("int32", 2, "ABCD")] == {"value": 1, "text": "1", "plausible": True}
    assert "(nan)" in format_assistant(words, 0)


def test_every_type_appears_at_every_start_that_fits() -> None:
    found = decodings([1, 2, 3, 4, 5])
    starts = {(t, a) for t, a, _ in found}
    assert ("int16", 4) in starts
    assert ("float32", 3) in starts
    assert ("float32", 4) not in starts
    assert ("float64", 1) in starts
    assert ("float64", 2) not in starts
    assert ("int48", 2) in starts
    assert ("int48", 3) not in starts
    assert {t for t, _ in starts} == {*ASSISTANT_TYPES, "string"}
    assert {a for t, a in starts if t == "string"} == {0}  # once, over every register
    assert {o for _, _, o in found} == {"ABCD", "CDAB", "BADC", "DCBA"}


def test_a_48_bit_counter_is_shown_under_every_order() -> None:
    # 0x0123456789AB as a meter sending its low register first (CDAB)
    found = decodings([0x89AB, 0x4567, 0x0123], 0x10)
    assert found[("uint48", 0x10, "CDAB")]["value"] == 0x0123456789AB
    assert found[("int48", 0x10, "DCBA")]["value"] == int.from_bytes(
        bytes.fromhex("23016745AB89"), "big", signed=True
    )
    assert "1250999896491" in format_assistant([0x89AB, 0x4567, 0x0123], 0x10)


def test_a_text_is_shown_under_every_order_and_garbage_is_marked() -> None:
    words = [0x5344, 0x4D36, 0x3330, 0x0000]  # "SDM630" and a NUL register
    found = decodings(words, 0xFC00)
    assert found[("string", 0xFC00, "ABCD")] == {
        "value": "SDM630",
        "text": '"SDM630"',
        "plausible": True,
    }
    assert found[("string", 0xFC00, "BADC")]["value"] == "DS6M03"
    # CDAB and DCBA put the NULs first: not a text, shown escaped in parentheses
    assert found[("string", 0xFC00, "CDAB")] == {
        "value": None,
        "text": '"\\x00\\x0030M6SD"',
        "plausible": False,
    }
    text = format_assistant(words, 0xFC00)
    assert '"SDM630"' in text
    assert '("\\x00\\x00036MDS")' in text


def test_plausibility_rule() -> None:
    assert is_plausible(0.0)
    assert is_plausible(-230.2)
    assert is_plausible(1e12)
    assert not is_plausible(1.1e12)
    assert not is_plausible(float("inf"))
    assert not is_plausible(1e-30)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="0xFFFF"):
        assistant_json([0x10000], 0)
    with pytest.raises(ValueError, match="addresses"):
        assistant_json([1, 2], 0xFFFF)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 0xFFFF), max_size=10), st.integers(0, 100))
def test_report_is_strict_json_for_any_words(words: list[int], address: int) -> None:
    json.dumps(assistant_json(words, address), allow_nan=False)
    assert format_assistant(words, address).endswith("\n")
