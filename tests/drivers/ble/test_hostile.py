"""Hostile air and hostile captures (issue 12): what anyone with a phone or a crafted capture
file can send must be refused or dropped, counted, logged once, and never crash anything.

Adverts go in at bleak's own backend interface (:mod:`.radio`); encrypted ones come from the
hardware simulator's BTHome encoder, an oracle independent of the driver's decoder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.api import DecodeError, Measurement
from citygate.drivers.ble import bthome, pvvx, ruuvi
from citygate.drivers.ble.advert import MAX_LINE_CHARS, Advert, CaptureError, from_line
from citygate.drivers.ble.config import BleDeviceConfig
from citygate.drivers.ble.decode import AdvertDecoder, detect
from citygate.drivers.ble.driver import EVENTS_PER_INTERVAL
from citygate.drivers.ble.pvvx import ENVIRONMENT_UUID
from citygate.drivers.ble.replay import ReplaySource
from citygate.drivers.ble.ruuvi import RUUVI_COMPANY_ID
from citygate_sim.ble import DEMO_BINDKEY, BleSimulator, SensorSpec

from .radio import FakeClock, ManualClock, Radio
from .test_driver import Emitted, driver_on, make_hub, running
from .test_driver import bthome as bthome_data

KEYED = "54:48:E6:8F:80:A5"
PLAIN_BTHOME = bthome_data("4002CA0903BF13")  # 25.06 °C, 50.55 %
PVVX = {ENVIRONMENT_UUID: bytes.fromhex("A5808FE64854C409F11E2A0B55C304")}
RUUVI = {RUUVI_COMPANY_ID: bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")}


def encrypted_adverts(count: int, address: str = KEYED) -> list[dict[str, bytes]]:
    """Service data of ``count`` encrypted BTHome adverts, counters 1, 2, …, from the simulator."""
    spec = SensorSpec(address, "bthome", 1.0, bindkey=DEMO_BINDKEY)
    simulator = BleSimulator([spec], seed=3, start=1_764_000_000.0)
    records = list(simulator.adverts(simulator.start + count))[:count]
    assert len(records) == count
    return [{k: bytes.fromhex(v) for k, v in r["service_data"].items()} for r in records]


def warnings_about(caplog: pytest.LogCaptureFixture, word: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and word in r.getMessage()
    ]


# --------------------------------------------------------------------------- (1) bindkey


@pytest.mark.parametrize("advert_format", ["auto", "bthome"])
async def test_a_keyed_device_refuses_unencrypted_adverts_counts_and_logs_once(
    advert_format: str, caplog: pytest.LogCaptureFixture
) -> None:
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    driver = driver_on(hub, clock, BleDeviceConfig(KEYED, advert_format, DEMO_BINDKEY), 10)
    emitted = Emitted(clock)
    caplog.set_level(logging.INFO)
    async with running(hub.run()), running(driver.run(emitted)):
        for _ in range(50):  # a phone sending readings under the sensor's address
            radio.advertise(KEYED, service_data=PLAIN_BTHOME)
            radio.advertise(KEYED, service_data=PVVX)
            radio.advertise(KEYED, manufacturer_data=RUUVI)
        assert emitted.samples == []
        assert driver.status_facts()["rejected_adverts"] == 150
        assert len(warnings_about(caplog, "refused an unencrypted advert")) == 1
        genuine = encrypted_adverts(8)
        radio.advertise(KEYED, service_data=genuine[0])
        assert len(emitted.samples) == 1 and "temperature" in emitted.values[0]
        assert emitted.values[0]["temperature"] != 25.06
        # The episode ends after a quiet minute (logged with its count); the next one starts it
        # again, so a flood is one warning per episode, not one per advert.
        for advert in genuine[1:8]:
            await clock.advance(9)
            radio.advertise(KEYED, service_data=advert)
        assert "no unencrypted advert refused for a while (150 in all)" in caplog.text
        radio.advertise(KEYED, service_data=PLAIN_BTHOME)
        assert len(warnings_about(caplog, "refused an unencrypted advert")) == 2
        assert driver.status_facts()["rejected_adverts"] == 151


def test_a_keyless_device_still_takes_plain_adverts() -> None:
    decoder = AdvertDecoder("auto")
    decoded = decoder.decode(Advert(KEYED, 0.0, service_data=PLAIN_BTHOME))
    assert decoded is not None and decoder.rejected == 0


# --------------------------------------------------------------------------- (3) event flood


async def test_an_event_flood_is_capped_per_interval_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    driver = driver_on(hub, clock, BleDeviceConfig(KEYED, "auto"), 60)
    emitted = Emitted(clock)
    async with running(hub.run()), running(driver.run(emitted)):
        radio.advertise(KEYED, service_data=PLAIN_BTHOME)  # the first sample goes out at once
        presses = 5000
        for n in range(presses):  # spoofed button presses, each with a new packet id
            radio.advertise(KEYED, service_data=bthome_data(f"4000{n % 256:02X}3A01"))
        await clock.advance(60)
        events = [s for _, s in emitted.samples if "button" in s]
        assert len(emitted.samples) == 2 and len(events) == 1
        # Events are held once per sample, so count what the driver kept: the cap.
        assert driver.status_facts()["dropped_events"] == presses - EVENTS_PER_INTERVAL
    assert len(warnings_about(caplog, "events in one interval")) == 1


async def test_events_held_never_exceed_the_cap() -> None:
    """The memory the flood can take: the events waiting for the next sample."""
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    driver = driver_on(hub, clock, BleDeviceConfig(KEYED, "auto"), 60)
    published: list[int] = []

    def emit(measurements: Sequence[Measurement]) -> None:
        published.append(sum(1 for m in measurements if m.name == "button"))

    async with running(hub.run()), running(driver.run(emit)):
        for n in range(50_000):
            radio.advertise(KEYED, service_data=bthome_data(f"4000{n % 256:02X}3A01"))
        await clock.advance(60)
    assert published == [1, EVENTS_PER_INTERVAL]
    assert driver.tally.dropped_events == 50_000 - 1 - EVENTS_PER_INTERVAL


# --------------------------------------------------------------------------- (4) captures

HUGE_COMPANY_ID = (
    '{"t": 1, "address": "A4:C1:38:5B:0F:21", "manufacturer_data": {"' + "9" * 5000 + '": "00"}}'
)
DEEP = '{"t": 1, "address": "A4:C1:38:5B:0F:21", "name": ' + "[" * 100_000 + "]" * 100_000 + "}"
HUGE_T = '{"t": ' + "1" * 5000 + ', "address": "A4:C1:38:5B:0F:21"}'
GOOD = (
    '{"t": 100.0, "address": "A4:C1:38:8D:18:B2", '
    f'"service_data": {{"{bthome.BTHOME_UUID}": "4002ca0903bf13"}}}}'
)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (HUGE_COMPANY_ID, "company id"),
        (DEEP[:MAX_LINE_CHARS], "nested too deeply|not JSON"),
        (HUGE_T, "digits"),
        ('{"t": 1, "address": "A4:C1:38:5B:0F:21", "rssi": 100000}', "rssi"),
        ('{"t": 1, "address": "A4:C1:38:5B:0F:21", "manufacturer_data": {"١٢": ""}}', "decimal"),
        (GOOD[:-1] + ', "name": "' + "x" * MAX_LINE_CHARS + '"}', "at most"),
    ],
)
def test_hostile_capture_lines_are_capture_errors(line: str, message: str) -> None:
    with pytest.raises(CaptureError, match=message):
        from_line(line)


async def test_replay_counts_every_bad_line_and_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "hostile.jsonl"
    bad = [HUGE_COMPANY_ID, DEEP, HUGE_T, "x" * (3 * MAX_LINE_CHARS), "\xff\x00 not json"]
    with path.open("w", encoding="utf-8") as stream:
        for line in bad:
            stream.write(GOOD + "\n" + line + "\n")
        stream.write(GOOD + "\n")
    clock = FakeClock(start=0.0)
    source = ReplaySource(path, sleep=clock.sleep, wall_clock=clock)
    heard: list[Advert] = []
    await source.run(heard.append, lambda: None)
    assert source.bad_lines == len(bad)
    assert len(heard) == source.replayed == len(bad) + 1


async def test_an_endless_line_is_skipped_in_bounded_reads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "long.jsonl"
    with path.open("w", encoding="utf-8") as stream:
        stream.write("{" * (4 * 1024 * 1024))  # 4 MiB without a newline, then a good line
        stream.write("\n" + GOOD + "\n")
    clock = FakeClock(start=0.0)
    source = ReplaySource(path, sleep=clock.sleep, wall_clock=clock)
    heard: list[Advert] = []
    await source.run(heard.append, lambda: None)
    assert source.bad_lines == 1 and len(heard) == 1
    assert f"long.jsonl:1: skipped: line longer than {MAX_LINE_CHARS} bytes" in caplog.text


async def test_a_capture_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    source = ReplaySource(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        await source.run(lambda advert: None, lambda: None)


# --------------------------------------------------------------------------- decoders: any bytes

_UUIDS = st.sampled_from([bthome.BTHOME_UUID, pvvx.ENVIRONMENT_UUID, "0000feaa-0000-1000"])


@given(
    st.dictionaries(_UUIDS, st.binary(max_size=64), max_size=3),
    st.dictionaries(st.sampled_from([RUUVI_COMPANY_ID, 0x004C]), st.binary(max_size=64)),
    st.sampled_from(["auto", "bthome", "pvvx", "atc", "ruuvi"]),
    st.one_of(st.none(), st.just(DEMO_BINDKEY)),
)
def test_any_advert_decodes_or_is_counted_never_raises(
    service_data: dict[str, bytes],
    manufacturer_data: dict[int, bytes],
    advert_format: str,
    key: bytes | None,
) -> None:
    advert = Advert(KEYED, 0.0, -60, None, service_data, manufacturer_data)
    decoder = AdvertDecoder(advert_format, key)
    decoded = decoder.decode(advert)
    assert decoded is None or decoded.measurements
    detect(advert)


@given(st.binary(max_size=64), st.sampled_from([None, "pvvx", "atc"]))
def test_pvvx_any_bytes(payload: bytes, layout: str | None) -> None:
    with contextlib.suppress(DecodeError):
        pvvx.parse(payload, layout)


@given(st.binary(max_size=64))
def test_ruuvi_any_bytes(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        ruuvi.parse(payload)


@given(st.binary(max_size=64), st.one_of(st.none(), st.just(DEMO_BINDKEY)))
def test_bthome_any_bytes_with_the_address_in_the_packet(payload: bytes, key: bytes | None) -> None:
    with contextlib.suppress(DecodeError):
        bthome.parse(bytes([0x42 | (payload[:1] or b"\0")[0] & 1]) + payload, KEYED, key)


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_capture_line_is_an_advert_or_a_capture_error(line: str) -> None:
    with contextlib.suppress(CaptureError):
        from_line(line)


@given(
    st.recursive(
        st.none() | st.integers() | st.text(max_size=5),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=5), c),
    )
)
def test_any_json_value_is_an_advert_or_a_capture_error(value: object) -> None:
    for record in (value, {"t": 1, "address": KEYED, "service_data": value},
                   {"t": 1, "address": KEYED, "manufacturer_data": value}):  # fmt: skip
        with contextlib.suppress(CaptureError):
            from_line(json.dumps(record))
