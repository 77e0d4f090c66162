"""Remote writes against the simulators: Modbus TCP over loopback sockets, Modbus
RTU over a real pseudo-terminal. A write sends the write and one read-back and
returns what a poll would give; a refused write sends nothing."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from citygate.drivers.api import (
    DecodeError,
    DeviceContext,
    DeviceError,
    SerialLineConfig,
    TransportError,
    WritableDriver,
    WriteRefused,
    shortest_float32,
)
from citygate.drivers.modbus.driver import (
    ModbusExceptionError,
    ModbusRtuDriver,
    ModbusTcpDriver,
    factory,
)
from citygate.lines import LineOwner

citygate_sim = pytest.importorskip("citygate_sim.modbus")

HOST = "127.0.0.1"
SDM630, TYPED = 1, 3
QUICK = 0.2  # seconds: reply timeout where a test waits for one to expire
WIDE = {"min": -1e20, "max": 1e20}

# a new value per type, different from the typed meter's, in every byte
NEW_VALUES: dict[str, float] = {
    "int16": -321,
    "uint16": 0xBEEF,
    "int32": -7654321,
    "uint32": 3_000_000_001,
    "int64": -(2**62) + 12345,
    "uint64": 2**63 + 0x1234567,
    "float32": 49.95,
    "float64": -0.1,
}


def typed_register(value_type: str, order: str, **keys: Any) -> dict[str, Any]:
    return {
        "name": f"holding_{value_type}_{order.lower()}",
        "address": citygate_sim.typed_address(
            citygate_sim.ValueType(value_type), citygate_sim.WordOrder(order)
        ),
        "type": value_type,
        "order": order,
        "writable": True,
        **WIDE,
        **keys,
    }


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = {
        SDM630: citygate_sim.make_meter("sdm630", seed=1),
        TYPED: citygate_sim.make_meter("typed"),
    }
    async with citygate_sim.ModbusTcpSimulator(meters, host=HOST, port=0) as simulator:
        for meter in meters.values():
            meter.freeze()
        yield simulator


def tcp_driver(tmp_path: Path, port: int, **options: Any) -> ModbusTcpDriver:
    context = DeviceContext("meter", 10.0, tmp_path)
    driver = factory.create(
        factory.configure({"host": HOST, "port": port, **options}, context), context
    )
    assert isinstance(driver, ModbusTcpDriver)
    assert isinstance(driver, WritableDriver)
    return driver


def typed_driver(tmp_path: Path, sim: Any, **options: Any) -> ModbusTcpDriver:
    registers = [
        typed_register(value_type, order)
        for value_type in NEW_VALUES
        for order in ("ABCD", "CDAB", "BADC", "DCBA")
    ]
    registers += [
        {"name": "coil_5", "address": 5, "table": "coil", "writable": True},
        {"name": "spec_holding_107", "address": 107, "writable": True, **WIDE},
        {
            "name": "setpoint",
            "address": citygate_sim.typed_address(
                citygate_sim.ValueType.INT16, citygate_sim.WordOrder.ABCD
            ),
            "type": "int16",
            "scale": 0.1,
            "unit": "kW",
            "writable": True,
            "min": -2.0,
            "max": 2.0,
        },
        {
            "name": "input_uint16_abcd",
            "address": citygate_sim.typed_address(
                citygate_sim.ValueType.UINT16, citygate_sim.WordOrder.ABCD
            ),
            "table": "input",
        },
    ]
    return tcp_driver(tmp_path, sim.port, unit=TYPED, registers=registers, **options)


def expected(value_type: str, value: float) -> float:
    return shortest_float32(value) if value_type == "float32" else value


# ------------------------------------------------------------------ TCP


@pytest.mark.parametrize("order", ["ABCD", "CDAB", "BADC", "DCBA"])
@pytest.mark.parametrize("value_type", list(NEW_VALUES))
async def test_write_and_read_back_every_type_and_order(
    sim: Any, tmp_path: Path, value_type: str, order: str
) -> None:
    name = f"holding_{value_type}_{order.lower()}"
    async with typed_driver(tmp_path, sim) as driver:
        before = sim.requests_by_unit[TYPED]
        got = await driver.write(name, NEW_VALUES[value_type])
        assert sim.requests_by_unit[TYPED] - before == 2  # the write and one read-back
        polled = {m.name: m.value for m in await driver.poll()}
    want = expected(value_type, NEW_VALUES[value_type])
    assert got == want
    assert polled[name] == want
    truth = sim.meters[TYPED].truth()[name]  # the meter's own decoding
    assert (shortest_float32(truth) if value_type == "float32" else truth) == want
    assert sim.exception_count == 0


async def test_scaled_write_is_given_in_the_configured_unit(sim: Any, tmp_path: Path) -> None:
    async with typed_driver(tmp_path, sim) as driver:
        got = await driver.write("setpoint", -1.5)  # kW, raw -15 at scale 0.1
    assert got == pytest.approx(-1500.0)  # read back as a poll gives it: W
    assert sim.meters[TYPED].truth()["holding_int16_abcd"] == -15


async def test_coil_write_fc05(sim: Any, tmp_path: Path) -> None:
    async with typed_driver(tmp_path, sim) as driver:
        assert await driver.write("coil_5", True) is True
        assert sim.meters[TYPED].truth()["coil_5"] is True
        assert await driver.write("coil_5", False) is False
    assert sim.meters[TYPED].truth()["coil_5"] is False


async def test_eastron_setting_written_with_fc16(sim: Any, tmp_path: Path) -> None:
    registers = [
        {
            "name": "demand_period",
            "address": 0x0002,
            "type": "float32",
            "unit": "min",
            "writable": True,
            "min": 0,
            "max": 60,
        }
    ]
    driver = tcp_driver(tmp_path, sim.port, unit=SDM630, registers=registers)
    async with driver:
        got = await driver.write("demand_period", 15)
    assert got == 900.0  # 15 min, read back in the canonical s
    assert sim.meters[SDM630].truth()["demand_period"] == 15.0


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("input_uint16_abcd", 1, "forbidden"),  # not writable (and read-only)
        ("no_such_register", 1, "forbidden"),
        ("setpoint", 2.5, "out_of_range"),  # max 2 kW
        ("setpoint", -2.01, "out_of_range"),
        ("holding_int16_abcd", 40000, "out_of_range"),  # int16 cannot hold it
        ("holding_uint64_abcd", -1, "out_of_range"),
        ("holding_float32_abcd", True, "bad_request"),  # a bool for a number
        ("setpoint", 0.05, "bad_request"),  # raw 0.5: no whole step of 0.1 kW
        ("coil_5", 1, "bad_request"),  # a number for a coil
    ],
)
async def test_refused_writes_send_nothing(
    sim: Any, tmp_path: Path, name: str, value: Any, code: str
) -> None:
    async with typed_driver(tmp_path, sim) as driver:
        before = sim.requests_by_unit[TYPED]
        with pytest.raises(WriteRefused) as caught:
            await driver.write(name, value)
        assert sim.requests_by_unit[TYPED] == before
    assert caught.value.code == code
    assert sim.meters[TYPED].truth() == citygate_sim.make_meter("typed").truth()


async def test_exception_reply_to_a_write_is_a_device_error(sim: Any, tmp_path: Path) -> None:
    async with typed_driver(tmp_path, sim) as driver:
        with pytest.raises(ModbusExceptionError) as caught:
            await driver.write("spec_holding_107", 1)  # read-only in the meter
        assert sim.requests_by_unit[TYPED] == 1  # no read-back after a refusal
        # the connection is still good
        assert await driver.write("holding_uint16_abcd", 7) == 7
    assert isinstance(caught.value, DeviceError)
    assert caught.value.code == 2
    assert str(caught.value) == (
        "exception 2 (illegal data address) writing holding register 0x006B"
    )


async def test_eastron_refuses_fc06_as_illegal_function(sim: Any, tmp_path: Path) -> None:
    registers = [{"name": "x", "address": 0x0002, "writable": True, **WIDE}]
    driver = tcp_driver(tmp_path, sim.port, unit=SDM630, registers=registers)
    async with driver:
        with pytest.raises(DeviceError, match=r"exception 1 \(illegal function\) writing"):
            await driver.write("x", 1)


async def test_silent_unit_write_is_a_transport_error(sim: Any, tmp_path: Path) -> None:
    async with typed_driver(tmp_path, sim, timeout=QUICK, retries=1) as driver:
        sim.set_fault(TYPED, citygate_sim.Fault.SILENT)
        with pytest.raises(TransportError, match=r"no answer from .* \(2 attempts\)"):
            await driver.write("holding_uint16_abcd", 7)
    assert sim.requests_by_unit[TYPED] == 2


async def test_write_during_a_poll_takes_its_turn(sim: Any, tmp_path: Path) -> None:
    async with typed_driver(tmp_path, sim) as driver:
        results = await asyncio.gather(
            driver.poll(), driver.write("holding_uint32_cdab", 5), driver.poll()
        )
    assert results[1] == 5
    assert {m.name: m.value for m in results[2]}["holding_uint32_cdab"] == 5
    assert sim.exception_count == 0


async def test_reply_that_does_not_echo_the_write_is_a_decode_error(tmp_path: Path) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readexactly(12)  # MBAP + FC 06 request
        tid = request[:2]
        pdu = bytearray(request[7:])
        pdu[4] ^= 0x01  # another value
        writer.write(tid + struct.pack(">HHB", 0, 1 + len(pdu), request[6]) + bytes(pdu))
        await writer.drain()
        await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(answer, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        registers = [{"name": "x", "address": 3, "writable": True, **WIDE}]
        async with tcp_driver(tmp_path, port, registers=registers) as driver:
            with pytest.raises(DecodeError, match="does not echo the request: value 0x0006"):
                await driver.write("x", 7)
            assert driver.stray_replies["malformed"] == 1
    finally:
        server.close()
        await server.wait_closed()


# ------------------------------------------------------------------ RTU

BAUD = 38400


@pytest.fixture
async def rtu() -> AsyncIterator[tuple[Any, LineOwner]]:
    meter = citygate_sim.make_meter("typed")
    async with citygate_sim.ModbusRtuSimulator({1: meter}, baudrate=BAUD) as simulator:
        owner = LineOwner(SerialLineConfig("rs485", simulator.port, BAUD, "N", 1, 8, QUICK))
        try:
            yield simulator, owner
        finally:
            owner.close()


def rtu_driver(tmp_path: Path, line: LineOwner, **options: Any) -> ModbusRtuDriver:
    context = DeviceContext(
        "meter", 10.0, tmp_path, serial_lines={"rs485": line.config}, lines={"rs485": line}
    )
    registers = [
        typed_register("float32", "CDAB"),
        typed_register("uint64", "DCBA"),
        {"name": "coil_5", "address": 5, "table": "coil", "writable": True},
        {"name": "spec_holding_107", "address": 107, "writable": True, **WIDE},
    ]
    config = factory.configure(
        {"serial": "rs485", "unit": 1, "registers": registers, **options}, context
    )
    driver = factory.create(config, context)
    assert isinstance(driver, ModbusRtuDriver)
    assert isinstance(driver, WritableDriver)
    return driver


async def test_rtu_write_and_read_back_in_one_turn(
    rtu: tuple[Any, LineOwner], tmp_path: Path
) -> None:
    sim, line = rtu
    async with rtu_driver(tmp_path, line) as driver:
        assert await driver.write("holding_float32_cdab", -12.75) == -12.75
        assert await driver.write("holding_uint64_dcba", 2**64 - 2) == 2**64 - 2
        assert await driver.write("coil_5", True) is True
    truth = sim.meters[1].truth()
    assert (truth["holding_float32_cdab"], truth["holding_uint64_dcba"]) == (-12.75, 2**64 - 2)
    assert truth["coil_5"] is True
    stats = line.devices["meter"]
    assert stats.transactions == 6  # three writes, three read-backs
    assert sim.requests_by_unit[1] == 6


async def test_rtu_refused_write_sends_nothing(rtu: tuple[Any, LineOwner], tmp_path: Path) -> None:
    sim, line = rtu
    async with rtu_driver(tmp_path, line) as driver:
        with pytest.raises(WriteRefused) as caught:
            await driver.write("holding_float32_cdab", 1e21)
    assert caught.value.code == "out_of_range"
    assert sim.requests_by_unit[1] == 0
    assert "meter" not in line.devices or line.devices["meter"].transactions == 0


async def test_rtu_write_errors(rtu: tuple[Any, LineOwner], tmp_path: Path) -> None:
    sim, line = rtu
    async with rtu_driver(tmp_path, line, retries=0) as driver:
        with pytest.raises(ModbusExceptionError, match=r"exception 2 \(illegal data address\)"):
            await driver.write("spec_holding_107", 1)
        sim.set_fault(1, citygate_sim.LineFault("crc"))
        with pytest.raises(DecodeError, match="CRC error in the reply writing coil 0x0005"):
            await driver.write("coil_5", True)
        sim.set_fault(1, citygate_sim.Fault.SILENT)
        with pytest.raises(TransportError, match="no answer from serial rs485 unit 1"):
            await driver.write("coil_5", True)
    problems = line.devices["meter"].problems
    assert (problems["exception"], problems["crc"]) == (1, 1)
