"""The RTU simulator: framing and CRC from the spec, bytes paced like the wire,
faults, a vanishing pty; the new meter models' encodings pinned to bytes."""

from __future__ import annotations

import asyncio
import os
import re
import struct
import termios
import tty
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate_sim.modbus import (
    OTHER_MODELS,
    Fault,
    LineFault,
    ModbusRtuSimulator,
    RtuRequestDecoder,
    crc16,
    handle_pdu,
    make_meter,
    rtu_frame,
)
from tests.sim import command

TIMEOUT = 5.0
M1_REQUEST = bytes.fromhex("01 04 00 00 00 02 71 CB")


class Client:
    """A raw client on the pty's slave side (no citygate code involved)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd, termios.TCSANOW)
        self.data = bytearray()
        self.arrivals: list[tuple[float, int]] = []
        self._event = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:
            chunk = b""
        if chunk:
            self.data += chunk
            self.arrivals.append((asyncio.get_running_loop().time(), len(chunk)))
            self._event.set()

    async def read(self, count: int) -> bytes:
        async with asyncio.timeout(TIMEOUT):
            while len(self.data) < count:
                self._event.clear()
                await self._event.wait()
        data, self.data = bytes(self.data[:count]), self.data[count:]
        return data

    async def quiet_for(self, seconds: float) -> bytes:
        """What arrives within ``seconds`` (to check that nothing does)."""
        await asyncio.sleep(seconds)
        return bytes(self.data)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = {1: make_meter("sdm630", seed=1), 2: make_meter("em24", seed=2)}
    async with ModbusRtuSimulator(meters, baudrate=9600) as simulator:
        for meter in meters.values():
            meter.freeze()
        yield simulator


@pytest.fixture
async def client(sim: Any) -> AsyncIterator[Client]:
    c = Client(sim.port)
    yield c
    c.close()


def test_crc_matches_the_spec_vectors() -> None:
    assert rtu_frame(1, bytes.fromhex("04 00 00 00 02")) == M1_REQUEST
    assert crc16(bytes.fromhex("01 04 04 43 66 33 34")) == 0x381B
    assert rtu_frame(1, bytes.fromhex("84 02")) == bytes.fromhex("01 84 02 C2 C1")


def test_the_decoder_resynchronises_after_noise() -> None:
    decoder = RtuRequestDecoder()
    assert decoder.feed(b"\xff\x00" + M1_REQUEST[:3]) == []
    assert decoder.feed(M1_REQUEST[3:] + M1_REQUEST) == [
        (1, bytes.fromhex("04 00 00 00 02")),
        (1, bytes.fromhex("04 00 00 00 02")),
    ]
    assert decoder.dropped_bytes == 2
    bad = M1_REQUEST[:-1] + b"\x00"
    assert decoder.feed(bad) == []
    assert decoder.feed(M1_REQUEST) == [(1, bytes.fromhex("04 00 00 00 02"))]


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_noise_never_hides_a_request(before: bytes, after: bytes) -> None:
    decoder = RtuRequestDecoder()
    frames = decoder.feed(before + M1_REQUEST + after)
    assert (1, bytes.fromhex("04 00 00 00 02")) in frames


async def test_a_unit_answers_with_its_frame(sim: Any, client: Client) -> None:
    os.write(client.fd, M1_REQUEST)
    reply = await client.read(9)
    assert reply[:3] == bytes.fromhex("01 04 04")
    assert struct.pack("<H", crc16(reply[:-2])) == reply[-2:]
    voltage = struct.unpack(">f", reply[3:7])[0]
    assert voltage == struct.unpack(">f", struct.pack(">f", sim.meters[1].truth()["voltage_l1"]))[0]


async def test_reply_bytes_take_their_wire_time(sim: Any, client: Client) -> None:
    request = rtu_frame(1, struct.pack(">BHH", 0x04, 0x0000, 80))  # 165-byte reply
    loop = asyncio.get_running_loop()
    sent = loop.time()
    os.write(client.fd, request)
    reply = await client.read(165)
    assert len(reply) == 165
    finished = client.arrivals[-1][0]
    # the request's 8 characters and the reply's 165 cross a 9600 baud line first
    assert finished - sent >= (8 + 165) * sim.character_time - 1e-3
    assert len(client.arrivals) > 1  # it came in pieces, not at once


async def test_other_units_and_broadcasts_get_no_answer(sim: Any, client: Client) -> None:
    os.write(client.fd, rtu_frame(9, bytes.fromhex("04 00 00 00 02")))
    os.write(client.fd, rtu_frame(0, bytes.fromhex("04 00 00 00 02")))
    assert await client.quiet_for(0.1) == b""
    assert sim.requests_by_unit[9] == 1


@pytest.mark.parametrize("fault", list(LineFault))
async def test_line_faults_damage_the_reply(sim: Any, client: Client, fault: LineFault) -> None:
    sim.set_fault(1, fault)
    os.write(client.fd, M1_REQUEST)
    if fault is LineFault.TRUNCATED:
        reply = await client.read(4)
        assert await client.quiet_for(0.05) == b""
        return
    reply = await client.read(9)
    crc_ok = struct.pack("<H", crc16(reply[:-2])) == reply[-2:]
    if fault is LineFault.CRC:
        assert reply[:3] == bytes.fromhex("01 04 04") and not crc_ok
    elif fault is LineFault.WRONG_UNIT:
        assert reply[0] == 2 and crc_ok
    else:
        assert not (reply[:3] == bytes.fromhex("01 04 04") and crc_ok)


async def test_faults_of_the_server_apply_too(sim: Any, client: Client) -> None:
    sim.set_fault(1, Fault.exception(4))
    os.write(client.fd, M1_REQUEST)
    assert await client.read(5) == rtu_frame(1, bytes.fromhex("84 04"))
    sim.set_fault(1, Fault.SILENT)
    os.write(client.fd, M1_REQUEST)
    assert await client.quiet_for(0.1) == b""


async def test_unplug_and_replug_move_the_link(tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB0"
    async with ModbusRtuSimulator({1: make_meter("sdm120")}, link=link) as sim:
        first = sim.pty_path
        assert link.resolve() == Path(first)
        sim.unplug()
        assert not link.exists() and sim.pty_path is None
        sim.replug()
        assert link.exists() and link.resolve() == Path(sim.pty_path)
    assert not link.exists()


# -------------------------------------------------------------- the new models' bytes


def registers(model: str, function: int, address: int, count: int) -> bytes:
    meter = make_meter(model, seed=5)
    meter.freeze()
    reply = handle_pdu(meter, struct.pack(">BHH", function, address, count))
    assert reply[0] == function, reply.hex()
    return reply[2:]


def test_em24_sends_int32_low_word_first() -> None:
    meter = make_meter("em24", seed=5)
    meter.freeze()
    raw = int(meter.truth()["voltage_l1"])
    assert 2000 < raw < 2600  # tenths of a volt
    data = handle_pdu(meter, struct.pack(">BHH", 0x04, 0x0000, 2))[2:]
    assert data == struct.pack(">HH", raw & 0xFFFF, raw >> 16)
    assert meter.physical()["voltage_l1"] == (raw / 10, "V")


def test_abb_sends_uint64_energy_big_endian_in_hundredths() -> None:
    meter = make_meter("abb-b23", seed=5)
    meter.freeze()
    raw = int(meter.truth()["energy_import"])
    data = handle_pdu(meter, struct.pack(">BHH", 0x03, 0x5000, 4))[2:]
    assert data == struct.pack(">Q", raw)
    assert meter.physical()["energy_import"] == (raw / 100, "kWh")


def test_iem3255_sends_power_in_kw_and_energy_in_wh() -> None:
    meter = make_meter("iem3255", seed=5)
    meter.freeze()
    supply_w = meter.physical()["active_power"][0]
    data = handle_pdu(meter, struct.pack(">BHH", 0x03, 0x0BF3, 2))[2:]
    assert struct.unpack(">f", data)[0] == supply_w
    assert meter.physical()["active_power"][1] == "kW"
    energy = handle_pdu(meter, struct.pack(">BHH", 0x03, 0x0C83, 4))[2:]
    assert struct.unpack(">q", energy)[0] == meter.truth()["energy_import"]
    assert struct.unpack(">q", energy)[0] > 1e5  # Wh, not kWh


def test_every_other_model_is_built() -> None:
    assert set(OTHER_MODELS) == {"sdm72d", "em24", "abb-b23", "iem3255"}
    for model in OTHER_MODELS:
        meter = make_meter(model)
        assert meter.physical()


# -------------------------------------------------------------- the command


async def test_the_command_serves_rtu_on_a_link(tmp_path: Path) -> None:
    link = tmp_path / "ttyRS485"
    units = ("--unit", "1=sdm630", "--unit", "3=iem3255")
    async with command.serving("modbus-rtu", "--link", str(link), *units) as (process, line):
        assert re.fullmatch(rf"serial port {re.escape(str(link))}\n", line), line
        client = Client(str(link))
        try:
            os.write(client.fd, rtu_frame(3, struct.pack(">BHH", 0x03, 0x0BD3, 2)))
            reply = await client.read(9)
        finally:
            client.close()
        assert reply[:3] == bytes.fromhex("03 03 04")
        assert 200 < struct.unpack(">f", reply[3:7])[0] < 260
        assert (await command.stop(process))[0] == 0
        assert not link.exists()
