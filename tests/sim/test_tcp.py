"""Real Modbus TCP round trips with a tiny client written here (no pymodbus)."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest

from citygate_sim.modbus import Fault, ModbusTcpSimulator, TypedMeter, make_meter

TIMEOUT = 5.0


class TinyClient:
    """Just enough Modbus TCP: send an ADU, read one back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> TinyClient:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        async with asyncio.timeout(TIMEOUT):
            await self.writer.drain()

    async def send_request(self, transaction: int, unit: int, pdu: bytes) -> None:
        await self.send(struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu)

    async def receive(self) -> tuple[int, int, bytes]:
        async with asyncio.timeout(TIMEOUT):
            header = await self.reader.readexactly(7)
            transaction, protocol, length, unit = struct.unpack(">HHHB", header)
            assert protocol == 0
            pdu = await self.reader.readexactly(length - 1)
        return transaction, unit, pdu

    async def request(self, transaction: int, unit: int, pdu: bytes) -> bytes:
        await self.send_request(transaction, unit, pdu)
        got_transaction, got_unit, response = await self.receive()
        assert (got_transaction, got_unit) == (transaction, unit)
        return response

    async def closed_by_server(self) -> bool:
        async with asyncio.timeout(TIMEOUT):
            try:
                return await self.reader.read(1) == b""
            except ConnectionResetError:
                return True

    async def close(self) -> None:
        self.writer.close()
        async with asyncio.timeout(TIMEOUT):
            with contextlib.suppress(ConnectionResetError):
                await self.writer.wait_closed()


