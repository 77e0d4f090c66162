"""The mbus driver against the M-Bus simulator, over a real pseudo-terminal.

The simulator encodes its telegrams from EN 13757-3 itself (citygate_sim.mbus), so a
value read here went through two independent implementations of the standard.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.api import (
    DecodeError,
    DeviceContext,
    Measurement,
    SerialLineConfig,
    TransportError,
)
from citygate.drivers.mbus.driver import MbusDriver, MbusFactory, MbusReplyFramer
from citygate.drivers.mbus.link import encode_req_ud2
from citygate.lines import LineOwner

citygate_sim = pytest.importorskip("citygate_sim.mbus")

BAUD = 9600  # behaviour tests; 2400-baud pacing is measured in test_readout_at_2400_baud
WATER = 12345678
WATER_2 = 12345699  # shares the prefix 1234 with WATER: a wildcard 1234FFFF matches both
WARM = 87654321


def line_config(port: str, baudrate: int = BAUD) -> SerialLineConfig:
    return SerialLineConfig("mbus", port, baudrate, "N", 1, 8, 1.0)


_OWNED: list[LineOwner] = []  # line owners make_driver made, closed after each test


@pytest.fixture(autouse=True)
async def _close_owned_lines() -> AsyncIterator[None]:
    yield
    while _OWNED:
        _OWNED.pop().close()


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = [
        citygate_sim.WaterMeter(WATER, 5, telegrams=2, unknown_vif=True, seed=1),
        citygate_sim.WaterMeter(WATER_2, 6, seed=2),
        citygate_sim.WaterMeter(
            WARM, 7, manufacturer="ABB", version=3, medium="warm_water", seed=3
        ),
    ]
    for meter in meters:
        meter.freeze()
    async with citygate_sim.MbusSimulator(meters, baudrate=BAUD) as simulator:
        yield simulator


def make_driver(
    tmp_path: Path,
    port: str,
    address: int | str,
    *,
    line: LineOwner | None = None,
    factory: MbusFactory | None = None,
    device_id: str = "water",
    **options: Any,
) -> MbusDriver:
    factory = factory or MbusFactory()
    if line is None:  # as the runtime does: every line has an owner
        line = LineOwner(line_config(port), protocol="mbus")
        _OWNED.append(line)
    context = DeviceContext(
        device_id,
        900.0,
        tmp_path,
        serial_lines={"mbus": line.config},
        lines={"mbus": line},
    )
    config = factory.configure({"serial": "mbus", "address": address, **options}, context)
    return factory.create(config, context)


def by_name(measurements: list[Measurement]) -> dict[str, Measurement]:
    names = [m.name for m in measurements]
    assert len(names) == len(set(names)), names
    return {m.name: m for m in measurements}


def requests(sim: Any) -> list[tuple[int, int]]:
    return [(r.control, r.address) for _, r in sim.request_log]


def expected_readings(meter: Any) -> dict[str, tuple[Any, str | None]]:
    v = meter.values()
    return {
        "meter_status": (v.status, None),
        "volume": (pytest.approx(v.volume_m3), "m3"),
        "volume_flow": (pytest.approx(v.flow_m3h), "m3/h"),
        "datetime": (v.datetime.strftime("%Y-%m-%dT%H:%M"), None),
        "flow_temperature": (pytest.approx(v.flow_temperature_c), "Cel"),
        "external_temperature": (pytest.approx(v.external_temperature_c), "Cel"),
        "operating_time": (v.operating_time_h, "h"),
        "date_s1": (v.due_date.isoformat(), None),
        "volume_s1": (pytest.approx(v.volume_due_m3), "m3"),
        "fabrication_number": (meter.ident, None),
        "error_flags": (v.error_flags, "count"),
    }


def assert_readings(measurements: list[Measurement], meter: Any) -> None:
    got = by_name(measurements)
    for name, (value, unit) in expected_readings(meter).items():
        reading = got.pop(name)
        shown = reading.value[:16] if name == "datetime" else reading.value  # type: ignore[index]
        assert (shown, reading.unit) == (value, unit), name
    assert set(got) <= {"vif_6f"}


# --------------------------------------------------------------------------- primary


async def test_primary_readout_resets_once_then_toggles_fcb(sim: Any, tmp_path: Path) -> None:
    meter = sim.meters[0]
    async with make_driver(tmp_path, sim.port, 5) as driver:
        first = await driver.poll()
        second = await driver.poll()
    assert_readings(first, meter)
    assert second == first  # the meter is frozen: the same readout again
    # SND_NKE once; two telegrams a readout (DIF 0x1F); FCB set after the reset, then toggled
    assert requests(sim) == [(0x40, 5), (0x7B, 5), (0x5B, 5), (0x7B, 5), (0x5B, 5)]
    assert driver.status_facts()["meter"] == {
        "id": "12345678",
        "manufacturer": "HYD",
        "version": 0x29,
        "medium": "water",
    }
    mbus = driver.status_facts()["mbus"]
    assert (mbus["telegrams"], mbus["unknown_records"]) == (2, 1)


async def test_unknown_vif_is_kept_under_a_generic_name(sim: Any, tmp_path: Path) -> None:
    async with make_driver(tmp_path, sim.port, 5) as driver:
        got = by_name(await driver.poll())
    assert got["vif_6f"].value == 4711


async def test_records_filter_keeps_meter_status_and_the_named_records(
    sim: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_driver(tmp_path, sim.port, 6, records=["volume", "no_such"]) as driver:
        got = by_name(await driver.poll())
    assert set(got) == {"meter_status", "volume"}
    assert got["volume"].value == pytest.approx(sim.meters[1].values().volume_m3)
    assert "no_such" in caplog.text


async def test_real32_flow_and_header_of_a_warm_water_meter(sim: Any, tmp_path: Path) -> None:
    meter = sim.meters[2]
    async with make_driver(tmp_path, sim.port, 7) as driver:
        measurements = await driver.poll()
    assert_readings(measurements, meter)
    assert driver.status_facts()["meter"] == {
        "id": "87654321",
        "manufacturer": "ABB",
        "version": 3,
        "medium": "warm_water",
    }


async def test_status_and_error_flags_reach_the_readings(sim: Any, tmp_path: Path) -> None:
    meter = sim.meters[1]
    meter.status = (
        citygate_sim.STATUS_BITS["power_low"] | citygate_sim.STATUS_BITS["temporary_error"]
    )
    meter.error_flags = 0x0102
    async with make_driver(tmp_path, sim.port, 6) as driver:
        got = by_name(await driver.poll())
    assert got["meter_status"].value == 0x14
    assert got["error_flags"].value == 0x0102


async def test_volume_only_increases_between_polls(tmp_path: Path) -> None:
    meter = citygate_sim.WaterMeter(WATER, 5, seed=4)
    meter.freeze()
    async with (
        citygate_sim.MbusSimulator([meter], baudrate=BAUD) as sim,
        make_driver(tmp_path, sim.port, 5) as driver,
    ):
        volumes: list[float] = []
        for _ in range(3):
            volume = by_name(await driver.poll())["volume"].value
            assert isinstance(volume, float)
            volumes.append(volume)
            meter.advance(6 * 3600)  # the morning: water is drawn
    assert volumes[0] < volumes[1] < volumes[2]


# --------------------------------------------------------------------------- secondary


@pytest.mark.parametrize("address", ["12345678", "1234567F", "12345678232429FF"])
async def test_secondary_address_selects_then_reads_from_253(
    sim: Any, tmp_path: Path, address: str
) -> None:
    async with make_driver(tmp_path, sim.port, address) as driver:
        assert_readings(await driver.poll(), sim.meters[0])
        await driver.poll()
    # every poll selects again (another device may have selected another meter)
    select, nke = (0x53, 253), (0x40, 5)
    assert requests(sim) == [select, (0x7B, 253), (0x5B, 253), select, (0x7B, 253), (0x5B, 253)]
    assert nke not in requests(sim)


async def test_a_wildcard_matching_two_meters_is_a_counted_collision(
    sim: Any, tmp_path: Path
) -> None:
    async with make_driver(tmp_path, sim.port, "1234FFFF") as driver:
        with pytest.raises(DecodeError, match="collision"):
            await driver.poll()
    assert driver.status_facts()["mbus"]["collision"] == 3  # 3 attempts, all garbled
    assert sim.collisions == 3


async def test_a_secondary_address_nobody_has_is_silence(sim: Any, tmp_path: Path) -> None:
    async with make_driver(tmp_path, sim.port, "99999999") as driver:
        with pytest.raises(TransportError, match=r"no answer .* to a selection \(3 attempts\)"):
            await driver.poll()


async def test_without_a_line_owner_the_driver_fails_clearly(sim: Any, tmp_path: Path) -> None:
    context = DeviceContext("water", 900.0, tmp_path, serial_lines={"mbus": line_config(sim.port)})
    factory = MbusFactory()
    driver = factory.create(factory.configure({"serial": "mbus", "address": 5}, context), context)
    with pytest.raises(TransportError, match=r"serial mbus: no owner of this line .* water"):
        async with driver:
            pass
    assert not sim.request_log  # the driver never opened the port itself


# --------------------------------------------------------------------------- faults


async def test_bad_checksum_once_is_retried_with_the_same_fcb(sim: Any, tmp_path: Path) -> None:
    meter = sim.meters[1]
    line = LineOwner(line_config(sim.port), protocol="mbus")
    try:
        async with make_driver(tmp_path, sim.port, 6, line=line) as driver:
            await driver.poll()
            sim.set_fault(meter, citygate_sim.MbusFault.CHECKSUM, times=1)
            sim.request_log.clear()
            assert_readings(await driver.poll(), meter)
    finally:
        line.close()
    assert requests(sim) == [(0x5B, 6), (0x5B, 6)]  # the retry repeats FCB 0
    assert driver.status_facts()["mbus"]["checksum"] == 1
    assert line.devices["water"].problems["checksum"] == 1


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (citygate_sim.MbusFault.TRUNCATED, "truncated"),
        (citygate_sim.MbusFault.COLLISION, "collision"),
    ],
)
async def test_garbled_answers_are_retried_then_a_decode_error(
    sim: Any, tmp_path: Path, fault: Any, kind: str
) -> None:
    meter = sim.meters[0]
    async with make_driver(tmp_path, sim.port, 5) as driver:
        await driver.poll()
        sim.set_fault(meter, fault)
        with pytest.raises(DecodeError, match="3 attempts"):
            await driver.poll()
        assert driver.status_facts()["mbus"][kind] == 3
        sim.set_fault(meter, None)
        sim.request_log.clear()
        assert_readings(await driver.poll(), meter)
    # after a failed readout the next one starts with a reset
    assert requests(sim)[0] == (0x40, 5)


async def test_a_silent_meter_does_not_stop_the_others(sim: Any, tmp_path: Path) -> None:
    silent, other = sim.meters[0], sim.meters[2]
    sim.set_fault(silent, citygate_sim.MbusFault.SILENT)
    line = LineOwner(line_config(sim.port), protocol="mbus")
    factory = MbusFactory()
    try:
        async with (
            make_driver(tmp_path, sim.port, 5, line=line, factory=factory) as mute,
            make_driver(
                tmp_path, sim.port, 7, line=line, factory=factory, device_id="warm"
            ) as warm,
        ):
            async with asyncio.TaskGroup() as tg:
                failed = tg.create_task(_expect_silence(mute))
                readings = [tg.create_task(warm.poll()) for _ in range(2)]
            assert "3 attempts" in failed.result()
            for task in readings:
                assert_readings(task.result(), other)
    finally:
        line.close()
    assert line.devices["water"].timeouts == 3
    assert line.devices["water"].problems["silent"] == 3
    assert line.devices["warm"].timeouts == 0
    # the counts live in the factory: a rebuilt driver still reports them
    rebuilt = make_driver(tmp_path, sim.port, 5, factory=factory)
    assert rebuilt.status_facts()["mbus"]["silent"] == 3


async def _expect_silence(driver: MbusDriver) -> str:
    with pytest.raises(TransportError) as caught:
        await driver.poll()
    return str(caught.value)


async def test_several_meters_share_one_line(sim: Any, tmp_path: Path) -> None:
    line = LineOwner(line_config(sim.port), protocol="mbus")
    factory = MbusFactory()
    addresses: list[int | str] = [5, 6, "87654321"]
    try:
        drivers = [
            make_driver(tmp_path, sim.port, a, line=line, factory=factory, device_id=f"m{i}")
            for i, a in enumerate(addresses)
        ]
        for driver in drivers:
            await driver.__aenter__()
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(d.poll()) for d in drivers for _ in range(2)]
        for driver in drivers:
            await driver.__aexit__(None, None, None)
    finally:
        line.close()
    for index, task in enumerate(tasks):
        assert_readings(task.result(), sim.meters[index // 2])
    assert sim.collisions == 0
    assert set(line.devices) == {"m0", "m1", "m2"}


async def test_readout_at_2400_baud_takes_its_wire_time(tmp_path: Path) -> None:
    meter = citygate_sim.WaterMeter(WATER, 5, telegrams=2, seed=5)
    meter.freeze()
    frames = meter.readout()
    async with citygate_sim.MbusSimulator([meter], baudrate=2400) as sim:
        factory = MbusFactory()
        line = LineOwner(line_config(sim.port, 2400), protocol="mbus")
        context = DeviceContext(
            "water", 900.0, tmp_path, serial_lines={"mbus": line.config}, lines={"mbus": line}
        )
        config = factory.configure({"serial": "mbus", "address": 5}, context)
        try:
            async with factory.create(config, context) as driver:
                assert_readings(await driver.poll(), meter)
        finally:
            line.close()
    # what crossed the wire: 3 requests of 5 bytes, an E5, the two telegrams
    assert sim.bytes_received == 15
    assert sim.bytes_sent == 1 + sum(len(f) for f in frames)


# --------------------------------------------------------------------------- the framer


@given(
    noise=st.binary(max_size=12).filter(lambda b: not {0x10, 0x68, 0xE5} & set(b)),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_framer_finds_the_answer_however_the_bytes_arrive(noise: bytes, cuts: list[int]) -> None:
    meter = citygate_sim.WaterMeter(WATER, 5, seed=6)
    meter.freeze()
    frame = meter.readout()[0]
    stream = noise + frame
    framer = MbusReplyFramer("frame", 5)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    done = False
    for start, end in itertools.pairwise(bounds):
        done = framer.feed(stream[start:end])
    assert done
    assert framer.answer is not None
    assert getattr(framer.answer, "raw", None) == frame


def test_framer_sets_aside_a_frame_from_another_address() -> None:
    meter = citygate_sim.WaterMeter(WATER, 9, seed=7)
    framer = MbusReplyFramer("frame", 5)
    assert not framer.feed(meter.readout()[0])
    assert framer.failure() == ("wrong_address", "an answer from address 9")


def test_framer_finds_the_answer_behind_a_false_frame_start() -> None:
    frame = citygate_sim.WaterMeter(WATER, 5, seed=8).readout()[0]
    framer = MbusReplyFramer("frame", 5)
    # garbage that looks like a long frame header announces 255 bytes: wait for them...
    assert not framer.feed(bytes.fromhex("68 FF FF 68") + frame)
    framer.finish()  # ...until the reply window is over, then look behind it
    assert framer.answer is not None
    assert getattr(framer.answer, "raw", None) == frame


def test_framer_verdicts_after_the_timeout() -> None:
    truncated = MbusReplyFramer("frame", 5)
    truncated.feed(citygate_sim.WaterMeter(WATER, 5).readout()[0][:30])
    assert truncated.failure()[0] == "truncated"
    silent = MbusReplyFramer("ack")
    assert silent.failure() == ("silent", "no answer")
    request_echo = MbusReplyFramer("ack")  # a short frame is no acknowledgement
    assert not request_echo.feed(encode_req_ud2(5, fcb=True))
    assert request_echo.failure()[0] == "collision"


# --------------------------------------------------------------------------- sample.toml


def test_sample_toml_is_a_valid_config(tmp_path: Path) -> None:
    from citygate import registry
    from citygate.config import load

    sample = Path(__file__).parents[3] / "drivers" / "mbus" / "sample.toml"
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nid = "gw"\ndata_dir = "{tmp_path}"\n\n' + sample.read_text())
    loaded = load(config, registry.factories())
    main, basement = (d.driver_config for d in loaded.devices)
    assert main.address.value == 5
    assert str(basement.address) == "1234567823242907"
    assert basement.records == frozenset({"volume", "volume_flow", "error_flags"})
    assert loaded.serial["mbus"].parity == "E"


def test_a_babbling_bus_does_not_grow_the_reply_framer() -> None:
    """1 MiB of garbage in one reply window (issue 12): what is set aside is counted, not kept."""
    import random
    import tracemalloc

    rng = random.Random(12)
    garbage = bytes(rng.choice((0x00, 0x55, 0xAA, 0xFF)) for _ in range(1 << 20))  # no frame start
    framer = MbusReplyFramer("frame", 5)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for start in range(0, len(garbage), 64):
            framer.feed(garbage[start : start + 64])
        framer.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert framer.answer is None
    assert framer.discarded_bytes == len(garbage)
    assert framer.failure()[0] == "collision"
    assert peak < 256 * 1024, f"peak {peak} bytes while 1 MiB of garbage went by"
