"""The M-Bus simulator: its encoder against the standard's own examples, the
meters' link behaviour (sans-I/O), faults, and ``citygate-sim mbus`` on a pty.

Expected bytes are worked out by hand from EN 13757-2/-3, never through
citygate's decoder (the simulator is the decoder's independent oracle).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import tty
from datetime import date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate_sim.mbus import (
    ACK,
    MbusFault,
    MbusRequestDecoder,
    MbusSimulator,
    Record,
    Request,
    WaterMeter,
    bcd,
    date_g,
    datetime_f,
    long_frame,
    manufacturer_code,
    matches_secondary,
    short_frame,
)
from tests.sim import command

TIMEOUT = 10.0
SND_NKE, REQ_UD2, FCB = 0x40, 0x5B, 0x20


def select(ident: str, rest: bytes = b"\xff\xff\xff\xff") -> Request:
    return Request(0x53, 253, 0x52, bytes.fromhex(ident)[::-1] + rest)


def meter(ident: int = 12345678, address: int = 5, **options: object) -> WaterMeter:
    m = WaterMeter(ident, address, **options)  # type: ignore[arg-type]
    m.freeze()
    return m


# --------------------------------------------------------------------------- encoding


def test_frames_and_checksums() -> None:
    assert short_frame(SND_NKE, 5) == bytes.fromhex("10 40 05 45 16")
    assert short_frame(0x7B, 0xFD) == bytes.fromhex("10 7B FD 78 16")
    assert long_frame(0x08, 5, 0x72, b"") == bytes.fromhex("68 03 03 68 08 05 72 7F 16")
    assert long_frame(0x08, 1, 0x72, b"\xff\xff")[-2] == (0x08 + 1 + 0x72 + 0xFF + 0xFF) % 256
    with pytest.raises(ValueError, match="do not fit"):
        long_frame(0x08, 1, 0x72, bytes(253))


def test_value_types() -> None:
    assert bcd(12345678, 8) == bytes.fromhex("78 56 34 12")
    assert bcd(-123, 4) == bytes.fromhex("23 F1")  # negative BCD: F in the top nibble
    with pytest.raises(ValueError, match="does not fit"):
        bcd(123456, 4)
    # manufacturer: 32^2 (c1 - 64) + 32 (c2 - 64) + (c3 - 64)
    assert manufacturer_code("HYD") == 0x2324
    assert manufacturer_code("ABB") == 0x0442
    # type G: day | year<2:0> << 5, month | year<6:3> << 4
    assert date_g(date(2025, 12, 31)) == bytes.fromhex("3F 3C")
    # type F: minute, hour, day | year<2:0> << 5, month | year<6:3> << 4
    assert datetime_f(datetime(2026, 11, 25, 17, 14)) == bytes.fromhex("0E 11 59 3B")


def test_dif_and_difes() -> None:
    assert Record.dib_for(0x0C) == b"\x0c"
    assert Record.dib_for(0x0C, storage=1) == b"\x4c"
    assert Record.dib_for(0x04, storage=2) == bytes.fromhex("84 01")
    assert Record.dib_for(0x04, tariff=1) == bytes.fromhex("84 10")
    assert Record.dib_for(0x04, subunit=1, function=1) == bytes.fromhex("94 40")
    # storage 33 = 1 (DIF bit 6) + 16 << 1: nibbles 0 and 1 in two DIFEs
    assert Record.dib_for(0x04, storage=33) == bytes.fromhex("C4 80 01")


def test_telegram_layout() -> None:
    m = meter(telegrams=2)
    first, second = m.readout()
    assert first[:4] == bytes((0x68, len(first) - 6, len(first) - 6, 0x68))
    assert first[4:7] == bytes.fromhex("08 05 72")  # RSP_UD from address 5, CI 72
    assert first[7:11] == bytes.fromhex("78 56 34 12")  # id, LSB first
    assert first[11:13] == bytes.fromhex("24 23")  # HYD
    assert first[13:15] == bytes.fromhex("29 07")  # version, medium water
    assert first[-3] == 0x1F  # more records follow
    assert second[-5:-2] == bytes.fromhex("0F 01 02")  # manufacturer data, last telegram
    assert second[15] == (first[15] + 1) % 256  # access number counts


@given(st.lists(st.floats(min_value=0, max_value=86_400), max_size=8))
def test_volume_only_increases(steps: list[float]) -> None:
    m = meter(seed=len(steps))
    volumes = [m.values().volume_m3]
    for seconds in steps:
        m.advance(seconds)
        volumes.append(m.values().volume_m3)
    assert volumes == sorted(volumes)


def test_bad_meter_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="8 digits"):
        WaterMeter(123456789)
    with pytest.raises(ValueError, match="0–250"):
        WaterMeter(1, 251)
    with pytest.raises(ValueError, match="medium"):
        WaterMeter(1, medium="lava")


# --------------------------------------------------------------------------- requests


@given(
    noise=st.binary(max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=6),
)
def test_requests_are_framed_however_the_bytes_arrive(noise: bytes, cuts: list[int]) -> None:
    stream = noise + short_frame(SND_NKE, 5) + short_frame(REQ_UD2 | FCB, 5)
    decoder = MbusRequestDecoder()
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    got: list[Request] = []
    for start, end in itertools.pairwise(bounds):
        got += decoder.feed(stream[start:end])
    # the two requests always come out last (noise may hold frames of its own)
    assert got[-2:] == [Request(SND_NKE, 5), Request(REQ_UD2 | FCB, 5)]


def test_requests_with_a_bad_checksum_are_dropped() -> None:
    decoder = MbusRequestDecoder()
    assert decoder.feed(bytes.fromhex("10 40 05 46 16")) == []
    assert decoder.dropped_bytes == 5


# --------------------------------------------------------------------------- link behaviour


def test_fcb_readout_repeat_and_restart() -> None:
    m = meter(telegrams=2)
    sim = MbusSimulator([m])
    assert sim.answer(Request(SND_NKE, 5)) == ACK
    first = sim.answer(Request(REQ_UD2 | FCB, 5))
    assert sim.answer(Request(REQ_UD2 | FCB, 5)) == first  # same FCB: a retry, repeated
    second = sim.answer(Request(REQ_UD2, 5))
    assert second is not None and first is not None
    assert second[-3] != 0x1F and first[-3] == 0x1F
    again = sim.answer(Request(REQ_UD2 | FCB, 5))  # after the last telegram: a new readout
    assert again is not None
    assert again[-3] == 0x1F and again != first  # a new access number
    assert sim.answer(Request(REQ_UD2, 9)) is None  # nobody at 9
    assert sim.answer(Request(SND_NKE, 255)) is None  # broadcast: no answer


def test_selection_with_wildcards_and_collisions() -> None:
    a, b = meter(12345678, 5), meter(12345699, 6, manufacturer="ABB")
    sim = MbusSimulator([a, b])
    assert sim.answer(Request(REQ_UD2 | FCB, 253)) is None  # nobody selected
    assert sim.answer(select("12345678")) == ACK
    reply = sim.answer(Request(REQ_UD2 | FCB, 253))
    assert reply is not None and reply[7:11] == bytes.fromhex("78 56 34 12")
    # both match 1234FFFF: both answer E5 at once
    garbage = sim.answer(select("1234FFFF"))
    assert garbage is not None and garbage != ACK
    assert not {0xE5, 0x10, 0x68} & set(garbage)
    assert sim.collisions == 1
    # manufacturer ABB (0x0442, LSB first) picks b alone
    assert sim.answer(select("1234FFFF", bytes.fromhex("42 04 FF FF"))) == ACK
    assert matches_secondary(b, bytes.fromhex("99 56 34 12 42 04 29 07"))
    assert not matches_secondary(b, bytes.fromhex("99 56 34 12 42 04 29 06"))
    # SND_NKE to 253 deselects
    assert sim.answer(Request(SND_NKE, 253)) == ACK
    assert sim.answer(Request(REQ_UD2 | FCB, 253)) is None


@pytest.mark.parametrize("fault", list(MbusFault))
def test_faults_for_a_number_of_answers(fault: MbusFault) -> None:
    m = meter()
    sim = MbusSimulator([m])
    sim.answer(Request(SND_NKE, 5))
    good = sim.answer(Request(REQ_UD2 | FCB, 5))
    assert good is not None
    sim.set_fault(m, fault, times=1)
    bad = sim.answer(Request(REQ_UD2 | FCB, 5))  # a retry: the same telegram, damaged
    if fault is MbusFault.SILENT:
        assert bad is None
    elif fault is MbusFault.CHECKSUM:
        assert bad is not None and bad[:-2] == good[:-2] and bad[-2] != good[-2]
    elif fault is MbusFault.TRUNCATED:
        assert bad == good[: len(good) // 2]
    else:
        assert bad is not None and bad != good and 0x68 not in bad
    assert sim.answer(Request(REQ_UD2 | FCB, 5)) == good  # the fault is used up


# --------------------------------------------------------------------------- on a pty


class PtyClient:
    """The master's end of a simulated line: raw bytes in and out of the pty."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.received = bytearray()
        self.arrived = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self.received.extend(os.read(self.fd, 1024))
        self.arrived.set()

    async def exchange(self, request: bytes, length: int | None = None) -> bytes:
        """Write ``request``; the answer: ``length`` bytes, or one long frame if None."""
        self.received.clear()
        os.write(self.fd, request)
        async with asyncio.timeout(TIMEOUT):
            while True:
                have = len(self.received)
                want = length if length is not None else (self.received[1] + 6 if have > 1 else 2)
                if have >= want:
                    return bytes(self.received)
                self.arrived.clear()
                await self.arrived.wait()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


