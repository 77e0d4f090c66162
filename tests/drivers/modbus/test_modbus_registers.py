"""48-bit integers and strings: decoding under every order, the config checks, and
identity registers (serial number, model, firmware) read once per connection.

Expected words are built here by hand from the order definitions (drivers/modbus
README: CDAB reverses the registers, BADC swaps the bytes within each, DCBA both),
never through the decoder's layouts.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.api import (
    ConfigIssue,
    DecodeError,
    DeviceContext,
    DriverConfigError,
    Measurement,
)
from citygate.drivers.modbus.config import configure
from citygate.drivers.modbus.decode import (
    BYTE_ORDERS,
    BlockDecoder,
    ByteOrder,
    DataType,
    RegisterSpec,
    decode_value,
    encode_value,
    raw_range,
)
from citygate.drivers.modbus.driver import ModbusTcpDriver, factory
from citygate.drivers.modbus.profile import load_profile
from citygate.normalise import Normaliser

citygate_sim = pytest.importorskip("citygate_sim.modbus")

HOST = "127.0.0.1"
TYPED, IEM, STRICT = 3, 4, 5


def arrange(data: bytes, order: str) -> list[int]:
    """The registers a device sends for big-endian ``data`` (or a text) in ``order``."""
    registers = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order == "CDAB":
        registers = registers[::-1]
    elif order == "BADC":
        registers = [register[::-1] for register in registers]
    elif order == "DCBA":
        registers = [register[::-1] for register in registers[::-1]]
    return [int.from_bytes(register, "big") for register in registers]


def one(spec: RegisterSpec, words: list[int]) -> Measurement:
    (measurement,) = BlockDecoder(spec.table, spec.address, len(words), [spec]).decode(words)
    return measurement


# ------------------------------------------------------------------ int48 / uint48

INT48_CASES = [
    ("int48", value) for value in (0, 1, -1, -0x123456789ABC, 2**47 - 1, -(2**47), 0x0102030405)
] + [("uint48", value) for value in (0, 1, 0x0123456789AB, 2**48 - 1, 2**47)]


@pytest.mark.parametrize("order", BYTE_ORDERS)
@pytest.mark.parametrize(("data_type", "value"), INT48_CASES)
def test_48_bit_integers_decode_under_every_order(
    data_type: DataType, value: int, order: ByteOrder
) -> None:
    words = arrange(value.to_bytes(6, "big", signed=data_type == "int48"), order)
    spec = RegisterSpec("counter", 0, "holding", data_type, order)
    assert spec.width == 3
    got = one(spec, words).value
    assert got == value
    assert type(got) is int
    assert decode_value(words, data_type, order) == value
    assert encode_value(value, data_type, order) == words


def test_48_bit_ranges_and_scaling() -> None:
    assert raw_range("int48") == (-(2**47), 2**47 - 1)
    assert raw_range("uint48") == (0, 2**48 - 1)
    with pytest.raises(ValueError, match="outside"):
        encode_value(2**48, "uint48")
    with pytest.raises(ValueError, match="outside"):
        encode_value(-(2**47) - 1, "int48")
    # an energy counter in Wh, scaled and converted to kWh like any integer
    spec = RegisterSpec("energy_import", 0, "input", "uint48", "CDAB", 0.1, 0.0, "Wh")
    words = arrange((123_456_789_012).to_bytes(6, "big"), "CDAB")
    got = one(spec, words)
    assert (got.name, got.unit) == ("energy_import", "kWh")
    assert got.value == pytest.approx(12_345_678.9012)


def test_a_block_of_48_bit_values_strings_and_floats_in_mixed_orders() -> None:
    text = b"SDM630\x00\x00"
    words = (
        arrange((-5).to_bytes(6, "big", signed=True), "DCBA")  # 0..2
        + arrange(b"\x43\x66\x33\x34", "CDAB")  # 3..4: 230.20001 V (float32)
        + arrange(text, "BADC")  # 5..8
        + arrange((2**48 - 2).to_bytes(6, "big"), "CDAB")  # 9..11
    )
    specs = [
        RegisterSpec("a", 0, "holding", "int48", "DCBA"),
        RegisterSpec("v", 3, "holding", "float32", "CDAB", unit="V"),
        RegisterSpec("name", 5, "holding", "string", "BADC", count=4),
        RegisterSpec("b", 9, "holding", "uint48", "CDAB"),
        RegisterSpec("low", 10, "holding", "uint16"),  # overlaps b
    ]
    got = BlockDecoder("holding", 0, 12, specs).decode(words)
    assert got == [
        Measurement("a", -5),
        Measurement("v", 230.20001, "V"),
        Measurement("name", "SDM630"),
        Measurement("b", 2**48 - 2),
        Measurement("low", words[10]),
    ]


# ------------------------------------------------------------------ strings


@pytest.mark.parametrize("order", BYTE_ORDERS)
@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"SDM630\x00\x00", "SDM630"),
        (b"iEM3255 ", "iEM3255"),  # trailing space dropped
        (b"1.4.0\x00 \x00", "1.4.0"),  # NULs and spaces mixed at the end
        (b"CG-SIM v1.0.3\x00\x00\x00", "CG-SIM v1.0.3"),  # odd length: half a register
        (b"  A B~", "  A B~"),  # leading and inner spaces kept
        (b"\x00\x00\x00\x00", ""),  # an empty text
        (b"AB", "AB"),
    ],
)
def test_strings_decode_under_every_order(data: bytes, text: str, order: ByteOrder) -> None:
    words = arrange(data, order)
    spec = RegisterSpec("model", 7, "input", "string", order, count=len(words))
    assert spec.width == len(data) // 2
    assert one(spec, words) == Measurement("model", text)
    assert decode_value(words, "string", order) == text


@pytest.mark.parametrize(
    "data",
    [
        b"SDM\x01630\x00",  # a control character
        b"SDM\x00630 ",  # a NUL inside the text: a wrong count or order, not a text
        b"M\xe9ter\x00",  # not ASCII
        b"\x7f\x00",  # DEL
        b"AB\tC",  # a tab
    ],
)
def test_a_string_that_is_not_printable_ascii_is_invalid_not_garbled(data: bytes) -> None:
    words = arrange(data, "ABCD")
    spec = RegisterSpec("model", 0, "holding", "string", count=len(words))
    value = one(spec, words).value
    assert isinstance(value, float)
    assert math.isnan(value)
    with pytest.raises(DecodeError, match="not printable ASCII"):
        decode_value(words, "string")
    # the runtime drops it and counts it with the other invalid readings
    normalise = Normaliser("meter-1")
    readings = normalise([Measurement("model", value), Measurement("voltage", 230.0, "V")])
    assert [r.name for r in readings] == ["voltage"]
    assert normalise.invalid_readings == 1


def test_a_wrong_order_on_an_odd_length_text_shows_as_invalid() -> None:
    # "ABC" + NUL under BADC read as ABCD: "BA\x00C" is not a text
    words = arrange(b"ABC\x00", "BADC")
    assert decode_value(words, "string", "BADC") == "ABC"
    with pytest.raises(DecodeError):
        decode_value(words, "string", "ABCD")


def test_strings_are_never_written() -> None:
    with pytest.raises(ValueError, match="not written"):
        encode_value(1, "string")
    assert raw_range("string") is None


# ------------------------------------------------------------------ properties

TYPES: list[DataType] = ["int16", "uint48", "int48", "uint32", "float32", "string", "uint64"]


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[RegisterSpec], int]:
    count = draw(st.integers(min_value=3, max_value=30))
    specs: list[RegisterSpec] = []
    for index in range(draw(st.integers(min_value=1, max_value=8))):
        data_type = draw(st.sampled_from(TYPES))
        width = (
            draw(st.integers(1, count))
            if data_type == "string"
            else {"int16": 1, "uint32": 2, "float32": 2, "uint64": 4}.get(data_type, 3)
        )
        if width > count:
            continue
        address = draw(st.integers(0, count - width))
        order = draw(st.sampled_from(BYTE_ORDERS))
        text = data_type == "string"
        specs.append(
            RegisterSpec(
                f"r{index}", address, "holding", data_type, order, count=width if text else None
            )
        )
    return specs, count


@settings(max_examples=300, deadline=None)
@given(data=st.data(), layout=layouts())
def test_random_words_give_the_single_value_decoding_or_nan_for_a_bad_text(
    data: st.DataObject, layout: tuple[list[RegisterSpec], int]
) -> None:
    specs, count = layout
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    got = {m.name: m.value for m in BlockDecoder("holding", 0, count, specs).decode(words)}
    for spec in specs:
        part = words[spec.address : spec.end]
        value = got[spec.name]
        try:
            expected = decode_value(part, spec.type, spec.order)
        except DecodeError:  # only a text that is not printable ASCII
            assert spec.type == "string"
            assert isinstance(value, float)
            assert math.isnan(value)
            continue
        if isinstance(expected, float) and math.isnan(expected):
            assert isinstance(value, float)
            assert math.isnan(value)
        else:
            assert value == expected, spec
            assert type(value) is type(expected)
        if spec.type == "string":
            assert isinstance(value, str)
            assert all(" " <= c <= "~" for c in value)
            assert not value.endswith(" ")


@settings(max_examples=200, deadline=None)
@given(
    data_type=st.sampled_from(["int48", "uint48"]),
    order=st.sampled_from(BYTE_ORDERS),
    raw=st.integers(-(2**47), 2**48 - 1),
)
def test_48_bit_encode_decode_round_trip_or_value_error(
    data_type: DataType, order: ByteOrder, raw: int
) -> None:
    try:
        words = encode_value(raw, data_type, order)
    except ValueError:
        low, high = raw_range(data_type) or (0, 0)
        assert not low <= raw <= high
        return
    assert len(words) == 3
    assert decode_value(words, data_type, order) == raw


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=10))
def test_any_words_give_a_text_or_a_decode_error(words: list[int]) -> None:
    for order in BYTE_ORDERS:
        try:
            text = decode_value(words, "string", order)
        except DecodeError:
            continue
        assert isinstance(text, str)
        assert len(text) <= 2 * len(words)
        assert text.isascii()
        assert text.isprintable()


# ------------------------------------------------------------------ config checks


def context(tmp_path: Path) -> DeviceContext:
    return DeviceContext("meter-1", 10.0, tmp_path)


def issues_of(registers: list[dict[str, Any]], tmp_path: Path) -> list[ConfigIssue]:
    with pytest.raises(DriverConfigError) as caught:
        configure({"host": "h", "registers": registers}, context(tmp_path))
    return caught.value.issues


def test_a_string_and_48_bit_registers_configure(tmp_path: Path) -> None:
    config = configure(
        {
            "host": "h",
            "registers": [
                {"name": "label", "address": 0x10, "type": "string", "count": 8},
                {"name": "energy_import", "address": 0x20, "type": "uint48", "scale": 0.1},
                {"name": "balance", "address": 0x23, "type": "int48", "order": "DCBA"},
            ],
        },
        context(tmp_path),
    )
    assert config.registers == (
        RegisterSpec("label", 0x10, "holding", "string", count=8),
        RegisterSpec("energy_import", 0x20, "holding", "uint48", scale=0.1),
        RegisterSpec("balance", 0x23, "holding", "int48", "DCBA"),
    )
    assert [(r.address, r.count) for r in config.plan.requests] == [(0x10, 22)]


@pytest.mark.parametrize(
    ("register", "path", "message"),
    [
        ({"type": "string"}, (), 'a string register needs "count"'),
        ({"type": "uint16", "count": 2}, ("count",), '"count" is for type "string" only'),
        ({"type": "int48", "count": 3}, ("count",), '"count" is for type "string" only'),
        ({"count": 2}, ("count",), '"count" is for type "string" only'),  # uint16 default
        ({"type": "string", "count": 0}, ("count",), '"count": expected from 1 to 125, found 0'),
        ({"type": "string", "count": 126}, ("count",), "expected from 1 to 125, found 126"),
        ({"type": "string", "count": "4"}, ("count",), "expected an integer, found a string"),
        ({"type": "string", "count": 2, "scale": 0.1}, ("scale",), "a string value takes no scale"),
        ({"type": "string", "count": 2, "offset": 1}, ("offset",), "takes no offset"),
        ({"type": "string", "count": 2, "unit": "V"}, ("unit",), "a string value takes no unit"),
        (
            {"type": "string", "count": 2, "writable": True},
            ("writable",),
            "a string register cannot be written",
        ),
        ({"type": "string", "count": 2, "min": 1.0}, ("min",), "a string value takes no min"),
        ({"type": "string", "count": 2, "table": "coil"}, ("type",), "single bits"),
        ({"type": "string", "count": 4, "address": 0xFFFD}, ("address",), "runs past"),
        ({"type": "int48", "address": 0xFFFE}, ("address",), "runs past"),
        ({"type": "int46"}, ("type",), '"int48"'),
    ],
)
def test_string_and_48_bit_errors_name_their_key(
    tmp_path: Path, register: dict[str, Any], path: tuple[str, ...], message: str
) -> None:
    issues = issues_of(
        [{"name": "ok", "address": 100}, {"name": "x", "address": 0, **register}], tmp_path
    )
    assert issues[0].path == ("registers", 1, *path)
    assert message in issues[0].message


def test_a_string_wider_than_max_registers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DriverConfigError) as caught:
        configure(
            {
                "host": "h",
                "max_registers": 10,
                "registers": [{"name": "x", "address": 0, "type": "string", "count": 20}],
            },
            context(tmp_path),
        )
    (issue,) = caught.value.issues
    assert issue.path == ("max_registers",)
    assert "spans 20 registers" in issue.message


def test_string_errors_in_a_gateway_toml_point_at_file_line_and_column(tmp_path: Path) -> None:
    from citygate.config import ConfigError, load
    from citygate.registry import factories

    path = tmp_path / "gateway.toml"
    path.write_text(
        "[gateway]\n"
        'id = "gw-1"\n'
        f'data_dir = "{tmp_path / "var"}"\n'
        "\n"
        "[mqtt]\n"
        'url = "mqtt://127.0.0.1:1883"\n'
        "\n"
        "[[device]]\n"
        'id = "meter-1"\n'
        'driver = "modbus"\n'
        'host = "10.0.0.5"\n'
        "\n"
        "  [[device.registers]]\n"
        '  name = "label"\n'
        "  address = 16\n"
        '  type = "string"\n'
        "  count = 4\n"
        "  scale = 0.5\n"
        "\n"
        "  [[device.registers]]\n"
        '  name = "model"\n'
        "  address = 32\n"
        '  type = "string"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load(path, factories(), environ={})
    text = str(caught.value)
    assert f"{path}:18:3: " in text, text  # the scale key
    assert "a string value takes no scale" in text
    assert f"{path}:20:" in text, text  # the second register's table
    assert 'a string register needs "count"' in text


def test_string_errors_in_a_profile_point_into_the_profile(tmp_path: Path) -> None:
    profile = tmp_path / "meter.toml"
    profile.write_text(
        '[profile]\nname = "x"\nsource = "test sheet v1"\n\n'
        '[[registers]]\nname = "voltage"\naddress = 0\ntype = "float32"\n\n'
        '[[registers]]\nname = "serial_number"\naddress = 0x10\ntype = "uint32"\ncount = 2\n',
        encoding="utf-8",
    )
    with pytest.raises(DriverConfigError) as caught:
        load_profile(profile)
    (issue,) = caught.value.issues
    assert (issue.file, issue.path) == (profile, ("registers", 1, "count"))


# ------------------------------------------------------------------ identity: config


def test_identity_registers_are_not_sampled(tmp_path: Path) -> None:
    config = configure(
        {"host": "h", "profile": "schneider-iem3255"}, DeviceContext("m", 10.0, tmp_path)
    )
    assert [spec.name for spec in config.identity] == [
        "model",
        "manufacturer",
        "serial_number",
        "firmware_version",
    ]
    sampled = {spec.name for request in config.plan.requests for spec in request.registers}
    assert not sampled & {"model", "manufacturer", "serial_number", "firmware_version"}
    assert sampled == {spec.name for spec in config.registers}
    # model and manufacturer in one read; serial number and firmware far apart
    assert [(r.address, r.count) for r in config.identity_plan.requests] == [
        (0x0031, 40),
        (0x0081, 2),
        (0x0664, 1),
    ]


def test_a_device_of_identity_registers_only_is_refused(tmp_path: Path) -> None:
    (issue,) = issues_of([{"name": "serial_number", "address": 0, "type": "uint32"}], tmp_path)
    assert "no registers to sample" in issue.message


# ------------------------------------------------------------------ identity: driver


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = {
        TYPED: citygate_sim.make_meter("typed"),
        IEM: citygate_sim.make_meter("iem3255", seed=3),
        STRICT: citygate_sim.make_meter("typed", unmapped="exception"),
    }
    async with citygate_sim.ModbusTcpSimulator(meters, host=HOST, port=0) as simulator:
        for meter in meters.values():
            meter.freeze()
        yield simulator


def typed_device(port: int, **more: Any) -> dict[str, Any]:
    text = citygate_sim.typed_address(citygate_sim.ValueType.STRING, citygate_sim.WordOrder.ABCD)
    swapped = citygate_sim.typed_address(citygate_sim.ValueType.STRING, citygate_sim.WordOrder.BADC)
    uint32 = citygate_sim.typed_address(citygate_sim.ValueType.UINT32, citygate_sim.WordOrder.ABCD)
    int48 = citygate_sim.typed_address(citygate_sim.ValueType.INT48, citygate_sim.WordOrder.DCBA)
    uint48 = citygate_sim.typed_address(citygate_sim.ValueType.UINT48, citygate_sim.WordOrder.CDAB)
    count = citygate_sim.TYPED_TEXT_REGISTERS
    return {
        "host": HOST,
        "port": port,
        "unit": TYPED,
        "registers": [
            {"name": "label", "address": text, "type": "string", "count": count},
            {"name": "balance", "address": int48, "type": "int48", "order": "DCBA"},
            {"name": "energy_import", "address": uint48, "type": "uint48", "order": "CDAB",
             "scale": 0.001, "unit": "kWh"},
            {"name": "serial_number", "address": uint32, "type": "uint32"},
            {"name": "firmware_version", "address": swapped, "type": "string", "count": count,
             "order": "BADC"},
        ],
        **more,
    }  # fmt: skip


def make_driver(tmp_path: Path, options: dict[str, Any]) -> ModbusTcpDriver:
    context = DeviceContext("meter-1", 10.0, tmp_path)
    driver = factory.create(factory.configure(options, context), context)
    assert isinstance(driver, ModbusTcpDriver)
    return driver


async def test_strings_48_bit_values_and_identity_from_the_simulator(
    sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="citygate.drivers.modbus.driver")
    driver = make_driver(tmp_path, typed_device(sim.port))
    assert driver.status_facts() == {}
    async with driver:
        plan, identity = driver.config.plan, driver.config.identity_plan
        assert (len(plan.requests), len(identity.requests)) == (2, 2)
        before = sim.requests_by_unit[TYPED]
        first = await driver.poll()
        assert sim.requests_by_unit[TYPED] - before == 4  # the identity reads, then the plan
        second = await driver.poll()
        assert sim.requests_by_unit[TYPED] - before == 6  # identity not read again
    values = citygate_sim.TYPED_VALUES
    expected = [
        Measurement("balance", values[citygate_sim.ValueType.INT48]),
        Measurement("energy_import", values[citygate_sim.ValueType.UINT48] * 0.001, "kWh"),
        Measurement("label", citygate_sim.TYPED_TEXT),
    ]
    assert first == second == expected
    assert driver.status_facts() == {
        "meter": {"serial_number": "3735928559", "firmware_version": citygate_sim.TYPED_TEXT}
    }
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "meter-1: meter serial_number '3735928559', firmware_version 'CG-SIM v1.0.3'"
    ]


async def test_identity_is_read_again_after_the_connection_was_reopened(
    sim: Any, tmp_path: Path
) -> None:
    driver = make_driver(tmp_path, typed_device(sim.port))
    async with driver:
        await driver.poll()
        sim.drop_connections()  # the device (or a TCP gateway) closed the link while idle
        async with asyncio.timeout(5):
            while sim.connection_count:
                await asyncio.sleep(0.005)
        before = sim.requests_by_unit[TYPED]
        await driver.poll()  # reopens the connection: a new meter could be behind it
        assert sim.requests_by_unit[TYPED] - before == 2 + 2  # identity, then the plan
    assert "serial_number" in driver.status_facts()["meter"]


async def test_the_iem3255_profile_reports_its_identity_strings(sim: Any, tmp_path: Path) -> None:
    driver = make_driver(
        tmp_path, {"host": HOST, "port": sim.port, "unit": IEM, "profile": "schneider-iem3255"}
    )
    async with driver:
        readings = await driver.poll()
    names = {m.name for m in readings}
    assert "active_power" in names
    assert not names & {"model", "manufacturer", "serial_number", "firmware_version"}
    meter = sim.meters[IEM]
    assert driver.status_facts() == {
        "meter": {
            "model": "iEM3255",
            "manufacturer": "Schneider Electric",
            "serial_number": str(meter.truth()["serial_number"]),
            "firmware_version": str(meter.truth()["firmware_version"]),
        }
    }


async def test_an_identity_register_the_meter_refuses_loses_only_itself(
    sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="citygate.drivers.modbus.driver")
    options = typed_device(sim.port, unit=STRICT)
    # 0x7000 is unmapped on the typed meter: exception 02; the model is a text that is
    # not printable ASCII (the float64 slot's bytes): invalid, not published garbled
    float64 = citygate_sim.typed_address(
        citygate_sim.ValueType.FLOAT64, citygate_sim.WordOrder.ABCD
    )
    options["registers"] += [
        {"name": "manufacturer", "address": 0x7000, "type": "string", "count": 4},
        {"name": "model", "address": float64, "type": "string", "count": 4},
    ]
    driver = make_driver(tmp_path, options)
    async with driver:
        readings = await driver.poll()
        readings_again = await driver.poll()
    assert [m.name for m in readings] == ["balance", "energy_import", "label"]
    assert readings_again == readings
    assert driver.status_facts()["meter"] == {
        "serial_number": "3735928559",
        "firmware_version": "CG-SIM v1.0.3",
    }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one line for the connection, no traceback
    message = warnings[0].getMessage()
    assert message.startswith("meter-1: identity registers ")
    assert "manufacturer" in message
    assert "model" in message
    assert "exception 2 (illegal data address)" in message
    assert warnings[0].exc_info is None