def read_pdu(function: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", function, address, count)


async def test_sdm630_and_sdm120_over_tcp() -> None:
    sim = ModbusTcpSimulator({1: make_meter("sdm630", seed=1), 2: make_meter("sdm120", seed=2)})
    async with sim:
        assert sim.port > 0
        sim.meters[1].freeze()
        sim.meters[2].freeze()
        client = await TinyClient.connect(sim.port)
        response = await client.request(1, 1, read_pdu(4, 0x0000, 6))
        assert response[:2] == bytes.fromhex("04 0C")
        v1, v2, v3 = struct.unpack(">3f", response[2:])
        truth = sim.meters[1].truth()
        assert (v1, v2, v3) == (truth["voltage_l1"], truth["voltage_l2"], truth["voltage_l3"])
        response = await client.request(2, 1, read_pdu(4, 0x0048, 2))
        assert struct.unpack(">f", response[2:])[0] == truth["energy_import"]
        response = await client.request(3, 2, read_pdu(4, 0x000C, 2))
        assert struct.unpack(">f", response[2:])[0] == sim.meters[2].truth()["active_power"]
        response = await client.request(4, 1, read_pdu(3, 0xFC00, 2))
        assert struct.unpack(">I", response[2:])[0] == truth["serial_number"]
        await client.close()
        assert sim.request_count == 4
        assert sim.requests_by_unit == {1: 3, 2: 1}


async def test_silent_unit_gets_no_answer() -> None:
    sim = ModbusTcpSimulator({1: TypedMeter(), 2: TypedMeter()})
    async with sim:
        client = await TinyClient.connect(sim.port)
        # Answers go out in request order, so the next answer proves the first got none.
        await client.send_request(10, 9, read_pdu(4, 8, 1))
        await client.send_request(11, 1, read_pdu(4, 8, 1))
        assert await client.receive() == (11, 1, bytes.fromhex("04 02 000A"))
        sim.set_fault(1, Fault.SILENT)
        await client.send_request(12, 1, read_pdu(4, 8, 1))
        await client.send_request(13, 2, read_pdu(4, 8, 1))
        assert await client.receive() == (13, 2, bytes.fromhex("04 02 000A"))
        sim.set_fault(1, None)
        assert await client.request(14, 1, read_pdu(4, 8, 1)) == bytes.fromhex("04 02 000A")
        await client.close()
        assert sim.requests_by_unit == {9: 1, 1: 3, 2: 1}


async def test_gateway_error_and_exception_faults() -> None:
    sim = ModbusTcpSimulator({1: TypedMeter()}, unknown_unit="gateway_error")
    async with sim:
        client = await TinyClient.connect(sim.port)
        assert await client.request(1, 5, read_pdu(3, 107, 3)) == bytes.fromhex("83 0B")
        sim.set_fault(1, Fault.exception(0x04))
        assert await client.request(2, 1, read_pdu(3, 107, 3)) == bytes.fromhex("83 04")
        sim.set_fault(1, None)
        assert await client.request(3, 1, read_pdu(3, 107, 3)) == bytes.fromhex(
            "03 06 022B 0000 0064"
        )
        await client.close()


async def test_delayed_unit_answers_late_while_others_are_served() -> None:
    sim = ModbusTcpSimulator({1: TypedMeter(), 2: TypedMeter()})
    async with sim:
        sim.set_fault(1, Fault.delay(0.3))
        slow = await TinyClient.connect(sim.port)
        fast = await TinyClient.connect(sim.port)
        await slow.send_request(1, 1, read_pdu(4, 8, 1))
        await fast.send_request(2, 2, read_pdu(4, 8, 1))
        slow_answer = asyncio.ensure_future(slow.receive())
        fast_answer = asyncio.ensure_future(fast.receive())
        done, _ = await asyncio.wait({slow_answer, fast_answer}, return_when="FIRST_COMPLETED")
        assert done == {fast_answer}
        assert await slow_answer == (1, 1, bytes.fromhex("04 02 000A"))
        assert fast_answer.result() == (2, 2, bytes.fromhex("04 02 000A"))
        await slow.close()
        await fast.close()


async def test_a_delay_holds_back_later_answers_on_the_same_connection() -> None:
    sim = ModbusTcpSimulator({1: TypedMeter(), 2: TypedMeter()})
    async with sim:
        sim.set_fault(1, Fault.delay(0.05))
        client = await TinyClient.connect(sim.port)
        await client.send_request(1, 1, read_pdu(4, 8, 1))
        await client.send_request(2, 2, read_pdu(4, 8, 1))
        assert (await client.receive())[0] == 1
        assert (await client.receive())[0] == 2
        await client.close()


async def test_drop_connections() -> None:
    sim = ModbusTcpSimulator({1: TypedMeter()})
    async with sim:
        client = await TinyClient.connect(sim.port)
        await client.request(1, 1, read_pdu(4, 8, 1))
        assert sim.connection_count == 1
        sim.drop_connections()
        assert await client.closed_by_server()
        await client.close()
        again = await TinyClient.connect(sim.port)
        assert await again.request(2, 1, read_pdu(4, 8, 1)) == bytes.fromhex("04 02 000A")
        await again.close()


async def test_requests_split_and_joined_across_writes() -> None:
    sim = ModbusTcpSimulator({1: TypedMeter()})
    async with sim:
        client = await TinyClient.connect(sim.port)
        adu = bytes.fromhex("0007 0000 0006 01 03 006B 0003")
        await client.send(adu[:3])  # truncated MBAP header: the server waits
        await client.send(adu[3:9])
        await client.send(adu[9:])
        assert await client.receive() == (7, 1, bytes.fromhex("03 06 022B 0000 0064"))
        await client.send(adu + bytes.fromhex("0008 0000 0006 01 04 0008 0001"))
        assert (await client.receive())[0] == 7
        assert await client.receive() == (8, 1, bytes.fromhex("04 02 000A"))
        await client.close()


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(bytes.fromhex("0001 0000 0000 01"), id="length 0"),
        pytest.param(bytes.fromhex("0001 0000 FFFF 01") + bytes(20), id="length 65535"),
    ],
)
async def test_unframeable_bytes_close_the_connection_only(garbage: bytes) -> None:
    sim = ModbusTcpSimulator({1: TypedMeter()})
    async with sim:
        client = await TinyClient.connect(sim.port)
        await client.send(garbage)
        assert await client.closed_by_server()
        await client.close()
        assert sim.dropped_count == 1
        again = await TinyClient.connect(sim.port)
        assert await again.request(1, 1, read_pdu(4, 8, 1)) == bytes.fromhex("04 02 000A")
        await again.close()


async def test_foreign_protocol_frames_are_skipped() -> None:
    sim = ModbusTcpSimulator({1: TypedMeter()})
    async with sim:
        client = await TinyClient.connect(sim.port)
        await client.send(bytes.fromhex("0001 0001 0006 01 04 0008 0001"))
        assert await client.request(2, 1, read_pdu(4, 8, 1)) == bytes.fromhex("04 02 000A")
        assert sim.dropped_count == 1
        await client.close()


async def test_idle_connections_are_closed() -> None:
    sim = ModbusTcpSimulator({1: TypedMeter()}, idle_timeout=0.05)
    async with sim:
        client = await TinyClient.connect(sim.port)
        assert await client.closed_by_server()
        await client.close()


async def test_closing_the_simulator_closes_clients() -> None:
    sim = ModbusTcpSimulator({1: TypedMeter()})
    await sim.start()
    client = await TinyClient.connect(sim.port)
    await client.request(1, 1, read_pdu(4, 8, 1))
    await sim.close()
    assert await client.closed_by_server()
    await client.close()
    with pytest.raises(RuntimeError):
        _ = sim.port
