"""``python -m citygate_sim`` as a subprocess: the line it prints, a read, a clean exit."""

from __future__ import annotations

import asyncio
import re
import signal
import struct

import pytest

from citygate_sim.modbus import ModbusTcpSimulator, TypedMeter
from tests.sim.command import TIMEOUT, finish, serving, stop


async def read_registers(port: int, unit: int, function: int, address: int, count: int) -> bytes:
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(struct.pack(">HHHBBHH", 1, 0, 6, unit, function, address, count))
        await writer.drain()
        _, _, length, _ = struct.unpack(">HHHB", await reader.readexactly(7))
        pdu = await reader.readexactly(length - 1)
        writer.close()
        await writer.wait_closed()
    return pdu


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_serves_until_signalled(stop_signal: signal.Signals) -> None:
    command = ("modbus-tcp", "--port", "0", "--unit", "1=sdm630", "--unit", "7=typed")
    async with serving(*command) as (process, line):
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        port = int(match[1])
        voltage = await read_registers(port, 1, 4, 0x0000, 2)
        assert voltage[:2] == bytes.fromhex("04 04")
        assert 207.0 <= struct.unpack(">f", voltage[2:])[0] <= 253.0
        assert await read_registers(port, 7, 4, 8, 1) == bytes.fromhex("04 02 000A")
        # Eastron default: reserved addresses inside the map read as 0
        assert await read_registers(port, 1, 4, 0x002C, 2) == bytes.fromhex("04 04 0000 0000")
        assert await stop(process, stop_signal) == (0, b"")  # exactly one line on stdout


async def test_strict_meters_on_request() -> None:
    command = ("modbus-tcp", "--port", "0", "--unit", "1=sdm630", "--unmapped", "exception")
    async with serving(*command) as (process, line):
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        port = int(match[1])
        assert await read_registers(port, 1, 4, 0x002C, 2) == bytes.fromhex("84 02")
        assert (await read_registers(port, 1, 4, 0x002A, 2))[:2] == bytes.fromhex("04 04")
        assert (await stop(process))[0] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["modbus-tcp", "--unit", "1=sdm999"], "unknown meter model"),
        (["modbus-tcp", "--unit", "one=sdm630"], "UNIT=MODEL"),
        (["modbus-tcp", "--unit", "300=sdm630"], "0..255"),
        (["modbus-tcp", "--unit", "1=sdm630", "--unit", "1=sdm120"], "twice"),
        (["modbus-tcp", "--speed", "0"], "positive"),
        (["modbus-tcp", "--unmapped", "lenient"], "invalid choice"),
        ([], "COMMAND"),
    ],
)
async def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    returncode, stdout, stderr = await finish(*args)
    assert returncode == 2
    assert stdout == b""
    assert message in stderr.decode()


async def test_port_in_use_exits_1() -> None:
    async with ModbusTcpSimulator({1: TypedMeter()}) as busy:
        returncode, stdout, stderr = await finish("modbus-tcp", "--port", str(busy.port))
    assert returncode == 1
    assert stdout == b""
    assert "cannot listen" in stderr.decode()
