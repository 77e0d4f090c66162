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

from citygate.drivers.api import (
    DecodeError,
    DeviceContext,
    DeviceError,
    Measurement,
    PollDriver,
    TransportError,
    shortest_float32,
)
from citygate.drivers.modbus.driver import ModbusTcpDriver, factory, read_raw
from citygate.drivers.modbus.profile import builtin_profiles, load_profile

citygate_sim = pytest.importorskip("citygate_sim.modbus")

HOST = "127.0.0.1"
SDM630, SDM120, TYPED = 1, 2, 3
QUICK = 0.2  # seconds: reply timeout where a test waits for one to expire


def f32(value: float) -> float:
    """What the driver reads from a float32 register holding ``value``: the float32, as its
    shortest decimal."""
    return shortest_float32(float(struct.unpack(">f", struct.pack(">f", value))[0]))


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = {
        SDM630: citygate_sim.make_meter("sdm630", seed=1),
        SDM120: citygate_sim.make_meter("sdm120", seed=2),
        TYPED: citygate_sim.make_meter("typed"),
    }
    async with citygate_sim.ModbusTcpSimulator(meters, host=HOST, port=0) as simulator:
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


@pytest.mark.parametrize(
    ("profile_name", "unit"), [("eastron-sdm630", SDM630), ("eastron-sdm120", SDM120)]
)
async def test_profile_reads_exactly_what_the_meter_serves(
    sim: Any, tmp_path: Path, profile_name: str, unit: int
) -> None:
    driver = make_driver(tmp_path, port=sim.port, unit=unit, profile=profile_name)
    # the profile's registers coalesce across reserved addresses: 4 requests per poll
    assert len(driver.config.plan.requests) == 4
    async with driver:
        before = sim.requests_by_unit[unit]
        readings = await driver.poll()
    truth = sim.meters[unit].truth()
    profile = load_profile(builtin_profiles()[profile_name])
    assert [m.name for m in readings] == [
        r.name for r in profile.registers if r.name != "serial_number"
    ]
    for reading in readings:
        assert reading.value == f32(truth[reading.name]), reading.name
    # the identity register: read once, in the status, not among the readings
    assert driver.status_facts() == {"meter": {"serial_number": str(truth["serial_number"])}}
    units = {m.name: m.unit for m in readings}
    assert units["energy_import"] == "kWh"
    assert units["power_factor"] == "/"
    assert units["phase_angle"] == "deg"
    assert sim.requests_by_unit[unit] - before == 4 + 1  # and the identity read
    assert sim.exception_count == 0
    assert sim.dropped_count == 0


def typed_registers() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    registers: list[dict[str, Any]] = []
    expected: dict[str, Any] = {}
    for table in ("holding", "input"):
        for value_type, value in citygate_sim.TYPED_VALUES.items():
            for order in citygate_sim.WordOrder:
                name = f"{table}_{value_type}_{order.lower()}"
                registers.append(
                    {
                        "name": name,
                        "address": citygate_sim.typed_address(value_type, order),
                        "table": table,
                        "type": str(value_type),
                        "order": str(order),
                    }
                )
                expected[name] = f32(value) if value_type == "float32" else value
    for table, count, on in (
        ("coil", 64, citygate_sim.SPEC_COILS_ON),
        ("discrete", 256, citygate_sim.SPEC_DISCRETE_INPUTS_ON),
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
    assert shortest_float32(voltage) == f32(sim.meters[SDM630].truth()["voltage_l1"])
    bits = await read_raw(HOST, sim.port, TYPED, 19, 19, "coil", 1.0)
    assert bits == [address in citygate_sim.SPEC_COILS_ON for address in range(19, 38)]
    with pytest.raises(ValueError, match="count"):
        await read_raw(HOST, sim.port, TYPED, 0, 126, "holding", 1.0)
    with pytest.raises(DeviceError, match="exception 2"):
        await read_raw(HOST, sim.port, TYPED, 200, 2, "holding", 1.0)


# ------------------------------------------------------------------ strict meters


@pytest.fixture
async def strict_sim() -> AsyncIterator[Any]:
    """Meters that answer exception 02 to any read touching an unmapped register."""
    meters = {
        SDM630: citygate_sim.make_meter("sdm630", seed=1, unmapped="exception"),
        SDM120: citygate_sim.make_meter("sdm120", seed=2, unmapped="exception"),
    }
    async with citygate_sim.ModbusTcpSimulator(meters, host=HOST, port=0) as simulator:
        for meter in meters.values():
            meter.freeze()
        yield simulator


def split_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "citygate.drivers.modbus.driver"
        and r.levelno == logging.INFO
        and "refuses reads" in r.getMessage()
    ]


