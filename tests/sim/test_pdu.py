"""The PDU handler against byte strings written by hand from the Modbus spec."""

from __future__ import annotations

import struct

import pytest

from citygate_sim.modbus import (
    Fault,
    Meter,
    Register,
    RequestHandler,
    StaticMeter,
    Table,
    TypedMeter,
    UnknownUnit,
    Unmapped,
    ValueType,
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
        pytest.param("05 0000 1234", "85 03", id="write single coil: value not FF00/0000"),
        pytest.param("05 0040 FF00", "85 02", id="write single coil: unmapped coil 64"),
        pytest.param("06 006B 0001", "86 02", id="write register: read-only holding 107"),
        pytest.param("06 0000 0001", "86 02", id="write register: unmapped holding 0"),
        pytest.param("06 03E8 0001 00", "86 03", id="write register: one byte too many"),
        pytest.param("10 03E8 0001 02 00", "90 03", id="write multiple: byte count short"),
        pytest.param("10 03E8 0002 02 0000", "90 03", id="write multiple: byte count wrong"),
        pytest.param("10 03E8 0000 00", "90 03", id="write multiple: quantity 0"),
        pytest.param("10 03E8 007C F8" + "00" * 248, "90 03", id="write 124 registers"),
        pytest.param("10 FFFF 0002 04 00000000", "90 02", id="write past the address space"),
        pytest.param("10 0487 0002 04 00000000", "90 02", id="write running past the block"),
        pytest.param("0F 0000 0008 02 FF00", "8F 03", id="write coils: byte count wrong"),
        pytest.param("0F 003F 0002 01 03", "8F 02", id="write coils running into coil 64"),
        pytest.param("0F 0000 07B1 F7" + "00" * 247, "8F 03", id="write 1969 coils"),
        pytest.param("10", "90 03", id="write: function code only"),
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
@pytest.mark.parametrize("unmapped", ["zero_in_map", "exception"])
@pytest.mark.parametrize(
    ("request_pdu", "response_pdu"),
    [
        pytest.param("04 0001 0002", "84 02", id="odd start: part of a float"),
        pytest.param("04 0000 0001", "84 02", id="odd count: part of a float"),
        pytest.param("04 002B 0004", "84 02", id="odd start before a reserved address"),
        pytest.param("04 0000 0052", "84 03", id="82 registers: over 40 parameters"),
        pytest.param("04 017E 0002", "84 02", id="just past the last input register"),
        pytest.param("04 017C 0004", "84 02", id="a read running past the map"),
        pytest.param("04 0200 0002", "84 02", id="far past the map"),
        pytest.param("03 0058 0002", "83 02", id="past the last setting"),
        pytest.param("03 FBFE 0004", "83 02", id="a read running into the serial number"),
        pytest.param("01 0000 0008", "81 01", id="no coils on an SDM"),
        pytest.param("02 0000 0008", "82 01", id="no discrete inputs on an SDM"),
    ],
)
def test_eastron_device_rules(unmapped: Unmapped, request_pdu: str, response_pdu: str) -> None:
    handler = RequestHandler({1: make_meter("sdm630", seed=1, unmapped=unmapped)})
    assert handler.handle_request(1, h(request_pdu)) == h(response_pdu)


@pytest.mark.parametrize(
    ("request_pdu", "response_pdu"),
    [
        pytest.param("04 002C 0002", "84 02", id="reserved 0x002C"),
        pytest.param("04 0028 0008", "84 02", id="a read spanning the reserved 0x002C"),
        pytest.param("04 0000 0050", "84 02", id="80 registers over reserved parameters"),
        pytest.param("03 0004 0002", "83 02", id="reserved setting 0x0004"),
    ],
)
def test_strict_eastron_refuses_reserved_addresses(request_pdu: str, response_pdu: str) -> None:
    handler = RequestHandler({1: make_meter("sdm630", seed=1, unmapped="exception")})
    assert handler.handle_request(1, h(request_pdu)) == h(response_pdu)
    assert handler.exception_count == 1
    assert handler.exceptions_by_unit == {1: 1}


def f32(value: float) -> bytes:
    return struct.pack(">f", value)


def test_eastron_reads_reserved_addresses_inside_the_map_as_zero() -> None:
    meter = make_meter("sdm630", seed=1)
    meter.freeze()
    t = meter.truth()
    handler = RequestHandler({1: meter})
    assert handler.handle_request(1, h("04 002C 0002")) == h("04 04 0000 0000")
    # phase angle L3 (0x0028), average volts (0x002A), reserved 0x002C, average amps (0x002E)
    assert handler.handle_request(1, h("04 0028 0008")) == h("04 10") + f32(
        t["phase_angle_l3"]
    ) + f32(t["voltage_avg"]) + bytes(4) + f32(t["current_avg"])
    # the reserved block 0x0058-0x0063 between the power and the VA demands
    assert handler.handle_request(1, h("04 0056 0010")) == h("04 20") + f32(
        t["demand_power_max"]
    ) + bytes(24) + f32(t["demand_apparent_power"])
    # the last parameter of the map, and a reserved setting
    assert handler.handle_request(1, h("04 017C 0002")) == h("04 04") + f32(
        t["reactive_energy_total_l3"]
    )
    assert handler.handle_request(1, h("03 0004 0002")) == h("03 04 0000 0000")


def test_sdm120_serves_its_phase_angle() -> None:
    meter = make_meter("sdm120", seed=2)
    meter.freeze()
    t = meter.truth()
    handler = RequestHandler({2: meter})
    # power factor (0x001E), reserved 0x0020-0x0023, phase angle (0x0024, register 30037)
    assert handler.handle_request(2, h("04 001E 0008")) == h("04 10") + f32(
        t["power_factor"]
    ) + bytes(8) + f32(t["phase_angle"])
    assert handler.handle_request(2, h("04 0158 0002")) == h("04 04") + f32(
        t["reactive_energy_total"]
    )
    assert handler.handle_request(2, h("04 015A 0002")) == h("84 02")  # past the map
    strict = RequestHandler({2: make_meter("sdm120", seed=2, unmapped="exception")})
    assert strict.handle_request(2, h("04 0024 0002"))[:2] == h("04 04")  # type: ignore[index]
    assert strict.handle_request(2, h("04 001E 0008")) == h("84 02")


def test_unmapped_policies_by_model() -> None:
    assert make_meter("sdm630").unmapped == "zero_in_map"
    assert make_meter("sdm120").unmapped == "zero_in_map"
    assert make_meter("typed").unmapped == "exception"
    assert make_meter("generic4").unmapped == "exception"
    assert make_meter("sdm630", unmapped="exception").unmapped == "exception"
    assert make_meter("sdm630").map_ranges(Table.INPUT_REGISTERS) == [(0x0000, 0x017E)]
    assert make_meter("generic4", unmapped="zero_in_map").map_ranges(Table.INPUT_REGISTERS) == [
        (0, 8)
    ]
    with pytest.raises(ValueError, match="unmapped must be one of"):
        make_meter("sdm630", unmapped="lenient")  # type: ignore[arg-type]


def test_map_ranges_must_hold_every_register() -> None:
    register = Register("v", 4, Table.INPUT_REGISTERS, ValueType.FLOAT32, "V", "volts")
    with pytest.raises(ValueError, match=r"input 4\.\.5 lies outside the documented map"):
        Meter("m", [register], map_ranges={Table.INPUT_REGISTERS: [(0, 5)]})
    meter = Meter("m", [register], map_ranges={Table.INPUT_REGISTERS: [(0, 6), (100, 102)]})
    assert meter.map_ranges(Table.INPUT_REGISTERS) == [(0, 6), (100, 102)]
    assert meter.map_ranges(Table.HOLDING_REGISTERS) == []


def test_zero_in_map_on_a_generic_meter() -> None:
    handler = RequestHandler({1: make_meter("generic4", unmapped="zero_in_map")})
    assert handler.handle_request(1, h("04 0000 0008"))[:2] == h("04 10")  # type: ignore[index]
    assert handler.handle_request(1, h("04 0006 0004")) == h("84 02")  # runs past value_3


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
    for model in ("sdm999", "generic", "generic0", "genericX", "generic4d7", "generic4d", ""):
        with pytest.raises(ValueError, match=r"generic|unknown"):
            make_meter(model)