async def test_meters_answer_on_the_pty() -> None:
    m = meter(telegrams=1)
    async with MbusSimulator([m], baudrate=38400) as sim:
        client = PtyClient(sim.port)
        try:
            assert await client.exchange(short_frame(SND_NKE, 5), 1) == ACK
            frame = await client.exchange(short_frame(REQ_UD2 | FCB, 5))
        finally:
            client.close()
    assert frame == m.readout()[0][:15] + frame[15:]  # same header but the access number
    assert frame[7:11] == bytes.fromhex("78 56 34 12")
    assert sim.requests == {"snd_nke": 1, "req_ud2": 1}


async def test_citygate_sim_mbus_serves_until_signalled() -> None:
    units = ("--unit", "5=12345678", "--unit", "6=12345699:telegrams=2,medium=warm_water")
    async with command.serving("mbus", "--baudrate", "38400", *units) as (process, line):
        match = re.fullmatch(r"serial port (/dev/\S+)\n", line)
        assert match, line
        client = PtyClient(match[1])
        try:
            assert await client.exchange(short_frame(SND_NKE, 6), 1) == ACK
        finally:
            client.close()
        assert await command.stop(process) == (0, b"")


async def test_citygate_sim_mbus_usage_errors() -> None:
    returncode, _, err = await command.finish("mbus", "--unit", "5=12345678:colour=red")
    assert returncode == 2
    assert b"options are" in err
