"""Modbus TCP (issue 11): CPU per request of the TCP client against the simulator.

``run(quick)`` is a bench part; ``python -m tests.bench.modbus_tcp [POLLS]`` prints
the figures alone. An SDM630-profile device (4 requests a poll) is polled back to
back over loopback:

* driver alone: the simulator serves from its own thread and event loop, and
  the driver's thread CPU (``time.thread_time()``) is divided by the requests;
* driver and simulator in one loop: ``time.process_time()`` of the whole process
  (the simulator's share included), divided likewise.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citygate.drivers.api import DeviceContext
from citygate.drivers.modbus.driver import ModbusTcpDriver, factory
from tests.bench.report import PartResult

HOST = "127.0.0.1"
UNIT = 1


@dataclass(frozen=True, slots=True)
class CpuFigure:
    """CPU microseconds per request over ``requests`` requests."""

    us_per_request: float
    requests: int


def _driver(port: int, directory: Path) -> ModbusTcpDriver:
    context = DeviceContext("bench-meter", 10.0, directory)
    config = factory.configure(
        {"host": HOST, "port": port, "unit": UNIT, "profile": "eastron-sdm630"}, context
    )
    driver = factory.create(config, context)
    assert isinstance(driver, ModbusTcpDriver)
    return driver


async def _polls(port: int, polls: int, clock: Any) -> CpuFigure:
    with tempfile.TemporaryDirectory() as directory:
        driver = _driver(port, Path(directory))
        per_poll = len(driver.config.plan.requests)
        async with driver:
            for _ in range(20):  # warm up: connection, caches
                await driver.poll()
            started = clock()
            for _ in range(polls):
                await driver.poll()
            spent = clock() - started
    requests = polls * per_poll
    return CpuFigure(spent / requests * 1e6, requests)


def _meters() -> dict[int, Any]:
    from citygate_sim.modbus import make_meter

    meter = make_meter("sdm630", seed=1)
    meter.freeze()
    return {UNIT: meter}


def cpu_in_one_loop(polls: int) -> CpuFigure:
    """Driver and simulator in one event loop: process CPU per request."""
    from citygate_sim.modbus import ModbusTcpSimulator

    async def main() -> CpuFigure:
        async with ModbusTcpSimulator(_meters(), host=HOST, port=0) as simulator:
            return await _polls(simulator.port, polls, time.process_time)

    return asyncio.run(main())


def cpu_of_the_driver(polls: int) -> CpuFigure:
    """The simulator on its own thread and loop: the driver thread's CPU per request."""
    from citygate_sim.modbus import ModbusTcpSimulator

    ready = threading.Event()
    port: list[int] = []
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve() -> None:
        done = asyncio.Event()
        async with ModbusTcpSimulator(_meters(), host=HOST, port=0) as simulator:
            port.append(simulator.port)
            stop.append((asyncio.get_running_loop(), done))
            ready.set()
            await done.wait()

    server = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    server.start()
    if not ready.wait(10):
        raise RuntimeError("the simulator did not start")
    try:
        return asyncio.run(_polls(port[0], polls, time.thread_time))
    finally:
        loop, done = stop[0]
        loop.call_soon_threadsafe(done.set)
        server.join(10)


def run(quick: bool) -> PartResult:
    result = PartResult("modbus_tcp")
    polls = 500 if quick else 2000
    alone = cpu_of_the_driver(polls)
    both = cpu_in_one_loop(polls)
    result.add(
        "TCP client CPU per request (SDM630 profile, driver thread)",
        alone.us_per_request,
        "µs",
        note=f"{alone.requests} requests; the simulator on another thread",
    )
    result.add(
        "TCP client + simulator CPU per request (one loop)",
        both.us_per_request,
        "µs",
        note=f"{both.requests} requests; time.process_time()",
    )
    return result


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for name, measure in (("driver thread", cpu_of_the_driver), ("one loop", cpu_in_one_loop)):
        figure = measure(count)
        print(f"{name}: {figure.us_per_request:.1f} µs CPU/request over {figure.requests}")