async def counted_poll(sim: Any, unit: int, driver: ModbusTcpDriver) -> tuple[Any, int, int]:
    """Poll once; return the readings, the requests and the exception replies it cost."""
    requests, exceptions = sim.requests_by_unit[unit], sim.exceptions_by_unit[unit]
    readings = await driver.poll()
    return (
        readings,
        sim.requests_by_unit[unit] - requests,
        sim.exceptions_by_unit[unit] - exceptions,
    )


# Gap-free runs of the profiles' coalesced requests, from the register maps.
SDM630_SPLIT = {
    (0x0000, 80): [(0x0000, 44), (0x002E, 4), (0x0034, 2), (0x0038, 2), (0x003C, 4),
                   (0x0042, 2), (0x0046, 10)],
    (0x0050, 28): [(0x0050, 2), (0x0054, 4), (0x0064, 8)],
    (0x00C8, 70): [(0x00C8, 8), (0x00E0, 2), (0x00EA, 12), (0x00F8, 4), (0x0102, 12)],
    (0x014E, 48): [(0x014E, 48)],
}  # fmt: skip
SDM120_SPLIT = {
    (0x0000, 38): [(a, 2) for a in (0x0000, 0x0006, 0x000C, 0x0012, 0x0018, 0x001E, 0x0024)],
    (0x0046, 26): [(0x0046, 10), (0x0054, 12)],
    (0x0102, 8): [(0x0102, 2), (0x0108, 2)],
    (0x0156, 4): [(0x0156, 4)],
}


@pytest.mark.parametrize(
    ("profile_name", "unit", "expected_split"),
    [("eastron-sdm630", SDM630, SDM630_SPLIT), ("eastron-sdm120", SDM120, SDM120_SPLIT)],
)
async def test_strict_meter_is_read_in_gap_free_requests(
    strict_sim: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    profile_name: str,
    unit: int,
    expected_split: dict[tuple[int, int], list[tuple[int, int]]],
) -> None:
    caplog.set_level(logging.DEBUG, logger="citygate.drivers.modbus.driver")
    driver = make_driver(tmp_path, port=strict_sim.port, unit=unit, profile=profile_name)
    coalesced = [(r.address, r.count) for r in driver.config.plan.requests]
    assert coalesced == list(expected_split)  # max_gap 16, max_registers 80
    gap_free = [part for parts in expected_split.values() for part in parts]
    bridging = sum(len(parts) > 1 for parts in expected_split.values())
    truth = strict_sim.meters[unit].truth()
    async with driver:
        first, requests, exceptions = await counted_poll(strict_sim, unit, driver)
        # every bridging request was refused once, then read in its gap-free parts
        # (and the serial number was read, once)
        assert (requests, exceptions) == (len(gap_free) + bridging + 1, bridging)
        assert [(r.address, r.count) for r in driver.config.plan.requests] == gap_free
        second, requests, exceptions = await counted_poll(strict_sim, unit, driver)
        assert (requests, exceptions) == (len(gap_free), 0)
    for readings in (first, second):
        assert [m.name for m in readings] == [r.name for r in driver.config.registers]
        for reading in readings:
            assert reading.value == f32(truth[reading.name]), reading.name
    ranges = ", ".join(
        f"0x{address:04X}–0x{address + count - 1:04X} in {len(parts)} requests"
        for (address, count), parts in expected_split.items()
        if len(parts) > 1
    )
    assert split_lines(caplog) == [
        f"meter: meter refuses reads across unused registers; reading {ranges} from now on"
    ]
    # a new driver for the same device (after a reconnect) keeps the split requests
    reopened = factory.create(driver.config, DeviceContext("meter", 10.0, tmp_path))
    assert isinstance(reopened, ModbusTcpDriver)
    async with reopened:
        third, requests, exceptions = await counted_poll(strict_sim, unit, reopened)
    assert (requests, exceptions) == (len(gap_free) + 1, 0)  # the identity read again
    assert third == second
    assert len(split_lines(caplog)) == 1


async def test_lenient_meter_keeps_the_coalesced_requests(
    sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="citygate.drivers.modbus.driver")
    driver = make_driver(tmp_path, port=sim.port, unit=SDM630, profile="eastron-sdm630")
    coalesced = driver.config.plan.requests
    async with driver:
        await driver.poll()  # the first poll also reads the identity registers (and logs them)
        caplog.clear()
        for _ in range(2):
            _, requests, exceptions = await counted_poll(sim, SDM630, driver)
            assert (requests, exceptions) == (4, 0)
    assert driver.config.plan.requests == coalesced
    assert driver.config.plan.split_count == 0
    assert [r for r in caplog.records if r.name == "citygate.drivers.modbus.driver"] == []


