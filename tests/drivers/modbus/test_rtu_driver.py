"""The RTU driver against the RTU simulator, over a real pseudo-terminal.

Every built-in profile is read from a simulated meter serving that model's
datasheet map; bad input on the wire gives the right error and is counted per
device on the line.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from citygate.drivers.api import (
    DecodeError,
    DeviceContext,
    DeviceError,
    Measurement,
    SerialLineConfig,
    TransportError,
    canonical,
    shortest_float32,
)
from citygate.drivers.modbus.driver import ModbusExceptionError, ModbusRtuDriver, factory
from citygate.drivers.modbus.profile import builtin_profiles
from citygate.lines import LineOwner

citygate_sim = pytest.importorskip("citygate_sim.modbus")

BAUD = 38400  # fast: these tests are about behaviour; pacing is measured by the bench
SILENT_UNIT_1 = r"no answer from serial rs485 unit 1 .*3 attempts"
QUICK = 0.15  # seconds: reply timeout where a test waits for one to expire

# built-in profile -> simulator model serving that meter's datasheet map
PROFILE_MODELS = {
    "eastron-sdm630": "sdm630",
    "eastron-sdm120": "sdm120",
    "eastron-sdm72d": "sdm72d",
    "carlo-gavazzi-em24": "em24",
    "abb-b23": "abb-b23",
    "schneider-iem3255": "iem3255",
}


def f32(value: float) -> float:
    """What the driver reads from a float32 register holding ``value``: the float32, as its
    shortest decimal."""
    return shortest_float32(float(struct.unpack(">f", struct.pack(">f", value))[0]))


def line_config(port: str, timeout: float = 0.5) -> SerialLineConfig:
    return SerialLineConfig("rs485", port, BAUD, "N", 1, 8, timeout)


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = {
        unit: citygate_sim.make_meter(model, seed=unit)
        for unit, model in enumerate(PROFILE_MODELS.values(), start=1)
    }
    async with citygate_sim.ModbusRtuSimulator(meters, baudrate=BAUD) as simulator:
        for meter in meters.values():
            meter.freeze()
        yield simulator


def make_driver(
    tmp_path: Path, line: LineOwner | None, port: str, device_id: str = "meter", **options: Any
) -> ModbusRtuDriver:
    config_line = line.config if line is not None else line_config(port)
    context = DeviceContext(
        device_id,
        10.0,
        tmp_path,
        serial_lines={"rs485": config_line},
        lines={"rs485": line} if line is not None else {},
    )
    config = factory.configure({"serial": "rs485", **options}, context)
    driver = factory.create(config, context)
    assert isinstance(driver, ModbusRtuDriver)
    return driver


def test_every_builtin_profile_has_a_simulator_model() -> None:
    assert set(builtin_profiles()) == set(PROFILE_MODELS)


@pytest.mark.parametrize("profile", sorted(PROFILE_MODELS))
async def test_each_profile_reads_its_meter(sim: Any, tmp_path: Path, profile: str) -> None:
    unit = list(PROFILE_MODELS).index(profile) + 1
    meter = sim.meters[unit]
    line = LineOwner(line_config(sim.port))
    driver = make_driver(tmp_path, line, sim.port, unit=unit, profile=profile)
    try:
        async with driver:
            measurements = await driver.poll()
    finally:
        line.close()
    got = {m.name: m for m in measurements}
    if hasattr(meter, "physical"):  # datasheet value = raw / divisor, in the row's unit
        expected: dict[str, Measurement] = {}
        for name, (value, datasheet_unit) in meter.physical().items():
            unit_, factor = canonical(datasheet_unit or "/")
            expected[name] = Measurement(name, value * factor, unit_)
        assert set(got) == set(expected)
        for name, measurement in got.items():
            want = expected[name]
            # float32 registers come out as their shortest decimal: equal to float32 precision
            assert measurement.value == pytest.approx(want.value, rel=1e-7, abs=1e-9), name
            assert canonical(measurement.unit or "/")[0] == want.unit, name
    else:  # the Eastron models: float32 values, exactly as served
        truth = meter.truth()
        assert {name for name in got if name in truth} == set(got)
        for name, measurement in got.items():
            assert measurement.value == f32(truth[name]), name
    # the plan's requests and the identity read, and nothing else, went to this unit
    config = driver.config
    assert sim.requests_by_unit[unit] == len(config.plan.requests) + len(
        config.identity_plan.requests
    )
    # the identity registers the profile names, as the meter serves them, in the status
    served = {**meter.truth(), **meter.texts()}
    assert config.identity
    assert driver.status_facts() == {
        "meter": {spec.name: str(served[spec.name]) for spec in config.identity}
    }


async def test_without_a_line_owner_the_driver_fails_clearly(sim: Any, tmp_path: Path) -> None:
    orphan = make_driver(tmp_path, None, sim.port, unit=1, profile="eastron-sdm630")
    with pytest.raises(TransportError, match=r"serial rs485: no owner of this line .* meter"):
        async with orphan:
            pass
    assert sim.requests_by_unit.get(1, 0) == 0  # the driver never opened the port itself


async def test_read_raw_outside_the_plan(sim: Any, tmp_path: Path) -> None:
    line = LineOwner(line_config(sim.port))
    driver = make_driver(tmp_path, line, sim.port, unit=1, profile="eastron-sdm630")
    try:
        async with driver:
            measurements = await driver.poll()
            raw = await driver.read_raw("input", 0x0000, 2)
    finally:
        line.close()
    assert len(measurements) == len(driver.config.registers)
    truth = sim.meters[1].truth()
    voltage = struct.unpack(">f", struct.pack(">HH", *raw))[0]
    assert shortest_float32(voltage) == f32(truth["voltage_l1"])


@pytest.fixture
async def line(sim: Any) -> AsyncIterator[LineOwner]:
    owner = LineOwner(line_config(sim.port, QUICK))
    yield owner
    owner.close()


@pytest.mark.parametrize(
    ("fault", "problem", "message"),
    [
        ("crc", "crc", "CRC error in the reply"),
        ("truncated", "truncated", "truncated reply"),
        ("garbage", "garbage", "no Modbus RTU reply"),
        ("wrong_unit", "wrong_unit", "reply from unit 2, expected unit 1"),
    ],
)
async def test_bad_replies_are_decode_errors_counted_per_device(
    sim: Any, line: LineOwner, tmp_path: Path, fault: str, problem: str, message: str
) -> None:
    driver = make_driver(tmp_path, line, sim.port, "meter-1", unit=1, profile="eastron-sdm630")
    async with driver:
        sim.set_fault(1, citygate_sim.LineFault(fault))
        with pytest.raises(DecodeError, match=message):
            await driver.poll()
        sim.set_fault(1, None)
        assert len(await driver.poll()) == len(driver.config.registers)  # resynchronised
    assert line.devices["meter-1"].problems[problem] >= 1


async def test_an_exception_reply_is_a_device_error(
    sim: Any, line: LineOwner, tmp_path: Path
) -> None:
    driver = make_driver(tmp_path, line, sim.port, "meter-1", unit=1, profile="eastron-sdm630")
    async with driver:
        await driver.poll()  # reads the identity registers too: not again on this connection
        sim.set_fault(1, citygate_sim.Fault.exception(4))
        with pytest.raises(ModbusExceptionError, match="exception 4") as caught:
            await driver.poll()
    assert isinstance(caught.value, DeviceError)
    assert caught.value.code == 4
    assert line.devices["meter-1"].problems["exception"] == 1


async def test_a_silent_unit_costs_retries_plus_one_exchanges(
    sim: Any, line: LineOwner, tmp_path: Path
) -> None:
    driver = make_driver(
        tmp_path, line, sim.port, "meter-1", unit=1, profile="eastron-sdm630", retries=2
    )
    async with driver:
        sim.set_fault(1, citygate_sim.Fault.SILENT)
        with pytest.raises(TransportError, match=SILENT_UNIT_1):
            await driver.poll()
    stats = line.devices["meter-1"]
    assert (stats.transactions, stats.timeouts) == (3, 3)  # the first request only
    assert sim.requests_by_unit[1] == 3


async def test_stray_bytes_on_the_line_are_discarded_and_counted(
    sim: Any, line: LineOwner, tmp_path: Path
) -> None:
    driver = make_driver(tmp_path, line, sim.port, "meter-1", unit=1, profile="eastron-sdm120")
    async with driver:
        await driver.poll()
        sim.inject_noise(b"\x13\x37\x00\xff")
        # The noise arrives before the next request goes out, or in its reply window:
        # either way the poll succeeds and the bytes are counted.
        while sim.bytes_sent < 4:
            await driver.poll()
        measurements = await driver.poll()
    assert len(measurements) == len(driver.config.registers)
    stats = line.devices["meter-1"]
    assert stats.stale_bytes + stats.problems["stray_bytes"] >= 1


async def test_a_strict_meter_gets_gap_free_reads_over_rtu(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    strict = citygate_sim.make_meter("sdm120", seed=3, unmapped="exception")
    strict.freeze()
    async with citygate_sim.ModbusRtuSimulator({1: strict}, baudrate=BAUD) as simulator:
        owner = LineOwner(line_config(simulator.port))
        driver = make_driver(tmp_path, owner, simulator.port, unit=1, profile="eastron-sdm120")
        try:
            async with driver:
                with caplog.at_level(logging.INFO, logger="citygate.drivers.modbus.driver"):
                    first = await driver.poll()
                second = await driver.poll()
        finally:
            owner.close()
    assert first == second
    assert len(first) == len(driver.config.registers)
    assert driver.config.plan.split_count >= 1
    assert "meter refuses reads across unused registers" in caplog.text
