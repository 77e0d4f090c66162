"""The serial line owner (citygate.lines) on a real pseudo-terminal: turns, silence,
stale bytes, a vanishing adapter, the figures."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.api import (
    DriverError,
    SerialLine,
    SerialLineConfig,
    SerialWire,
    TransportError,
)
from citygate.drivers.modbus.driver import RtuSession
from citygate.drivers.modbus.rtu import RtuReplyFramer, encode_read_request
from citygate.lines import LineOwner, LineSet, Port, line_protocol_conflicts
from tests.support.wait import until

citygate_sim = pytest.importorskip("citygate_sim.modbus")

BAUD = 38400
QUICK = 0.1


def line_config(port: str, timeout: float = QUICK, baudrate: int = BAUD) -> SerialLineConfig:
    return SerialLineConfig("rs485", port, baudrate, "N", 1, 8, timeout)


def read_request(unit: int) -> tuple[bytes, RtuReplyFramer]:
    return encode_read_request(unit, 0x04, 0x0000, 2), RtuReplyFramer(unit, 0x04, 2)


@pytest.fixture
async def sim() -> AsyncIterator[Any]:
    meters = {
        1: citygate_sim.make_meter("sdm120", seed=1),
        2: citygate_sim.make_meter("sdm120", seed=2),
    }
    async with citygate_sim.ModbusRtuSimulator(meters, baudrate=BAUD) as simulator:
        yield simulator


@pytest.fixture
async def owner(sim: Any) -> AsyncIterator[LineOwner]:
    line = LineOwner(line_config(sim.port))
    yield line
    line.close()


def test_the_owner_is_a_serial_line() -> None:
    line = LineOwner(line_config("/dev/null"))
    assert isinstance(line, SerialLine)


async def test_an_exchange_gets_the_reply(owner: LineOwner) -> None:
    request, framer = read_request(1)
    async with owner.turn("meter-1") as wire:
        assert isinstance(wire, SerialWire)
        result = await wire.exchange(request, framer, QUICK)
    assert result.complete
    assert len(result.received) == 9
    assert owner.devices["meter-1"].transactions == 1


async def test_turns_are_given_first_come_first_served(owner: LineOwner, sim: Any) -> None:
    order: list[str] = []
    first_holds = asyncio.Event()
    release = asyncio.Event()

    async def device(name: str, unit: int) -> None:
        async with owner.turn(name) as wire:
            order.append(name)
            if name == "a":
                first_holds.set()
                await release.wait()
            request, framer = read_request(unit)
            await wire.exchange(request, framer, QUICK)

    async with asyncio.TaskGroup() as group:
        group.create_task(device("a", 1))
        await first_holds.wait()
        for name in ("d", "b", "c"):
            group.create_task(device(name, 2))
            await asyncio.sleep(0)  # each queues before the next one starts
        release.set()
    assert order == ["a", "d", "b", "c"]
    assert [unit for _, unit in sim.request_log] == [1, 2, 2, 2]


async def test_a_silent_exchange_gives_the_line_to_waiting_devices(
    owner: LineOwner, sim: Any
) -> None:
    silent_holds_the_line = asyncio.Event()

    async def silent_device() -> None:
        async with owner.turn("silent") as wire:
            silent_holds_the_line.set()
            for _ in range(2):  # a retry, inside the same turn
                request, framer = read_request(9)
                result = await wire.exchange(request, framer, QUICK)
                assert not result.complete

    async def healthy_device() -> None:
        await silent_holds_the_line.wait()
        async with owner.turn("healthy") as wire:  # queues behind the silent device
            request, framer = read_request(1)
            assert (await wire.exchange(request, framer, QUICK)).complete

    waiting = asyncio.create_task(healthy_device())
    await silent_device()
    await waiting
    # The healthy device had its turn between the silent device's two attempts.
    assert [unit for _, unit in sim.request_log] == [9, 1, 9]
    assert owner.devices["silent"].timeouts == 2


async def test_bytes_waiting_before_a_request_are_discarded_and_counted(
    owner: LineOwner, sim: Any
) -> None:
    async with owner.turn("meter-1") as wire:
        request, framer = read_request(1)
        await wire.exchange(request, framer, QUICK)
        sim.inject_noise(b"\x01\x04\x99")
        await until(lambda: sim.bytes_sent >= 9 + 3, what="the simulator writing the noise")
        # The owner's reader has taken them off the pty: they wait in its receive buffer.
        await until(lambda: len(owner._received) >= 3, what="the noise read off the pty")
        request, framer = read_request(1)
        result = await wire.exchange(request, framer, QUICK)
    assert result.complete
    assert result.stale == 3
    assert framer.stray_bytes == 0
    assert owner.devices["meter-1"].stale_bytes == 3


class SocketPort:
    """One end of a socket pair as a port: the test holds the other end."""

    def __init__(self, sock: socket.socket) -> None:
        self._socket = sock
        self.fd = sock.fileno()
        self.writes: list[tuple[float, bytes]] = []

    def write(self, data: bytes | memoryview) -> int:
        self.writes.append((asyncio.get_running_loop().time(), bytes(data)))
        return os.write(self.fd, data)

    def close(self) -> None:
        self._socket.close()


async def test_the_silent_interval_is_kept_between_frames() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    port = SocketPort(ours)
    as_port: Port = port  # a Port by structure
    config = line_config("socketpair", baudrate=9600)
    owner = LineOwner(config, open_port=lambda _: as_port)
    frame = bytes(8)
    try:
        async with owner.turn("a") as wire:
            for _ in range(3):
                await wire.send(frame)
        async with owner.turn("b") as wire:
            await wire.send(frame)
    finally:
        owner.close()
        theirs.close()
    times = [t for t, _ in port.writes]
    least_gap = len(frame) * config.character_time + config.silent_interval
    assert config.silent_interval == pytest.approx(3.5 * 10 / 9600)
    for earlier, later in itertools.pairwise(times):
        assert later - earlier >= least_gap - 1e-6


async def test_a_vanishing_adapter_is_reopened_when_it_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    link = tmp_path / "ttyUSB0"
    meters = {1: citygate_sim.make_meter("sdm120", seed=1)}
    async with citygate_sim.ModbusRtuSimulator(meters, baudrate=BAUD, link=link) as sim:
        owner = LineOwner(line_config(str(link)), reopen_after=0.0)
        try:

            async def poll() -> bool:
                async with owner.turn("meter-1") as wire:
                    request, framer = read_request(1)
                    return (await wire.exchange(request, framer, QUICK)).complete

            assert await poll()
            with caplog.at_level(logging.INFO, logger="citygate.lines"):
                sim.unplug()
                assert not link.exists()
                for _ in range(3):
                    with pytest.raises(TransportError, match="rs485"):
                        await poll()
                sim.replug()
                assert link.exists()
                assert await poll()
        finally:
            owner.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "citygate.lines"]
    assert len([m for m in lines if "lost" in m or "cannot open" in m]) == 1, lines
    assert any("is back; reopened" in m for m in lines), lines
    assert owner.reopens == 1


async def test_a_port_that_never_existed_fails_clearly() -> None:
    owner = LineOwner(line_config("/dev/citygate-no-such-port"))
    with pytest.raises(TransportError, match="no such port"):
        async with owner.turn("meter-1"):
            pass


async def test_a_line_that_cannot_fit_its_devices_says_so_once(
    owner: LineOwner, caplog: pytest.LogCaptureFixture
) -> None:
    owner.attach("meter-1", 0.001)  # far more often than one exchange takes
    with caplog.at_level(logging.WARNING, logger="citygate.lines"):
        for _ in range(3):
            async with owner.turn("meter-1") as wire:
                request, framer = read_request(1)
                await wire.exchange(request, framer, QUICK)
    warnings = [r.getMessage() for r in caplog.records if "polls will be skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert "serial rs485" in warnings[0]
    assert owner.demand() > 1
    assert 0 < owner.utilisation() <= 1


async def test_line_set_metrics_shape(sim: Any) -> None:
    lines = LineSet(
        {"rs485": line_config(sim.port), "spare": line_config("/dev/null")},
        [("meter-1", "modbus", "rs485", 10.0)],
    )
    try:
        owner = lines.owners["rs485"]
        assert set(lines.owners) == {"rs485"}  # a line nobody uses is not opened
        async with owner.turn("meter-1") as wire:
            request, framer = read_request(1)
            await wire.exchange(request, framer, QUICK)
        metrics = lines.metrics()
    finally:
        lines.close()
    assert set(metrics) == {"line_utilisation", "lines"}
    assert set(metrics["line_utilisation"]) == {"rs485"}
    assert 0 < metrics["line_utilisation"]["rs485"] <= 1
    figures = metrics["lines"]["rs485"]
    assert figures["devices"]["meter-1"]["transactions"] == 1
    assert figures["demand"] > 0


def test_a_line_carries_one_protocol() -> None:
    users = [
        ("meter-1", "modbus", "rs485"),
        ("water-1", "mbus", "mbus-line"),
        ("water-2", "mbus", "rs485"),
        ("meter-2", "modbus", "rs485"),
    ]
    assert line_protocol_conflicts(users) == [("water-2", "mbus", "rs485")]


def test_a_second_protocol_on_a_line_gets_no_owner(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="citygate.lines"):
        lines = LineSet(
            {"rs485": line_config("/dev/null")},
            [("meter-1", "modbus", "rs485", 10.0), ("water-1", "mbus", "rs485", 900.0)],
        )
    assert lines.owners["rs485"].protocol == "modbus"
    assert set(lines.owners["rs485"].devices) == {"meter-1"}
    assert "water-1: serial rs485 already carries another protocol" in caplog.text


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 40))
def test_any_answer_on_the_wire_ends_in_values_or_a_driver_error(answer: bytes, chunk: int) -> None:
    """Whatever a device sends back, in whatever pieces: registers or a DriverError,
    within the timeout; and the next exchange on the line still works."""

    async def scenario() -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        port = SocketPort(ours)
        as_port: Port = port
        owner = LineOwner(line_config("socketpair", timeout=0.02), open_port=lambda _: as_port)
        session = RtuSession(owner, 1, 0.02, retries=0)
        loop = asyncio.get_running_loop()

        def device() -> None:  # answer each request with the given bytes
            try:
                theirs.recv(256)
            except BlockingIOError:
                return
            for start in range(0, len(answer), chunk):
                theirs.send(answer[start : start + chunk])

        loop.add_reader(theirs.fileno(), device)
        try:
            async with owner.turn("meter-1") as wire:
                try:
                    values = await session.read(wire, "holding", 0, 2)
                except DriverError:
                    pass
                else:
                    assert len(values) == 2
        finally:
            loop.remove_reader(theirs.fileno())
            owner.close()
            theirs.close()

    asyncio.run(scenario())
