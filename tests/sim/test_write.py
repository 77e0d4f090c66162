"""Writes to the simulated meters (FC 05, 06, 15, 16), byte strings written by hand
from the Modbus Application Protocol spec (6.5, 6.6, 6.11, 6.12): a written value
reads back, and stays through the meter's later advances; read-only addresses
answer exception 02."""

from __future__ import annotations

import struct

import pytest

from citygate_sim.modbus import (
    TYPED_BASE_ADDRESS,
    RequestHandler,
    Table,
    TypedMeter,
    ValueType,
    WordOrder,
    make_meter,
    typed_address,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_write_single_register_reads_back() -> None:
    handler = RequestHandler({1: TypedMeter()})
    address = typed_address(ValueType.UINT16, WordOrder.ABCD)
    request = h("06") + struct.pack(">HH", address, 0x1234)
    assert handler.handle_request(1, request) == request  # the echo is the request
    assert handler.handle_request(1, h("03") + struct.pack(">HH", address, 1)) == h("03 02 1234")
    assert handler.meters[1].truth()["holding_uint16_abcd"] == 0x1234
    # the input table's copy of the value is another register: unchanged
    assert handler.meters[1].truth()["input_uint16_abcd"] == 0xCAFE


def test_write_multiple_registers_echoes_address_and_quantity() -> None:
    meter = TypedMeter()
    handler = RequestHandler({1: meter})
    address = typed_address(ValueType.FLOAT32, WordOrder.CDAB)
    data = h("0000 4049")  # 3.140625 as float32 0x40490000, low word first
    request = h("10") + struct.pack(">HHB", address, 2, 4) + data
    assert handler.handle_request(1, request) == h("10") + struct.pack(">HH", address, 2)
    assert handler.handle_request(1, h("03") + struct.pack(">HH", address, 2)) == h("03 04") + data
    assert meter.truth()["holding_float32_cdab"] == 3.140625


def test_write_coils_single_and_multiple() -> None:
    meter = TypedMeter()
    handler = RequestHandler({1: meter})
    assert handler.handle_request(1, h("05 0000 FF00")) == h("05 0000 FF00")
    assert handler.handle_request(1, h("05 0013 0000")) == h("05 0013 0000")  # coil 20 was on
    # 6.11: ten coils from 20 (0-based 19): CD 01 = 1011 0011, 01
    assert handler.handle_request(1, h("0F 0013 000A 02 CD01")) == h("0F 0013 000A")
    assert handler.handle_request(1, h("01 0013 000A")) == h("01 02 CD 01")
    assert handler.handle_request(1, h("01 0000 0001")) == h("01 01 01")
    truth = meter.truth()
    assert truth["coil_0"] is True
    assert [truth[f"coil_{19 + i}"] for i in range(10)] == [bool(0x1CD >> i & 1) for i in range(10)]


def test_a_written_value_stays_through_advances() -> None:
    clock = FakeClock()
    meter = make_meter("sdm630", seed=1, clock=clock)
    handler = RequestHandler({1: meter})
    demand_period = struct.pack(">f", 15.0)
    request = h("10 0002 0002 04") + demand_period
    assert handler.handle_request(1, request) == h("10 0002 0002")
    for _ in range(3):
        clock.now += 60.0  # the state advances and the images are encoded again
        assert handler.handle_request(1, h("03 0002 0002")) == h("03 04") + demand_period
    assert meter.truth()["demand_period"] == 15.0
    assert meter.truth()["demand_time"] == 3.0  # the others still move: 180 s in


@pytest.mark.parametrize(
    ("request_pdu", "response_pdu"),
    [
        pytest.param("06 0002 0001", "86 01", id="FC 06: not implemented"),
        pytest.param("05 0000 FF00", "85 01", id="FC 05: no coils"),
        pytest.param("10 0003 0002 04 00000000", "90 02", id="odd address: part of a float"),
        pytest.param("10 0002 0001 02 0000", "90 02", id="one register: part of a float"),
        pytest.param("10 FC00 0002 04 00000001", "90 02", id="the serial number is read-only"),
        pytest.param("10 0004 0002 04 00000000", "90 02", id="reserved setting 0x0004"),
        pytest.param("10 0058 0002 04 00000000", "90 02", id="past the last setting"),
    ],
)
def test_eastron_write_rules(request_pdu: str, response_pdu: str) -> None:
    meter = make_meter("sdm630", seed=1)
    meter.freeze()
    before = meter.truth()
    handler = RequestHandler({1: meter})
    assert handler.handle_request(1, h(request_pdu)) == h(response_pdu)
    assert meter.truth() == before


def test_read_only_ranges_of_the_typed_meter() -> None:
    meter = TypedMeter()
    handler = RequestHandler({1: meter})
    assert meter.writable(Table.HOLDING_REGISTERS) == [(TYPED_BASE_ADDRESS, 1160)]
    assert meter.writable(Table.INPUT_REGISTERS) == []
    assert handler.handle_request(1, h("10 006B 0001 02 0001")) == h("90 02")  # spec example
    assert handler.handle_request(1, h("03 006B 0001")) == h("03 02 022B")  # unchanged
    assert handler.exception_count == 1
