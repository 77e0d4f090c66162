"""The ``scan`` remote command end to end (mqtt.md "Commands"): `citygate run` as a
subprocess with ``[commands] scan = true``, a real Mosquitto, the Modbus RTU simulator on a
pty (the agent polls one of its meters) and the Modbus TCP simulator; requests sent by
`citygate cmd` and by a paho client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_commands import GW, Requester, start_commanded_agent
from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import run_cli
from tests.support.wait import until

citygate_sim = pytest.importorskip("citygate_sim.modbus")

pytestmark = pytest.mark.broker

BAUD = 38400
RTU_UNITS = {1: "sdm630", 2: "sdm120", 5: "em24"}


@pytest.fixture
async def rtu() -> AsyncIterator[Any]:
    meters = {unit: citygate_sim.make_meter(model, seed=unit) for unit, model in RTU_UNITS.items()}
    async with citygate_sim.ModbusRtuSimulator(meters, baudrate=BAUD) as simulator:
        yield simulator


@pytest.fixture
async def tcp() -> AsyncIterator[Any]:
    meters = {1: citygate_sim.make_meter("sdm630", seed=1), 3: citygate_sim.make_meter("typed")}
    async with citygate_sim.ModbusTcpSimulator(meters, host="127.0.0.1", port=0) as simulator:
        yield simulator


def write_config(
    tmp_path: Path, broker: Mosquitto, rtu_port: str, tcp_port: int, scan: bool
) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
id = "{GW}"
data_dir = "{tmp_path / "var"}"
log_level = "info"

[mqtt]
url = "mqtt://127.0.0.1:{broker.port}"
linger = "50ms"

[commands]
enabled = true
scan = {"true" if scan else "false"}

[[serial]]
id = "rs485"
port = "{rtu_port}"
baudrate = {BAUD}
timeout = "200ms"

[[device]]
id = "meter-rtu"
driver = "modbus"
serial = "rs485"
unit = 1
profile = "eastron-sdm630"
interval = "300ms"

[[device]]
id = "meter-tcp"
driver = "modbus"
host = "127.0.0.1"
port = {tcp_port}
unit = 1
profile = "eastron-sdm630"
interval = "5s"
"""
    )
    return config


async def cmd(broker: Mosquitto, *args: str) -> tuple[int, dict[str, Any] | None, str]:
    # in a thread: the simulators are served from this event loop meanwhile
    result = await asyncio.to_thread(
        run_cli,
        "cmd",
        GW,
        "scan",
        *args,
        "--broker",
        f"mqtt://127.0.0.1:{broker.port}",
        "--timeout",
        "60",
    )
    document = json.loads(result.stdout) if result.stdout.strip() else None
    return result.returncode, document, result.stderr


