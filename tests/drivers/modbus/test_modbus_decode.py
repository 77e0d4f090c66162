"""Decoding register words: every type × order against hand-packed bytes.

The expected words are built here with ``struct`` from the order definitions of
the brief (a register list rearranged by hand), never through the decoder's own
layout tables.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.api import DecodeError, Measurement, shortest_float32
from citygate.drivers.modbus.decode import (
    BYTE_ORDERS,
    REGISTER_WIDTH,
    BlockDecoder,
    ByteOrder,
    DataType,
    RegisterSpec,
    bench_decode,
    decode_value,
)

STRUCT_CODE = {
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
    "int64": "q", "uint64": "Q", "float32": "f", "float64": "d",
}  # fmt: skip

SAMPLES: dict[str, list[int | float]] = {
    "int16": [-12345, 0, 1, -1, 32767, -32768],
    "uint16": [0xCAFE, 0, 65535],
    "int32": [-123456789, 2**31 - 1, -(2**31)],
    "uint32": [0xDEADBEEF, 0, 2**32 - 1],
    "int64": [-1234567890123456789, 2**63 - 1, -(2**63)],
    "uint64": [0x0123456789ABCDEF, 2**64 - 1],
    "float32": [230.1999969482422, -1.5, 123456.0, 0.0],
    "float64": [-1234.5678, 6.02214076e23, 0.0],
}


def wire_words(data_type: str, value: int | float, order: str) -> list[int]:
    """The registers a device sends for ``value`` in ``order`` (the brief's definitions)."""
    big_endian = struct.pack(">" + STRUCT_CODE[data_type], value)
    registers = [big_endian[i : i + 2] for i in range(0, len(big_endian), 2)]
    if len(registers) == 1:
        if order in ("BADC", "DCBA"):
            registers = [registers[0][::-1]]
    elif order == "CDAB":
        registers = registers[::-1]
    elif order == "BADC":
        registers = [register[::-1] for register in registers]
    elif order == "DCBA":
        registers = [register[::-1] for register in registers[::-1]]
    return [int.from_bytes(register, "big") for register in registers]


def one(spec: RegisterSpec, words: list[int]) -> Measurement:
    (measurement,) = BlockDecoder(spec.table, spec.address, len(words), [spec]).decode(words)
    return measurement


CASES = [
    (data_type, order, value)
    for data_type, values in SAMPLES.items()
    for order in BYTE_ORDERS
    for value in values
]


@pytest.mark.parametrize(("data_type", "order", "value"), CASES)
def test_every_type_and_order_decodes_hand_packed_words(
    data_type: DataType, order: ByteOrder, value: float
) -> None:
    words = wire_words(data_type, value, order)
    assert len(words) == REGISTER_WIDTH[data_type]
    measurement = one(RegisterSpec("x", 7, "holding", data_type, order), words)
    # a float32 comes out as its shortest decimal (230.2, not 230.1999969482422)
    expected = shortest_float32(value) if data_type == "float32" else value
    assert measurement.value == expected
    assert type(measurement.value) is (float if data_type.startswith("float") else int)
    assert decode_value(words, data_type, order) == expected


@pytest.mark.parametrize(
    ("order", "words"),
    [
        # libmodbus documentation: 123456.0f = 0x47F12000
        ("ABCD", [0x47F1, 0x2000]),
        ("BADC", [0xF147, 0x0020]),
        ("CDAB", [0x2000, 0x47F1]),
        ("DCBA", [0x0020, 0xF147]),
    ],
)
def test_libmodbus_float_vectors(order: ByteOrder, words: list[int]) -> None:
    assert one(RegisterSpec("x", 0, "input", "float32", order), words).value == 123456.0


@pytest.mark.parametrize(
    ("order", "wire"),
    [("ABCD", "43663334"), ("CDAB", "33344366"), ("BADC", "66433433"), ("DCBA", "34336643")],
)
def test_sdm_voltage_vector_in_every_order(order: ByteOrder, wire: str) -> None:
    # vectors/modbus M1: 230.2 V = 0x43663334, and C.1's worked example per order
    words = list(struct.unpack(">2H", bytes.fromhex(wire)))
    value = one(RegisterSpec("voltage", 0, "input", "float32", order, unit="V"), words).value
    assert value == pytest.approx(230.2, abs=1e-4)


def test_sixteen_bit_orders_only_swap_bytes() -> None:
    expected: dict[ByteOrder, int] = {
        "ABCD": 0x1234, "CDAB": 0x1234, "BADC": 0x3412, "DCBA": 0x3412,
    }  # fmt: skip
    for order, value in expected.items():
        assert one(RegisterSpec("x", 0, "holding", "uint16", order), [0x1234]).value == value


def test_scale_and_offset() -> None:
    # int16 -123 × 0.1 + 5 = -7.3
    measurement = one(RegisterSpec("t", 0, "input", "int16", scale=0.1, offset=5.0), [0xFF85])
    assert repr(measurement.value) == "-7.3"  # in decimal: not -7.300000000000001
    assert isinstance(measurement.value, float)


def test_unit_is_converted_to_the_canonical_unit() -> None:
    kw = one(
        RegisterSpec("p", 0, "input", "float32", unit="kW"), wire_words("float32", 1.5, "ABCD")
    )
    assert kw == Measurement("p", 1500.0, "W")
    wh = one(
        RegisterSpec("e", 0, "input", "uint32", unit="Wh"), wire_words("uint32", 123456, "ABCD")
    )
    assert wh.unit == "kWh"
    assert repr(wh.value) == "123.456"
    # scale, offset and factor together: (raw × 0.01 + 1) kV → V
    kv = one(RegisterSpec("v", 0, "input", "uint16", scale=0.01, offset=1.0, unit="kV"), [2300])
    assert (kv.name, kv.unit) == ("v", "V")
    assert kv.value == 24000.0


def test_decimal_scales_shift_the_digits_the_meter_gave() -> None:
    # A binary multiply by 0.1 or 0.001 leaves noise in the last digits (2301 × 0.1 is
    # 230.10000000000002, 906.6 × 0.001 is 0.9066000000000001); a scale or unit factor that is
    # a power of ten shifts the decimal point instead.
    volts = one(RegisterSpec("v", 0, "input", "uint16", scale=0.1, unit="V"), [2301])
    assert repr(volts.value) == "230.1"
    energy = one(
        RegisterSpec("e", 0, "input", "float32", unit="Wh"), wire_words("float32", 906.6, "ABCD")
    )
    assert (energy.unit, repr(energy.value)) == ("kWh", "0.9066")
    milli = one(RegisterSpec("i", 0, "input", "int16", scale=0.01, unit="mA"), [0xFFFF - 1234 + 1])
    assert (milli.unit, repr(milli.value)) == ("A", "-0.01234")
    # a factor that is no power of ten multiplies as before
    odd = one(RegisterSpec("x", 0, "input", "uint16", scale=2.5), [3])
    assert odd.value == 7.5


@settings(max_examples=400, deadline=None)
@given(
    bits=st.integers(0, 2**32 - 1),
    unit=st.sampled_from(["Wh", "kWh", "MWh", "mA", "kW"]),
)
def test_a_float32_converted_in_decimal_reads_back_as_the_register(bits: int, unit: str) -> None:
    raw = struct.unpack(">f", bits.to_bytes(4, "big"))[0]
    if not math.isfinite(raw):
        return
    words = list(struct.unpack(">2H", bits.to_bytes(4, "big")))
    measurement = one(RegisterSpec("x", 0, "input", "float32", unit=unit), words)
    exponent = {"Wh": -3, "kWh": 0, "MWh": 3, "mA": -3, "kW": 3}[unit]
    value = float(measurement.value)
    # exactly the meter's shortest decimal, shifted
    expected = Decimal(repr(shortest_float32(raw))).scaleb(exponent)
    assert value == float(expected)
    # and a consumer who converts back to the register's unit and type gets the register
    back = float(Decimal(repr(value)).scaleb(-exponent))
    assert struct.unpack(">f", struct.pack(">f", back))[0] == raw


def test_integers_stay_integers_only_without_scaling() -> None:
    plain = one(RegisterSpec("n", 0, "input", "uint32", unit="count"), [0x0001, 0x0000])
    assert plain == Measurement("n", 65536, "count")
    assert type(plain.value) is int
    scaled = one(RegisterSpec("n", 0, "input", "uint16", scale=2.0), [21])
    assert scaled.value == 42.0
    assert type(scaled.value) is float
    converted = one(RegisterSpec("e", 0, "input", "uint16", unit="Wh"), [1000])
    assert type(converted.value) is float
    assert converted.value == 1.0


def test_bool_on_registers_is_non_zero_and_bits_are_bits() -> None:
    flag = RegisterSpec("alarm", 3, "holding", "bool")
    decoder = BlockDecoder("holding", 3, 1, [flag])
    assert decoder.decode([0]) == [Measurement("alarm", False)]
    assert decoder.decode([0x8000]) == [Measurement("alarm", True)]
    coils = BlockDecoder(
        "coil",
        10,
        5,
        [RegisterSpec("pump", 10, "coil", "bool"), RegisterSpec("valve", 14, "coil", "bool")],
    )
    assert coils.decode([True, False, False, False, False]) == [
        Measurement("pump", True),
        Measurement("valve", False),
    ]
    assert coils.decode([0, 0, 0, 0, 1])[1].value is True


def test_non_finite_floats_are_returned_not_filtered() -> None:
    spec = RegisterSpec("x", 0, "input", "float32")
    assert math.isnan(float(one(spec, [0x7FC0, 0x0000]).value))
    assert one(spec, [0x7F80, 0x0000]).value == math.inf
    assert one(spec, [0xFF80, 0x0000]).value == -math.inf


def test_gaps_overlaps_and_mixed_orders_in_one_block() -> None:
    words = [0] * 12
    words[0:2] = wire_words("float32", 1.5, "CDAB")
    words[4:6] = wire_words("int32", -7, "BADC")
    words[6:10] = wire_words("float64", 2.25, "DCBA")
    words[11] = wire_words("int16", -2, "ABCD")[0]
    specs = [
        RegisterSpec("d", 11, "input", "int16"),
        RegisterSpec("a", 0, "input", "float32", "CDAB"),
        RegisterSpec("b", 4, "input", "int32", "BADC"),
        RegisterSpec("c", 6, "input", "float64", "DCBA"),
        RegisterSpec("a_high_word", 1, "input", "uint16"),  # overlaps "a"
    ]
    result = BlockDecoder("input", 0, 12, specs).decode(words)
    assert [m.name for m in result] == ["a", "a_high_word", "b", "c", "d"]
    assert [m.value for m in result] == [1.5, words[1], -7, 2.25, -2]


def test_wrong_reply_length_and_oversized_words_are_decode_errors() -> None:
    decoder = BlockDecoder("input", 0x48, 2, [RegisterSpec("e", 0x48, "input", "float32")])
    with pytest.raises(DecodeError, match=r"input registers 0x0048–0x0049 holds 1 values"):
        decoder.decode([0x4366])
    with pytest.raises(DecodeError, match="not 16 bits"):
        decoder.decode([0x4366, 0x10000])
    with pytest.raises(DecodeError, match="not 16 bits"):
        decoder.decode([-1, 0])


def test_a_register_outside_its_block_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        BlockDecoder("input", 0, 2, [RegisterSpec("x", 1, "input", "float32")])


def test_bench_decode_times_every_value_of_every_round() -> None:
    """The figure is CPU µs per value over ``rounds`` real decodes of ``n_values`` values."""
    import time
    from unittest import mock

    decoded: list[list[Measurement]] = []
    real_decode = BlockDecoder.decode

    def counting(self: BlockDecoder, values: list[int]) -> list[Measurement]:
        measurements = real_decode(self, values)
        decoded.append(measurements)
        return measurements

    rounds, n_values = 50, 10
    with mock.patch.object(BlockDecoder, "decode", counting):
        cpu = time.process_time()
        figure = bench_decode(n_values=n_values, rounds=rounds)
        cpu = time.process_time() - cpu
    assert len(decoded) == rounds  # it ran the rounds asked, each a full block
    assert all(len(measurements) == n_values for measurements in decoded)
    # kW → W: the conversion it claims to include was made (values 0..500 kW)
    assert all(m.unit == "W" and 0 <= m.value <= 500_000 for ms in decoded for m in ms)
    # µs per value: the whole (figure × values) fits in the CPU time the call took, and is
    # not the seconds- or nanoseconds-sized number a wrong unit would give
    assert figure >= 0.01
    assert figure * rounds * n_values / 1e6 <= cpu


# ------------------------------------------------------------------ properties

NUMERIC_TYPES: list[DataType] = [
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64",
]  # fmt: skip


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[RegisterSpec], int]:
    """Random registers (overlaps allowed) in a block of random size."""
    count = draw(st.integers(min_value=4, max_value=40))
    specs: list[RegisterSpec] = []
    for index in range(draw(st.integers(min_value=1, max_value=12))):
        data_type = draw(st.sampled_from([*NUMERIC_TYPES, "bool"]))
        width = REGISTER_WIDTH[data_type]
        address = draw(st.integers(min_value=100, max_value=100 + count - width))
        order = draw(st.sampled_from(BYTE_ORDERS))
        scaled = data_type != "bool" and draw(st.booleans())
        specs.append(
            RegisterSpec(
                f"r{index}",
                address,
                "holding",
                data_type,
                order,
                scale=0.5 if scaled else 1.0,
                unit="kW" if scaled else None,
            )
        )
    return specs, count


