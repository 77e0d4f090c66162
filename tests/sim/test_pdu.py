"""The PDU handler against byte strings written by hand from the Modbus spec."""

from __future__ import annotations

import pytest
from hwsim.modbus import (
    Fault,
    RequestHandler,
    StaticMeter,
    TypedMeter,
    UnknownUnit,
    exception_response,
    make_meter,
)


def typed_handler(unknown_unit: UnknownUnit = "silent") -> RequestHandler:
    return RequestHandler({1: TypedMeter()}, unknown_unit=unknown_unit)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# MODBUS Application Protocol Specification V1.1b3, section 6 (the worked examples).
@pytest.mark.parametrize(
    ("request_pdu", "response_pdu"),
    [
        pytest.param("01 0013 0013", "01 03 CD 6B 05", id="6.1 read coils 20-38"),
        pytest.param("02 00C4 0016", "02 03 AC DB 35", id="6.2 read discrete inputs 197-218"),
        pytest.param("03 006B 0003", "03 06 022B 0000 0064", id="6.3 read registers 108-110"),
        pytest.param("04 0008 0001", "04 02 000A", id="6.4 read input register 9"),
    ],
)
def test_spec_examples(request_pdu: str, response_pdu: str) -> None:
    assert typed_handler().handle_request(1, h(request_pdu)) == h(response_pdu)


@pytest.mark.parametrize(
    ("request_pdu", "response_pdu"),
    [
        pytest.param("05 0000 FF00", "85 01", id="write single coil: not implemented"),
        pytest.param("10 0000 0001 02 0000", "90 01", id="write multiple: not implemented"),
        pytest.param("2B 0E 01 00", "AB 01", id="device identification: not implemented"),
        pytest.param("00", "80 01", id="function code 0"),
        pytest.param("81 0000 0001", "81 01", id="an exception code as function code"),
        pytest.param("03 006B 0000", "83 03", id="quantity 0"),
        pytest.param("03 006B 007E", "83 03", id="quantity 126 registers"),
        pytest.param("04 0000 FFFF", "84 03", id="quantity 65535 registers"),
        pytest.param("01 0000 0000", "81 03", id="quantity 0 bits"),
        pytest.param("01 0000 07D1", "81 03", id="quantity 2001 bits"),
        pytest.param("02 0000 07D0", "82 02", id="2000 bits, most unmapped"),
        pytest.param("03 FFFF 0002", "83 02", id="past the end of the address space"),
        pytest.param("01 FFFF 0002", "81 02", id="bits past the end of the address space"),
        pytest.param("03 006B", "83 03", id="truncated request"),
        pytest.param("03", "83 03", id="function code only"),
        pytest.param("03 006B 0003 00", "83 03", id="one byte too many"),
        pytest.param("03 0078 0001", "83 02", id="unmapped holding register 120"),
        pytest.param("03 0077 0002", "83 02", id="read running into unmapped 120"),
        pytest.param("04 0010 0001", "84 02", id="unmapped input register 16"),
        pytest.param("01 0040 0001", "81 02", id="unmapped coil 64"),
        pytest.param("02 0100 0001", "82 02", id="unmapped discrete input 256"),
    ],
)
def test_exception_responses(request_pdu: str, response_pdu: str) -> None:
    assert typed_handler().handle_request(1, h(request_pdu)) == h(response_pdu)


def test_zero_policy_reads_unmapped_registers_as_zero() -> None:
    handler = RequestHandler({1: TypedMeter(unmapped="zero")})
    assert handler.handle_request(1, h("03 0076 0004")) == h("03 08 0000 0000 0000 0000")
    assert handler.handle_request(1, h("03 006A 0002")) == h("03 04 0000 022B")
    assert handler.handle_request(1, h("01 003E 0004")) == h("01 01 00")


# Eastron's rules: at most 40 parameters (80 registers), whole float parameters only.
@pytest.mark.parametrize(
    ("request_pdu", "response_pdu"),
    [
        pytest.param("04 0001 0002", "84 02", id="odd start: part of a float"),
        pytest.param("04 0000 0001", "84 02", id="odd count: part of a float"),
        pytest.param("04 0000 0052", "84 03", id="82 registers: over 40 parameters"),
        pytest.param("04 002C 0002", "84 02", id="0x002C is not in the map"),
        pytest.param("04 0028 0008", "84 02", id="a read spanning the gap at 0x002C"),
        pytest.param("03 0004 0002", "83 02", id="holding 0x0004 is not in the map"),
        pytest.param("01 0000 0008", "81 01", id="no coils on an SDM"),
        pytest.param("02 0000 0008", "82 01", id="no discrete inputs on an SDM"),
    ],
)
def test_eastron_device_rules(request_pdu: str, response_pdu: str) -> None:
    handler = RequestHandler({1: make_meter("sdm630", seed=1)})
    assert handler.handle_request(1, h(request_pdu)) == h(response_pdu)


