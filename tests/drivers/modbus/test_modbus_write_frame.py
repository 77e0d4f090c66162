"""Writes, sans-I/O: the request PDUs (by hand from the spec), their TCP and RTU
framing, the echo checks, the value encoder and the write planner's refusals."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.api import DecodeError, WriteRefused, shortest_float32
from citygate.drivers.modbus import frame as tcp
from citygate.drivers.modbus.decode import (
    BYTE_ORDERS,
    ByteOrder,
    DataType,
    RegisterSpec,
    decode_value,
    encode_value,
    raw_range,
)
from citygate.drivers.modbus.pdu import (
    ExceptionReply,
    WriteReply,
    WriteRequest,
    parse_write_reply,
)
from citygate.drivers.modbus.rtu import (
    BadReply,
    RtuWriteReplyFramer,
    encode_write_request,
    rtu_frame,
)
from citygate.drivers.modbus.write import plan_write, read_back

citygate_sim = pytest.importorskip("citygate_sim.modbus")


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# ------------------------------------------------------------------ PDUs


# Modbus Application Protocol V1.1b3, 6.5, 6.6, 6.11, 6.12 (0-based addresses).
@pytest.mark.parametrize(
    ("write", "pdu"),
    [
        (WriteRequest.coils(172, [True]), "05 00AC FF00"),
        (WriteRequest.coils(172, [False]), "05 00AC 0000"),
        (WriteRequest.registers(1, [3]), "06 0001 0003"),
        (WriteRequest.coils(19, [bool(0x1CD >> i & 1) for i in range(10)]), "0F 0013 000A 02 CD01"),
        (WriteRequest.registers(1, [0x000A, 0x0102]), "10 0001 0002 04 000A 0102"),
    ],
    ids=["6.5 coil on", "coil off", "6.6 register", "6.11 coils", "6.12 registers"],
)
def test_request_pdus_follow_the_spec(write: WriteRequest, pdu: str) -> None:
    assert write.pdu() == h(pdu)
    echo = h(pdu)[:5]
    assert write.echo == echo
    assert parse_write_reply(write, echo) == WriteReply(write.function, write.address)


@pytest.mark.parametrize(
    ("function", "address", "values"),
    [
        (0x03, 0, (1,)),  # a read
        (0x05, 0, (2,)),  # a coil is 0 or 1
        (0x05, 0, (1, 1)),  # FC 05 writes one
        (0x06, 0, (0x10000,)),
        (0x10, 0, ()),
        (0x10, 0, (0,) * 124),
        (0x0F, 0, (0,) * 1969),
        (0x10, 0xFFFF, (0, 0)),  # past the address space
    ],
)
def test_requests_out_of_range_are_refused(
    function: int, address: int, values: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError, match=r"not a write|writes|out of range"):
        WriteRequest(function, address, values)


REQUEST = WriteRequest.registers(0x03E8, [0x1234, 0x5678])


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("", "empty reply"),
        ("10 03E8 0003", "does not echo the request: quantity 3, expected 2"),
        ("10 03E9 0002", "address 0x03E9, expected 0x03E8"),
        ("10 03E8 00", "write reply of 4 bytes, expected 5"),
        ("10 03E8 0002 00", "write reply of 6 bytes, expected 5"),
        ("06 03E8 1234", "function code 6, expected 16"),
        ("90", "exception reply of 1 bytes"),
        ("90 02 00", "exception reply of 3 bytes"),
    ],
)
def test_malformed_write_replies(reply: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        parse_write_reply(REQUEST, h(reply))


def test_a_single_write_reply_must_echo_the_value() -> None:
    request = WriteRequest.registers(7, [0x00FF])
    with pytest.raises(DecodeError, match="value 0x00FE, expected 0x00FF"):
        parse_write_reply(request, h("06 0007 00FE"))
    coil = WriteRequest.coils(7, [True])
    with pytest.raises(DecodeError, match="value 0x0000, expected 0xFF00"):
        parse_write_reply(coil, h("05 0007 0000"))
    assert parse_write_reply(coil, h("85 02")) == ExceptionReply(2)


@given(
    st.one_of(
        st.builds(
            WriteRequest.registers,
            st.integers(0, 0xFFFF - 123),
            st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=123),
        ),
        st.builds(
            WriteRequest.coils,
            st.integers(0, 0xFFFF - 1968),
            st.lists(st.booleans(), min_size=1, max_size=1968),
        ),
    ),
    st.integers(0, 0xFFFF),
    st.integers(1, 247),
)
def test_round_trip_through_the_simulator_framing(
    request: WriteRequest, transaction_id: int, unit: int
) -> None:
    """Both framings of any write: the simulator's decoders read back exactly the
    request's fields, and its echo is accepted."""
    adu = tcp.encode_write_request(tcp.WriteRequestFrame(transaction_id, unit, request))
    decoder = citygate_sim.MbapDecoder()
    decoder.feed(adu)
    event = decoder.next_event()
    assert (event.transaction_id, event.unit_id) == (transaction_id, unit)
    pdu = event.pdu
    function, address, second = struct.unpack_from(">BHH", pdu)
    assert (function, address) == (request.function, request.address)
    if function == 0x06:
        assert (second,) == request.values
    elif function == 0x05:
        assert second == (0xFF00 if request.values[0] else 0)
    elif function == 0x10:
        assert list(struct.unpack_from(f">{second}H", pdu, 6)) == list(request.values)
    else:
        bits = [pdu[6 + i // 8] >> (i % 8) & 1 for i in range(second)]
        assert bits == list(request.values)
    assert second == (len(request.values) if function in (0x0F, 0x10) else second)
    # RTU: the same PDU behind the unit id, with a CRC the simulator accepts
    ((got_unit, got_pdu),) = citygate_sim.RtuRequestDecoder().feed(
        encode_write_request(unit, request)
    )
    assert (got_unit, got_pdu) == (unit, pdu)
    echo = tcp.MbapFrame(transaction_id, unit, pdu[:5])
    reply = tcp.parse_write_reply(echo, tcp.WriteRequestFrame(transaction_id, unit, request))
    assert reply == WriteReply(request.function, request.address)


def test_tcp_write_reply_from_another_unit() -> None:
    request = tcp.WriteRequestFrame(9, 3, WriteRequest.registers(1, [3]))
    assert tcp.encode_write_request(request) == h("0009 0000 0006 03 06 0001 0003")
    with pytest.raises(DecodeError, match="reply from unit 4, expected unit 3"):
        tcp.parse_write_reply(tcp.MbapFrame(9, 4, h("06 0001 0003")), request)


# ------------------------------------------------------------------ RTU reply framer


def rtu_outcome(request: WriteRequest, *chunks: bytes) -> Any:
    framer = RtuWriteReplyFramer(5, request)
    for chunk in chunks:
        if framer.feed(chunk):
            break
    return framer


def test_rtu_echo_reply_byte_by_byte_after_noise() -> None:
    request = WriteRequest.registers(0x0010, [0xABCD])
    reply = rtu_frame(5, request.echo)
    framer = rtu_outcome(request, b"\x00\xff", *[bytes((b,)) for b in reply])
    assert framer.outcome == WriteReply(0x06, 0x0010)
    assert framer.stray_bytes == 2


def test_rtu_write_exception_and_bad_replies() -> None:
    request = WriteRequest.registers(0x0010, [1, 2])
    assert rtu_outcome(request, rtu_frame(5, h("90 02"))).outcome == ExceptionReply(2)
    wrong = rtu_outcome(request, rtu_frame(5, h("10 0010 0003")))
    assert wrong.outcome == BadReply(
        "echo", "write reply does not echo the request: quantity 3, expected 2"
    )
    damaged = bytearray(rtu_frame(5, request.echo))
    damaged[-1] ^= 0xFF
    assert rtu_outcome(request, bytes(damaged)).outcome == BadReply("crc", "CRC error in the reply")
    other = rtu_outcome(request, rtu_frame(6, request.echo))
    assert other.outcome is None
    assert other.failure() == ("wrong_unit", "reply from unit 6, expected unit 5")
    short = rtu_outcome(request, rtu_frame(5, request.echo)[:6])
    assert short.outcome is None
    assert short.failure() == ("truncated", "truncated reply (6 of 8 bytes)")


# ------------------------------------------------------------------ values

NUMERIC: list[DataType] = [
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64",
]  # fmt: skip


@pytest.mark.parametrize("data_type", NUMERIC)
@pytest.mark.parametrize("order", BYTE_ORDERS)
def test_encode_matches_the_simulator(data_type: DataType, order: ByteOrder) -> None:
    """The words of the typed meter's value, an independent encoding."""
    value = citygate_sim.TYPED_VALUES[citygate_sim.ValueType(data_type)]
    wire = citygate_sim.encode_value(
        value, citygate_sim.ValueType(data_type), citygate_sim.WordOrder(order)
    )
    words = list(struct.unpack(f">{len(wire) // 2}H", wire))
    assert encode_value(value, data_type, order) == words


@given(st.data())
def test_encode_decode_round_trip(data: st.DataObject) -> None:
    data_type = data.draw(st.sampled_from(NUMERIC))
    order = data.draw(st.sampled_from(BYTE_ORDERS))
    limits = raw_range(data_type)
    raw: float | int
    if limits is not None:
        raw = data.draw(st.integers(*limits))
    else:
        raw = data.draw(st.floats(allow_nan=False, width=32 if data_type == "float32" else 64))
    expected = shortest_float32(raw) if data_type == "float32" else raw  # as decoded
    assert decode_value(encode_value(raw, data_type, order), data_type, order) == expected


@pytest.mark.parametrize(
    ("raw", "data_type"),
    [(32768, "int16"), (-1, "uint16"), (2**64, "uint64"), (1.5, "int32"), (1e39, "float32")],
)
def test_encode_refuses_what_the_type_cannot_hold(raw: float, data_type: DataType) -> None:
    with pytest.raises(ValueError, match=r"range|whole numbers"):
        encode_value(raw, data_type)


# ------------------------------------------------------------------ planning a write


def spec(**fields: Any) -> RegisterSpec:
    defaults: dict[str, Any] = {"name": "x", "address": 0x10, "writable": True}
    if fields.get("type", "uint16") != "bool":
        defaults |= {"minimum": -1e30, "maximum": 1e30}
    return RegisterSpec(**(defaults | fields))


@pytest.mark.parametrize(
    ("register", "value", "words"),
    [
        (spec(type="int16", scale=0.1, unit="Cel"), 23.4, [234]),  # 233.99999999999997
        (spec(type="int16", scale=0.1), -3.3, [0x10000 - 33]),
        (spec(type="uint32", scale=10.0, offset=5.0, order="CDAB"), 70005.0, [7000, 0]),
        (spec(type="uint64"), 2**64 - 1, [0xFFFF] * 4),  # exact: no float on the way
        (spec(type="float32", scale=0.5), 1.0, [0x4000, 0]),
        (spec(type="bool", table="holding"), True, [1]),
    ],
)
def test_plan_write_undoes_scale_and_offset(
    register: RegisterSpec, value: float, words: list[int]
) -> None:
    got, request = plan_write([register], "x", value)
    assert got is register
    assert request == WriteRequest.registers(0x10, words)
    assert request.function == (0x06 if len(words) == 1 else 0x10)


def test_plan_write_coil() -> None:
    _, request = plan_write([spec(table="coil", type="bool")], "x", False)
    assert request.pdu() == h("05 0010 0000")


@pytest.mark.parametrize(
    ("register", "value", "code", "message"),
    [
        (spec(writable=False), 1, "forbidden", 'register "x" is not writable'),
        (spec(name="y"), 1, "forbidden", 'no register named "x"'),
        (spec(minimum=5.0, maximum=30.0, unit="Cel"), 4, "out_of_range", "4 Cel is outside"),
        (spec(minimum=5.0, maximum=30.0), 30.5, "out_of_range", "(5–30)"),
        (spec(type="int16"), 40000, "out_of_range", "int16: -32768…32767"),
        (spec(type="uint16", scale=0.01), 700, "out_of_range", "raw value 70000"),
        (spec(type="uint64", maximum=None), 2**64, "out_of_range", "outside the range"),
        (spec(type="int16", scale=1e-300), 1e10, "out_of_range", "overflows"),
        (
            spec(type="int64", scale=3.0, minimum=None, maximum=None),
            10**400,
            "out_of_range",
            "overflows",
        ),
        (
            spec(type="int64", minimum=None, maximum=None),
            10**400,
            "out_of_range",
            "0… gives raw value",
        ),
        (spec(type="float32", maximum=None), 1e39, "out_of_range", "does not fit"),
        (spec(), True, "bad_request", "takes a number, not true"),
        (spec(), "1", "bad_request", "takes a number"),
        (spec(type="float64"), float("nan"), "bad_request", "finite"),
        (spec(type="int16", scale=0.1), 23.45, "bad_request", "no whole step"),
        (spec(type="uint16"), 1.5, "bad_request", "no whole step"),
        (spec(table="coil", type="bool"), 1, "bad_request", "takes true or false, not 1"),
    ],
)
def test_plan_write_refusals(register: RegisterSpec, value: Any, code: str, message: str) -> None:
    with pytest.raises(WriteRefused) as caught:
        plan_write([register], "x", value)
    assert caught.value.code == code
    assert message in caught.value.message
    assert str(caught.value) == caught.value.message
    assert len(caught.value.message) < 200  # a hostile value is not repeated in full


def test_write_refused_knows_its_codes() -> None:
    with pytest.raises(ValueError, match="unknown WriteRefused code"):
        WriteRefused("nope", "x")


def test_read_back_decodes_as_a_poll_does() -> None:
    register = spec(type="int16", scale=0.1, unit="kW")
    assert read_back(register, [234]) == pytest.approx(23400.0)  # canonical W
    assert read_back(spec(table="coil", type="bool"), [True]) is True
