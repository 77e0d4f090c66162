"""The driver against the hardware simulator (and a few raw misbehaving servers)
over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.api import (
    DecodeError,
    DeviceContext,
    DeviceError,
    Measurement,
    PollDriver,
    TransportError,
)
from drivers.modbus.driver import ModbusTcpDriver, factory, read_raw
from drivers.modbus.profile import builtin_profiles, load_profile

hwsim = pytest.importorskip("hwsim.modbus")

HOST = "127.0.0.1"
SDM630, SDM120, TYPED = 1, 2, 3
QUICK = 0.2  # seconds: reply timeout where a test waits for one to expire


def f32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = {
        SDM630: hwsim.make_meter("sdm630", seed=1),
        SDM120: hwsim.make_meter("sdm120", seed=2),
        TYPED: hwsim.make_meter("typed"),
    }
    async with hwsim.ModbusTcpSimulator(meters, host=HOST, port=0) as simulator:
        for meter in meters.values():
            meter.freeze()
        yield simulator


def make_driver(tmp_path: Path, **options: Any) -> ModbusTcpDriver:
    context = DeviceContext("meter", 10.0, tmp_path)
    config = factory.configure({"host": HOST, **options}, context)
    driver = factory.create(config, context)
    assert isinstance(driver, ModbusTcpDriver)
    assert isinstance(driver, PollDriver)
    return driver


async def poll_once(tmp_path: Path, **options: Any) -> list[Measurement]:
    async with make_driver(tmp_path, **options) as driver:
        return await driver.poll()


# ------------------------------------------------------------------ reading


async def test_sdm630_profile_reads_exactly_what_the_meter_serves(sim: Any, tmp_path: Path) -> None:
    readings = await poll_once(tmp_path, port=sim.port, unit=SDM630, profile="eastron-sdm630")
    truth = sim.meters[SDM630].truth()
    profile = load_profile(builtin_profiles()["eastron-sdm630"])
    assert [m.name for m in readings] == [r.name for r in profile.registers]
    for reading in readings:
        assert reading.value == f32(truth[reading.name]), reading.name
    units = {m.name: m.unit for m in readings}
    assert units["energy_import"] == "kWh"
    assert units["voltage_l1_l2"] == "V"
    assert units["power_factor"] == "/"
    # no read bridged an unused address or asked for more than the meter's 80 registers
    assert sim.dropped_count == 0


def served_part_of(profile_name: str, served: set[str], tmp_path: Path) -> tuple[Path, set[str]]:
    """A copy of a built-in profile without the registers the simulator lacks."""
    source = builtin_profiles()[profile_name]
    profile = load_profile(source)
    missing = {spec.name for spec in profile.registers} - served
    lines = [
        "[profile]",
        f'name = "{profile.name}-served"',
        'source = "test copy"',
        f"max_registers = {profile.max_registers}",
        f"max_gap = {profile.max_gap}",
    ]
    for spec in profile.registers:
        if spec.name not in missing:
            lines += [
                "[[registers]]",
                f'name = "{spec.name}"',
                f"address = {spec.address}",
                f'table = "{spec.table}"',
                f'type = "{spec.type}"',
                f'unit = "{spec.unit}"',
            ]
    path = tmp_path / "served.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, missing


async def test_sdm120_profile_reads_what_the_meter_serves(sim: Any, tmp_path: Path) -> None:
    truth = sim.meters[SDM120].truth()
    path, missing = served_part_of("eastron-sdm120", set(truth), tmp_path)
    # the SDM120 protocol lists phase angle at 30037; the simulator may not serve it
    assert missing <= {"phase_angle"}
    readings = await poll_once(tmp_path, port=sim.port, unit=SDM120, profile=str(path))
    assert len(readings) == 22 - len(missing)
    for reading in readings:
        assert reading.value == f32(truth[reading.name]), reading.name


async def test_sdm120_simulator_serves_every_profile_register(sim: Any, tmp_path: Path) -> None:
    profile = load_profile(builtin_profiles()["eastron-sdm120"])
    missing = {spec.name for spec in profile.registers} - set(sim.meters[SDM120].truth())
    if missing:
        pytest.xfail(f"hwsim's sdm120 does not serve {sorted(missing)} (SDM120 register 30037)")
    readings = await poll_once(tmp_path, port=sim.port, unit=SDM120, profile="eastron-sdm120")
    assert len(readings) == len(profile.registers)


def typed_registers() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    registers: list[dict[str, Any]] = []
    expected: dict[str, Any] = {}
    for table in ("holding", "input"):
        for value_type, value in hwsim.TYPED_VALUES.items():
            for order in hwsim.WordOrder:
                name = f"{table}_{value_type}_{order.lower()}"
                registers.append(
                    {
                        "name": name,
                        "address": hwsim.typed_address(value_type, order),
                        "table": table,
                        "type": str(value_type),
                        "order": str(order),
                    }
                )
                expected[name] = value
    for table, count, on in (
        ("coil", 64, hwsim.SPEC_COILS_ON),
        ("discrete", 256, hwsim.SPEC_DISCRETE_INPUTS_ON),
    ):
        for address in range(count):
            registers.append({"name": f"{table}_{address}", "address": address, "table": table})
            expected[f"{table}_{address}"] = address in on
    return registers, expected


async def test_typed_map_every_type_and_order_from_a_real_socket(sim: Any, tmp_path: Path) -> None:
    registers, expected = typed_registers()
    driver = make_driver(tmp_path, port=sim.port, unit=TYPED, registers=registers)
    tables = [request.table for request in driver.config.plan.requests]
    # 128 typed registers per table: two reads each (125 at most); bits: one read each
    assert tables == ["input", "input", "holding", "holding", "coil", "discrete"]
    async with driver:
        readings = await driver.poll()
    got = {m.name: m.value for m in readings}
    assert got == expected
    for name, value in got.items():
        assert type(value) is type(expected[name]), name


async def test_scaled_register_with_unit_conversion(sim: Any, tmp_path: Path) -> None:
    # the spec example's holding register 108 (address 107) holds 0x022B = 555
    registers = [
        {"name": "energy", "address": 107, "scale": 0.5, "offset": 2, "unit": "Wh"},
        {"name": "raw", "address": 107},
    ]
    readings = await poll_once(tmp_path, port=sim.port, unit=TYPED, registers=registers)
    energy, raw = readings
    assert (energy.name, energy.unit) == ("energy", "kWh")
    assert energy.value == pytest.approx((555 * 0.5 + 2) / 1000)
    assert raw == Measurement("raw", 555, None)


async def test_read_raw_for_the_assistant(sim: Any) -> None:
    words = await read_raw(HOST, sim.port, SDM630, 0x0000, 4, "input", 1.0)
    assert len(words) == 4
    voltage = struct.unpack(">f", struct.pack(">2H", *words[:2]))[0]
    assert voltage == f32(sim.meters[SDM630].truth()["voltage_l1"])
    bits = await read_raw(HOST, sim.port, TYPED, 19, 19, "coil", 1.0)
    assert bits == [address in hwsim.SPEC_COILS_ON for address in range(19, 38)]
    with pytest.raises(ValueError, match="count"):
        await read_raw(HOST, sim.port, TYPED, 0, 126, "holding", 1.0)
    with pytest.raises(DeviceError, match="exception 2"):
        await read_raw(HOST, sim.port, TYPED, 200, 2, "holding", 1.0)


# ------------------------------------------------------------------ failures


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


async def test_refused_connection_is_a_transport_error(tmp_path: Path) -> None:
    port = free_port()
    driver = make_driver(tmp_path, port=port, profile="eastron-sdm120", timeout=1.0)
    with pytest.raises(TransportError, match=f"cannot connect to 127.0.0.1:{port}"):
        async with driver:
            pass


async def test_silent_unit_times_out_after_its_retries(sim: Any, tmp_path: Path) -> None:
    sim.set_fault(SDM120, hwsim.Fault.SILENT)
    driver = make_driver(
        tmp_path, port=sim.port, unit=SDM120, profile="eastron-sdm120", timeout=QUICK, retries=2
    )
    async with driver:
        before = sim.requests_by_unit[SDM120]
        async with asyncio.timeout(QUICK * 3 + 2.0):
            with pytest.raises(TransportError) as caught:
                await driver.poll()
    assert str(caught.value) == (
        f"no answer from 127.0.0.1:{sim.port} unit {SDM120} within 200ms (3 attempts)"
    )
    assert sim.requests_by_unit[SDM120] - before == 3  # the first request, tried 3 times


async def test_exception_reply_is_a_device_error(sim: Any, tmp_path: Path) -> None:
    sim.set_fault(SDM630, hwsim.Fault.exception(0x04))
    driver = make_driver(tmp_path, port=sim.port, unit=SDM630, profile="eastron-sdm630")
    async with driver:
        with pytest.raises(DeviceError) as caught:
            await driver.poll()
        assert str(caught.value) == (
            "exception 4 (server device failure) reading input registers 0x0000–0x002B"
        )
        sim.set_fault(SDM630, None)
        assert len(await driver.poll()) == 84  # the connection stays usable


async def test_unknown_unit_behind_a_gateway(tmp_path: Path) -> None:
    meters = {1: hwsim.make_meter("typed")}
    async with hwsim.ModbusTcpSimulator(meters, port=0, unknown_unit="gateway_error") as gateway:
        with pytest.raises(DeviceError, match=r"exception 11 \(gateway target device failed"):
            await poll_once(
                tmp_path, port=gateway.port, unit=7, registers=[{"name": "x", "address": 107}]
            )


async def test_idle_connection_closed_by_the_device_is_reopened(sim: Any, tmp_path: Path) -> None:
    driver = make_driver(
        tmp_path,
        port=sim.port,
        unit=SDM120,
        registers=[{"name": "v", "address": 0, "table": "input", "type": "float32"}],
    )
    async with driver:
        first = await driver.poll()
        sim.drop_connections()
        async with asyncio.timeout(5):
            while sim.connection_count:
                await asyncio.sleep(0.005)
        assert await driver.poll() == first


async def test_connection_dropped_during_a_request(sim: Any, tmp_path: Path) -> None:
    sim.set_fault(SDM630, hwsim.Fault.SILENT)
    driver = make_driver(
        tmp_path, port=sim.port, unit=SDM630, profile="eastron-sdm630", timeout=QUICK
    )

    async def drop_once_asked(before: int) -> None:
        async with asyncio.timeout(5):
            while sim.request_count == before:
                await asyncio.sleep(0.005)
        sim.drop_connections()

    async with driver, asyncio.TaskGroup() as group:
        group.create_task(drop_once_asked(sim.request_count))
        with pytest.raises(TransportError, match="closed while waiting for unit 1"):
            await driver.poll()
    sim.set_fault(SDM630, None)
    async with driver:  # reopened
        assert len(await driver.poll()) == 84


async def test_late_replies_are_ignored(sim: Any, tmp_path: Path) -> None:
    driver = make_driver(
        tmp_path, port=sim.port, unit=SDM630, profile="eastron-sdm630", timeout=QUICK, retries=0
    )
    sim.set_fault(SDM630, hwsim.Fault.delay(QUICK * 1.5))
    async with driver:
        with pytest.raises(TransportError, match="no answer"):
            await driver.poll()
        sim.set_fault(SDM630, None)
        driver._session.timeout = 5.0  # let the queued late answer arrive first
        readings = await driver.poll()
    truth = sim.meters[SDM630].truth()
    assert [m.value for m in readings] == [f32(truth[m.name]) for m in readings]


async def test_errors_are_not_logged(
    sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    with pytest.raises(TransportError):
        await poll_once(tmp_path, port=free_port(), profile="eastron-sdm120")
    sim.set_fault(SDM120, hwsim.Fault.SILENT)
    with pytest.raises(TransportError):
        await poll_once(
            tmp_path, port=sim.port, unit=SDM120, profile="eastron-sdm120", timeout=QUICK, retries=0
        )
    assert logging.getLogger("pymodbus").level == logging.CRITICAL
    assert [
        r for r in caplog.records if r.levelno >= logging.WARNING and not r.name.startswith("hwsim")
    ] == []


async def test_pymodbus_speaks_when_we_debug(sim: Any, tmp_path: Path) -> None:
    ours = logging.getLogger("drivers.modbus.driver")
    previous = ours.level
    ours.setLevel(logging.DEBUG)
    try:
        await poll_once(
            tmp_path, port=sim.port, unit=TYPED, registers=[{"name": "x", "address": 107}]
        )
        assert logging.getLogger("pymodbus").level == logging.NOTSET
    finally:
        ours.setLevel(previous)
    await poll_once(tmp_path, port=sim.port, unit=TYPED, registers=[{"name": "x", "address": 107}])
    assert logging.getLogger("pymodbus").level == logging.CRITICAL


# ------------------------------------------------------------------ malformed replies

Reply = Callable[[bytes], bytes]


async def serve_replies(replies: list[Reply]) -> asyncio.Server:
    """A raw TCP device answering the n-th request with ``replies[n](request)``."""
    pending = list(replies)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while pending:
                request = await reader.readexactly(12)
                writer.write(pending.pop(0)(request))
                await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, HOST, 0)


def frame(request: bytes, pdu: bytes, *, unit: int | None = None, protocol: int = 0) -> bytes:
    tid = request[:2]
    unit_id = request[6] if unit is None else unit
    return tid + struct.pack(">HHB", protocol, len(pdu) + 1, unit_id) + pdu


def good(request: bytes) -> bytes:
    count = struct.unpack(">H", request[10:12])[0]
    return frame(request, bytes([request[7], 2 * count]) + bytes(range(2 * count)))


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (
            lambda r: frame(r, bytes([0x04, 2, 0x43, 0x66])),
            "reply carries 2 data bytes, expected 4",
        ),
        (lambda r: frame(r, bytes([0x2B, 0x0E])), "reply with function code 43, expected 4"),
        (
            lambda r: frame(r, bytes([0x04, 4]) + bytes(4), protocol=1),
            "not a Modbus TCP frame (protocol id 1, expected 0)",
        ),
        (
            lambda r: frame(r, bytes([0x04, 4]) + bytes(4), unit=9),
            "reply from unit 9, expected unit 3",
        ),
        (lambda r: frame(r, bytes([0x84])), "exception reply of 1 bytes, expected 2"),
    ],
)
async def test_malformed_reply_is_a_decode_error(
    tmp_path: Path, bad: Reply, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve_replies([bad, good])
    async with server:
        port = server.sockets[0].getsockname()[1]
        driver = make_driver(
            tmp_path,
            port=port,
            unit=3,
            timeout=5.0,
            registers=[{"name": "x", "address": 0x10, "table": "input", "type": "uint32"}],
        )
        async with driver:
            with pytest.raises(DecodeError) as caught:
                await driver.poll()
            assert str(caught.value) == (
                f"malformed reply to reading input registers 0x0010–0x0011"
                f" from 127.0.0.1:{port} unit 3: {problem}"
            )
            # the next request, on the same connection, is read normally
            assert await driver.poll() == [Measurement("x", 0x00010203)]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