def test_eastron_full_blocks_are_answered() -> None:
    meter = make_meter("sdm630", seed=1)
    meter.freeze()
    handler = RequestHandler({1: meter})
    # 18 floats from 0x0000 (Tasmota's high-rate block), then energies 0x0156.. (16 regs)
    response = handler.handle_request(1, h("04 0000 0024"))
    assert response is not None
    assert response[:2] == h("04 48")
    assert len(response) == 2 + 72
    energies = handler.handle_request(1, h("04 0156 0010"))
    assert energies is not None
    assert energies[:2] == h("04 20")
    serial = handler.handle_request(1, h("03 FC00 0002"))
    assert serial is not None
    assert int.from_bytes(serial[2:], "big") == meter.truth()["serial_number"]


def test_unknown_unit_is_silent_by_default() -> None:
    handler = typed_handler()
    assert handler.handle_request(7, h("03 006B 0003")) is None
    assert handler.requests_by_unit[7] == 1


def test_unknown_unit_as_gateway_error() -> None:
    handler = typed_handler(unknown_unit="gateway_error")
    assert handler.handle_request(7, h("03 006B 0003")) == h("83 0B")
    assert handler.handle_request(7, h("04 0000 0001")) == h("84 0B")
    assert handler.handle_request(1, h("04 0008 0001")) == h("04 02 000A")


def test_faults() -> None:
    handler = typed_handler()
    request = h("03 006B 0003")
    handler.set_fault(1, Fault.SILENT)
    assert handler.handle_request(1, request) is None
    handler.set_fault(1, Fault.exception(0x04))
    assert handler.handle_request(1, request) == h("83 04")
    handler.set_fault(1, Fault.exception(0x0B))
    assert handler.handle_request(1, h("04 0008 0001")) == h("84 0B")
    handler.set_fault(1, Fault.delay(2.5))
    assert handler.handle_request(1, request) == h("03 06 022B 0000 0064")
    assert handler.delay_for(1) == 2.5
    assert handler.delay_for(2) == 0.0
    handler.set_fault(1, None)
    assert handler.delay_for(1) == 0.0
    assert handler.handle_request(1, request) == h("03 06 022B 0000 0064")
    assert handler.request_count == 5
    assert handler.requests_by_unit == {1: 5}


def test_fault_on_an_unserved_unit_applies_too() -> None:
    handler = typed_handler(unknown_unit="gateway_error")
    handler.set_fault(9, Fault.SILENT)
    assert handler.handle_request(9, h("03 006B 0003")) is None


@pytest.mark.parametrize("code", [0, 256, -1])
def test_fault_exception_code_out_of_range(code: int) -> None:
    with pytest.raises(ValueError, match="exception code"):
        Fault.exception(code)


@pytest.mark.parametrize("seconds", [-0.1, float("inf"), float("nan")])
def test_fault_delay_must_be_finite(seconds: float) -> None:
    with pytest.raises(ValueError, match="delay"):
        Fault.delay(seconds)


def test_empty_pdu_gets_no_answer_and_is_counted() -> None:
    handler = typed_handler()
    assert handler.handle_request(1, b"") is None
    assert handler.dropped_count == 1
    assert handler.request_count == 1


def test_exception_response_shape() -> None:
    assert exception_response(0x03, 0x02) == h("83 02")
    assert exception_response(0x83, 0x01) == h("83 01")


def test_static_meter_words_and_bits() -> None:
    meter = StaticMeter(
        holding={0: 0x1234, 1: 0xABCD},
        input={5: 7},
        coils={0: True, 1: False, 2: True, 9: True},
        discrete={3: True},
    )
    handler = RequestHandler({17: meter})
    assert handler.handle_request(17, h("03 0000 0002")) == h("03 04 1234 ABCD")
    assert handler.handle_request(17, h("04 0005 0001")) == h("04 02 0007")
    assert handler.handle_request(17, h("01 0000 0003")) == h("01 01 05")
    assert handler.handle_request(17, h("01 0000 0004")) == h("81 02")  # coil 3 unmapped
    assert handler.handle_request(17, h("02 0003 0001")) == h("02 01 01")
    assert meter.truth()["holding_1"] == 0xABCD
    assert meter.truth()["coil_2"] is True


def test_static_meter_rejects_words_out_of_range() -> None:
    with pytest.raises(ValueError, match="outside"):
        StaticMeter(holding={0: 0x10000})


def test_handler_rejects_unit_ids_out_of_range() -> None:
    with pytest.raises(ValueError, match="unit id"):
        RequestHandler({256: TypedMeter()})


def test_make_meter_rejects_unknown_models() -> None:
    for model in ("sdm999", "generic", "generic0", "genericX", ""):
        with pytest.raises(ValueError, match=r"generic|unknown"):
            make_meter(model)
