"""A new ``mqtt.topic_prefix`` leaves nothing retained under the old one (agent/mqtt/retained.py):
`citygate run` with a real Mosquitto and the Modbus TCP simulator, the prefix changed by a
reload and then by a restart."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.processes import AgentProcess, SimProcess, modbus_config

GW = "gw-e2e"
DEVICES = ("meter-a", "meter-b")


def _config(tmp: Path, broker: Mosquitto, sim: SimProcess, prefix: str) -> Path:
    return modbus_config(
        tmp / "gateway.toml",
        broker_port=broker.port,
        data_dir=tmp / "var",
        devices=[
            {
                "id": device_id,
                "driver": "modbus",
                "host": "127.0.0.1",
                "port": sim.port,
                "unit": unit,
                "profile": "eastron-sdm630",
                "interval": "1s",
            }
            for unit, device_id in enumerate(DEVICES, start=1)
        ],
        extra=f'topic_prefix = "{prefix}"\n',
    )


def retained(broker: Mosquitto, prefix: str) -> dict[str, bytes]:
    """The retained messages under ``prefix/`` now: a fresh subscriber's first second."""
    sub = Subscriber(broker.port, f"{prefix}/#").start()
    try:
        time.sleep(1.0)
        got: list[Received] = sub.snapshot()
    finally:
        sub.stop()
    return {m.topic: m.payload for m in got if m.retain}


def own_topics(prefix: str) -> set[str]:
    return {f"{prefix}/{GW}/status", f"{prefix}/{GW}/info"} | {
        f"{prefix}/{GW}/{d}/status" for d in DEVICES
    }


def test_a_new_prefix_clears_the_old_retained_topics(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    sim = SimProcess({1: "sdm630", 2: "sdm630"})
    config = _config(tmp_path, broker, sim, "city")
    agent = first = AgentProcess(config)
    try:
        agent.wait_for_log("broker mqtt://")
        deadline = time.monotonic() + 20
        while set(retained(broker, "city")) != own_topics("city"):
            assert time.monotonic() < deadline, retained(broker, "city")
        # A reload moves the gateway to another prefix.
        _config(tmp_path, broker, sim, "town")
        agent.signal(signal.SIGHUP)
        agent.wait_for_log("cleared 4 retained topics under the earlier topic prefix")
        assert retained(broker, "city") == {}
        town = retained(broker, "town")
        assert set(town) == own_topics("town")
        assert town[f"town/{GW}/status"] == b"online"
        agent.stop()
        assert retained(broker, "town")[f"town/{GW}/status"] == b"offline"
        # A restart under a third prefix clears the second.
        _config(tmp_path, broker, sim, "east")
        agent = AgentProcess(config)
        agent.wait_for_log("cleared 4 retained topics under the earlier topic prefix")
        assert retained(broker, "town") == {}
        assert retained(broker, "east")[f"east/{GW}/status"] == b"online"
    finally:
        agent.stop()
        sim.stop()
        broker.stop()
    assert "Traceback" not in first.log + agent.log