def reference(spec: RegisterSpec, words: list[int]) -> float | int | bool:
    """Decode by undoing the order definitions by hand, then struct big-endian."""
    part = words[spec.address - 100 : spec.address - 100 + REGISTER_WIDTH[spec.type]]
    if spec.type == "bool":
        return part[0] != 0
    registers = [word.to_bytes(2, "big") for word in part]
    if len(registers) == 1:
        if spec.order in ("BADC", "DCBA"):
            registers = [registers[0][::-1]]
    elif spec.order == "CDAB":
        registers = registers[::-1]
    elif spec.order == "BADC":
        registers = [register[::-1] for register in registers]
    elif spec.order == "DCBA":
        registers = [register[::-1] for register in registers[::-1]]
    raw: float = struct.unpack(">" + STRUCT_CODE[spec.type], b"".join(registers))[0]
    if spec.type == "float32":
        raw = shortest_float32(raw)
    return raw * 500.0 if spec.scale != 1.0 else raw


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), layout=layouts())
def test_random_layouts_decode_like_the_reference(
    data: st.DataObject, layout: tuple[list[RegisterSpec], int]
) -> None:
    specs, count = layout
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    result = BlockDecoder("holding", 100, count, specs).decode(words)
    by_name = {m.name: m for m in result}
    assert len(by_name) == len(specs)
    for spec in specs:
        assert same(by_name[spec.name].value, reference(spec, words)), spec
        assert by_name[spec.name].unit == ("W" if spec.scale != 1.0 else None)
    assert [m.name for m in result] == [s.name for s in sorted(specs, key=lambda s: s.address)]


@settings(max_examples=300, deadline=None)
@given(
    layout=layouts(),
    words=st.lists(st.integers(min_value=-(2**17), max_value=2**17), max_size=45),
)
def test_any_words_give_measurements_or_decode_error(
    layout: tuple[list[RegisterSpec], int], words: list[int]
) -> None:
    specs, count = layout
    decoder = BlockDecoder("holding", 100, count, specs)
    try:
        result = decoder.decode(words)
    except DecodeError:
        assert len(words) != count or any(not 0 <= w <= 0xFFFF for w in words)
    else:
        assert len(result) == len(specs)