async def test_refused_gap_free_request_is_a_device_error(
    strict_sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="citygate.drivers.modbus.driver")
    # 0x002C is reserved: a strict meter refuses it, and there is nothing to split
    registers = [{"name": "x", "address": 0x002C, "table": "input", "type": "float32"}]
    driver = make_driver(tmp_path, port=strict_sim.port, unit=SDM630, registers=registers)
    async with driver:
        for _ in range(2):
            with pytest.raises(DeviceError) as caught:
                await driver.poll()
            assert str(caught.value) == (
                "exception 2 (illegal data address) reading input registers 0x002C–0x002D"
            )
    assert driver.config.plan.split_count == 0
    assert split_lines(caplog) == []


async def test_other_exceptions_to_a_bridging_request_are_not_split(
    strict_sim: Any, tmp_path: Path
) -> None:
    strict_sim.set_fault(SDM630, citygate_sim.Fault.exception(0x04))
    driver = make_driver(tmp_path, port=strict_sim.port, unit=SDM630, profile="eastron-sdm630")
    async with driver:
        with pytest.raises(DeviceError, match="exception 4"):
            await driver.poll()
    assert len(driver.config.plan.requests) == 4


async def test_a_split_narrows_the_error_to_the_refused_register(sim: Any, tmp_path: Path) -> None:
    # 0x0180 lies beyond the SDM630's map: even a lenient meter refuses it
    registers = [
        {"name": "last", "address": 0x017C, "table": "input", "type": "float32"},
        {"name": "beyond", "address": 0x0180, "table": "input", "type": "float32"},
    ]
    driver = make_driver(tmp_path, port=sim.port, unit=SDM630, registers=registers)
    assert [(r.address, r.count) for r in driver.config.plan.requests] == [(0x017C, 6)]
    async with driver:
        with pytest.raises(DeviceError) as caught:
            await driver.poll()
    assert str(caught.value) == (
        "exception 2 (illegal data address) reading input registers 0x0180–0x0181"
    )
    assert [(r.address, r.count) for r in driver.config.plan.requests] == [
        (0x017C, 2),
        (0x0180, 2),
    ]


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
    sim.set_fault(SDM120, citygate_sim.Fault.SILENT)
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
    sim.set_fault(SDM630, citygate_sim.Fault.exception(0x04))
    driver = make_driver(tmp_path, port=sim.port, unit=SDM630, profile="eastron-sdm630")
    async with driver:
        with pytest.raises(DeviceError) as caught:
            await driver.poll()
        assert str(caught.value) == (
            "exception 4 (server device failure) reading input registers 0x0000–0x004F"
        )
        sim.set_fault(SDM630, None)
        assert len(await driver.poll()) == 84  # the connection stays usable


async def test_unknown_unit_behind_a_gateway(tmp_path: Path) -> None:
    meters = {1: citygate_sim.make_meter("typed")}
    async with citygate_sim.ModbusTcpSimulator(
        meters, port=0, unknown_unit="gateway_error"
    ) as gateway:
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
    sim.set_fault(SDM630, citygate_sim.Fault.SILENT)
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
    sim.set_fault(SDM630, citygate_sim.Fault.delay(QUICK * 1.5))
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
    sim.set_fault(SDM120, citygate_sim.Fault.SILENT)
    with pytest.raises(TransportError):
        await poll_once(
            tmp_path, port=sim.port, unit=SDM120, profile="eastron-sdm120", timeout=QUICK, retries=0
        )
    assert [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and not r.name.startswith("citygate_sim")
    ] == []


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


# ------------------------------------------------------------------ stray replies

ONE_REGISTER = [{"name": "x", "address": 0x10, "table": "input", "type": "uint32"}]


def with_tid(tid: int, reply: Reply) -> Reply:
    return lambda r: tid.to_bytes(2, "big") + reply(r)[2:]


@pytest.mark.parametrize("tid", [0, 0x7777])
async def test_replies_of_other_transactions_are_discarded_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tid: int
) -> None:
    caplog.set_level(logging.DEBUG)
    stray_then_good: Reply = lambda r: with_tid(tid, good)(r) + good(r)  # noqa: E731
    server = await serve_replies([stray_then_good, stray_then_good, good, stray_then_good])
    async with server:
        port = server.sockets[0].getsockname()[1]
        driver = make_driver(tmp_path, port=port, unit=3, registers=ONE_REGISTER)
        async with driver:
            for _ in range(4):
                assert await driver.poll() == [Measurement("x", 0x00010203)]
    assert driver.stray_replies == {"transaction_id": 3}
    # one line per episode: polls 1–2, then a clean poll, then poll 4
    lines = [r for r in caplog.records if r.name == "citygate.drivers.modbus.driver"]
    assert [r.getMessage() for r in lines] == 2 * [
        f"meter: discarding replies that answer no request in flight (first: transaction id"
        f" {tid}); counted, not logged again until a clean poll"
    ]
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in lines)