async def test_scan_probes_the_agents_line_one_at_a_time(
    rtu: Any, tcp: Any, tmp_path: Path, broker: Mosquitto
) -> None:
    config = write_config(tmp_path, broker, rtu.port, tcp.port, scan=True)
    metrics = Subscriber(broker.port, f"city/{GW}/metrics").start()
    agent = await start_commanded_agent(config, broker, metrics_interval=0.5)
    requester = Requester(broker.port)
    try:
        first = asyncio.create_task(
            cmd(
                broker,
                "--arg",
                "driver=modbus",
                "--arg",
                "serial=rs485",
                "--arg",
                "units=1-12",
                "--arg",
                "timeout=0.1",
            )
        )
        await asyncio.to_thread(agent.wait_for_log, "scan modbus: started")
        requester.send("scan", {"id": "second", "args": {"driver": "modbus", "serial": "rs485"}})
        await until(lambda: requester.replies_to("second"), 20, "the second scan's reply")
        second = requester.replies_to("second")[0]
        assert second["ok"] is False and second["error"]["code"] == "busy", second

        code, reply, err = await first
        assert code == 0, (err, reply)
        assert reply is not None
        found = reply["result"]["json"]
        assert [f["unit"] for f in found] == sorted(RTU_UNITS)
        profiles = {f["unit"]: f["profiles"][0] for f in found}
        assert profiles == {1: "eastron-sdm630", 2: "eastron-sdm120", 5: "carlo-gavazzi-em24"}
        assert reply["result"]["exit_status"] == 0

        # The probes took turns through the agent's own owner of the line (its figures count
        # them beside the polled meter's), and polling went on: the port was opened once.
        def scan_figures() -> dict[str, Any] | None:
            for message in reversed(metrics.snapshot("/metrics")):
                devices = json.loads(message.payload)["lines"]["rs485"]["devices"]
                if "scan" in devices:
                    return dict(devices)
            return None

        devices = await until(scan_figures, 20, "the line's figures with the scan's turns")
        assert devices["meter-rtu"]["timeouts"] == 0
        assert devices["scan"]["timeouts"] >= 12 - len(RTU_UNITS)
        statuses = [line for line in agent.lines if "meter-rtu" in line and "offline" in line]
        assert not statuses, statuses

        # The byte-order assistant on the TCP simulator (float32 230.2 at 1096, typed unit 3).
        requester.send(
            "scan",
            {
                "id": "tcp",
                "args": {"driver": "modbus", "host": "127.0.0.1", "port": tcp.port}
                | {"unit": 3, "address": 1096, "count": 2},
            },
        )
        await until(lambda: requester.replies_to("tcp"), 20, "the TCP scan's reply")
        assistant = requester.replies_to("tcp")[0]
        assert assistant["ok"] is True, assistant
        assert "230.2" in json.dumps(assistant["result"]["json"])

        # Bad options: argparse's message, nothing printed by the agent, nothing run.
        requester.send(
            "scan", {"id": "bad1", "args": {"driver": "modbus", "serial": "rs485", "bogus": 1}}
        )
        requester.send("scan", {"id": "bad2", "args": {"driver": "modbus", "port": 502}})
        requester.send("scan", {"id": "bad3", "args": {"driver": "modbus", "serial": "nope"}})
        requester.send("scan", {"id": "bad4", "args": {"driver": "teleport"}})
        requester.send("scan", {"id": "bad5", "args": {"driver": "modbus", "units": [1, 2]}})
        record = tmp_path / "capture.jsonl"
        requester.send(
            "scan",
            {"id": "file", "args": {"driver": "ble", "seconds": 1, "record": str(record)}},
        )
        ids = ("bad1", "bad2", "bad3", "bad4", "bad5", "file")
        await until(lambda: all(requester.replies_to(i) for i in ids), 20, "the replies")
        errors = {i: requester.replies_to(i)[0]["error"] for i in ids}
        assert {i: e["code"] for i, e in errors.items()} == {
            "bad1": "bad_request",
            "bad2": "bad_request",
            "bad3": "bad_request",
            "bad4": "bad_request",
            "bad5": "bad_request",
            "file": "forbidden",
        }, errors
        assert "unrecognized arguments: --bogus=1" in errors["bad1"]["message"]
        assert "one of the arguments --host --serial is required" in errors["bad2"]["message"]
        assert "no [[serial]] line 'nope'" in errors["bad3"]["message"]
        assert not record.exists()
        assert not any("usage:" in line for line in agent.lines)
    finally:
        requester.stop()
        metrics.stop()
        await asyncio.to_thread(agent.stop)
    assert "Traceback" not in agent.log


async def test_scan_not_allowed_is_forbidden(
    rtu: Any, tcp: Any, tmp_path: Path, broker: Mosquitto
) -> None:
    config = write_config(tmp_path, broker, rtu.port, tcp.port, scan=False)
    agent = await start_commanded_agent(config, broker, metrics_interval=0.5)
    try:
        before = rtu.handler.request_count
        code, reply, _ = await cmd(broker, "--arg", "driver=modbus", "--arg", "serial=rs485")
        assert code == 1
        assert reply is not None and reply["error"]["code"] == "forbidden"
        assert not any("scan modbus: started" in line for line in agent.lines)
        assert rtu.handler.request_count > before  # the agent polls meanwhile, the scan never ran
    finally:
        await asyncio.to_thread(agent.stop)
    assert "Traceback" not in agent.log