async def test_broken_framing_closes_the_connection_and_the_next_poll_reopens(
    tmp_path: Path,
) -> None:
    garbage: Reply = lambda r: b"\x00\x01\x45\x00" + bytes(20) + good(r)  # noqa: E731
    server = await serve_replies([garbage, good])
    async with server:
        port = server.sockets[0].getsockname()[1]
        driver = make_driver(tmp_path, port=port, unit=3, registers=ONE_REGISTER)
        async with driver:
            with pytest.raises(DecodeError, match="protocol id 17664"):
                await driver.poll()
            assert not driver._session.connected
            assert await driver.poll() == [Measurement("x", 0x00010203)]
    assert driver.stray_replies == {"framing": 1}


class HostileDevice:
    """A TCP device answering each request with one of many wrong things (seeded)."""

    TIMEOUT = 0.1  # the driver's; "late" replies come after it

    def __init__(self, seed: int) -> None:
        import random

        self.random = random.Random(seed)
        self.counts: dict[str, int] = {}
        self.server: asyncio.Server | None = None

    def answer(self, request: bytes) -> list[tuple[float, bytes]]:
        """(pause before, bytes) to send for ``request``."""
        right = good(request)
        tid = int.from_bytes(request[:2], "big")
        pdu = right[7:]
        kind = self.random.choices(
            [
                "good", "tid0", "stale", "after", "unit", "protocol", "short", "long",
                "garbage", "late", "silent", "dribble", "function", "count",
            ],
            weights=[30, 10, 8, 6, 4, 3, 3, 3, 3, 2, 1, 6, 2, 2],
        )[0]  # fmt: skip
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "tid0":
            return [(0, with_tid(0, good)(request) + right)]
        if kind == "stale":
            return [(0, with_tid((tid - 1) & 0xFFFF, good)(request)), (0.005, right)]
        if kind == "after":
            return [(0, right), (0.002, with_tid(0, good)(request))]
        if kind == "unit":
            return [(0, frame(request, pdu, unit=request[6] ^ 0x55))]
        if kind == "protocol":
            return [(0, frame(request, pdu, protocol=0xFFFF))]
        if kind == "short":  # the MBAP length stops inside the PDU
            return [(0, right[:4] + (3).to_bytes(2, "big") + right[6:])]
        if kind == "long":
            return [(0, right[:4] + (0x0123).to_bytes(2, "big") + right[6:])]
        if kind == "garbage":
            return [(0, self.random.randbytes(self.random.randint(1, 40)))]
        if kind == "late":
            return [(self.TIMEOUT * 1.5, right)]
        if kind == "silent":
            return []
        if kind == "dribble":
            return [(0.001, right[i : i + 3]) for i in range(0, len(right), 3)]
        if kind == "function":
            return [(0, frame(request, bytes([0x03]) + pdu[1:]))]
        if kind == "count":
            return [(0, frame(request, bytes([pdu[0], pdu[1] + 2]) + pdu[2:] + b"\x00\x00"))]
        return [(0, right)]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readexactly(12)
                for pause, data in self.answer(request):
                    if pause:
                        await asyncio.sleep(pause)
                    writer.write(data)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_hostile_device_300_polls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    device = HostileDevice(seed=11)
    server = await asyncio.start_server(device.handle, HOST, 0)
    outcomes: dict[str, int] = {}
    async with server:
        port = server.sockets[0].getsockname()[1]
        driver = make_driver(
            tmp_path,
            port=port,
            unit=3,
            timeout=HostileDevice.TIMEOUT,
            retries=1,
            registers=ONE_REGISTER,
        )
        async with asyncio.timeout(60), driver:
            for _ in range(300):  # a poll reopens a connection closed since the last one
                try:
                    readings = await driver.poll()
                except (TransportError, DecodeError) as exc:
                    name = type(exc).__name__
                else:
                    assert readings == [Measurement("x", 0x00010203)]
                    name = "ok"
                outcomes[name] = outcomes.get(name, 0) + 1
    assert outcomes["ok"] >= 150, (outcomes, device.counts)
    assert outcomes.get("DecodeError", 0) > 0
    assert driver.stray_replies["transaction_id"] >= device.counts["tid0"]
    assert driver.stray_replies["framing"] > 0
    assert driver.stray_replies["malformed"] > 0
    noisy = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING or r.exc_info is not None or "failed" in r.getMessage()
    ]
    assert noisy == []
    stray_lines = [r for r in caplog.records if r.name == "citygate.drivers.modbus.driver"]
    assert 0 < len(stray_lines) <= driver.stray_replies["transaction_id"]
