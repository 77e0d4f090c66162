"""Home Assistant discovery end to end: `citygate run`, the Modbus TCP simulator, a real
Mosquitto. The broker's retained store is read by a fresh subscriber each time (a marker message
published after its SUBACK tells when the retained messages have all arrived)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.publish as publish
import pytest

from citygate import ha_classes
from tests.faults.helpers import buffer_stats, modbus_devices, persistent_broker
from tests.integration.test_broker_acl import reference_acl_broker
from tests.integration.test_mqtt_auth import secret_file
from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import AgentProcess, SimProcess, modbus_config
from tests.support.wait import wait_until

pytestmark = pytest.mark.broker

GW = "gw-e2e"
HA_ON = "[homeassistant]\nenabled = true\n"
HA_OFF = "[homeassistant]\nenabled = false\n"
REQUIRED_COMPONENT_KEYS = {
    "platform",
    "unique_id",
    "name",
    "state_topic",
    "value_template",
    "availability",
}


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    process = SimProcess({1: "sdm630", 2: "sdm120"})
    yield process
    process.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = persistent_broker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


def retained(port: int) -> dict[str, bytes]:
    """The broker's retained store."""
    sub = Subscriber(port, "#").start()
    try:
        marker = f"test/marker/{time.monotonic_ns()}"
        publish.single(marker, b"x", qos=1, hostname="127.0.0.1", port=port)
        sub.wait_for(lambda: any(m.topic == marker for m in sub.snapshot()), what="the marker")
        return {m.topic: m.payload for m in sub.snapshot() if m.retain}
    finally:
        sub.stop()


def write_config(tmp_path: Path, broker: Mosquitto, sim: SimProcess, count: int, ha: str) -> Path:
    return modbus_config(
        tmp_path / "gateway.toml",
        broker_port=broker.port,
        data_dir=tmp_path / "var",
        devices=modbus_devices(sim.port, count, "100ms"),
        extra=ha,
    )


def discovery_topics(store: dict[str, bytes], prefix: str = "homeassistant") -> set[str]:
    return {t for t in store if t.startswith(f"{prefix}/")}


def check_discovery(
    store: dict[str, bytes], gw: str = GW, prefix: str = "homeassistant", base: str = "city"
) -> None:
    """Every discovery payload against Home Assistant's schema rules."""
    unique_ids: list[str] = []
    for topic in discovery_topics(store, prefix):
        message = json.loads(store[topic])
        assert set(message) == {"device", "origin", "components"}, topic
        device = message["device"]
        assert device["identifiers"] and device["name"]
        assert message["origin"]["name"] == "citygate"
        assert message["components"], topic
        for key, c in message["components"].items():
            assert set(c) >= REQUIRED_COMPONENT_KEYS, (topic, key)
            assert c["platform"] == "sensor"
            unique_ids.append(c["unique_id"])
            device_class = c.get("device_class")
            assert ha_classes.valid(device_class, c.get("unit_of_measurement")), (topic, key)
            if device_class is not None and "state_class" in c:
                allowed = ha_classes.allowed_state_classes(device_class)
                assert c["state_class"] in allowed, (topic, key)
            for entry in c["availability"]:
                assert entry["topic"].startswith(f"{base}/{gw}/")
        if topic != f"{prefix}/device/{gw}/config":
            assert device["via_device"] == f"citygate_{gw}"
    assert len(unique_ids) == len(set(unique_ids)), "unique ids are not unique"


def ha_topics_of(store: dict[str, bytes], device: str) -> set[str]:
    """The device's discovery and state topics in ``store`` (its status stays: ``disabled``)."""
    wanted = {f"homeassistant/device/{GW}_{device}/config", f"city/{GW}/{device}/state"}
    return wanted & set(store)


def states_ready(port: int, devices: int) -> dict[str, bytes]:
    holder: dict[str, dict[str, bytes]] = {}

    def ready() -> bool:
        store = retained(port)
        holder["store"] = store
        configs = discovery_topics(store)
        states = [t for t in store if t.endswith("/state")]
        return len(configs) == devices + 1 and len(states) == devices

    wait_until(ready, 30, "discovery and state of every device on the broker")
    return holder["store"]


def test_retained_discovery_and_state_after_start(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    agent = AgentProcess(write_config(tmp_path, broker, sim, 2, HA_ON), metrics_interval=0.3)
    try:
        store = states_ready(broker.port, 2)
        assert discovery_topics(store) == {
            f"homeassistant/device/{GW}/config",
            f"homeassistant/device/{GW}_meter-0/config",
            f"homeassistant/device/{GW}_meter-1/config",
        }
        assert {t for t in store if t.startswith("city/")} == {
            f"city/{GW}/status",
            f"city/{GW}/info",
            f"city/{GW}/meter-0/status",
            f"city/{GW}/meter-1/status",
            f"city/{GW}/meter-0/state",
            f"city/{GW}/meter-1/state",
        }
        check_discovery(store)
        meter = json.loads(store[f"homeassistant/device/{GW}_meter-0/config"])
        assert meter["device"]["manufacturer"] == "Eastron"
        assert meter["device"]["identifiers"] == [f"citygate_{GW}_meter-0"]
        state = json.loads(store[f"city/{GW}/meter-0/state"])
        assert set(state) - {"t"} == set(meter["components"])
        energy = meter["components"]["energy_import"]
        assert (energy["state_class"], energy["unit_of_measurement"]) == (
            "total_increasing",
            "kWh",
        )
        for c in meter["components"].values():
            assert c["state_topic"] == f"city/{GW}/meter-0/state"
            assert c["availability_mode"] == "all"
        gateway = json.loads(store[f"homeassistant/device/{GW}/config"])
        assert {c["entity_category"] for c in gateway["components"].values()} == {"diagnostic"}

        # Home Assistant's birth message: discovery comes again, and is not unsolicited.
        live = Subscriber(broker.port, "homeassistant/device/#").start()
        metrics = Subscriber(broker.port, f"city/{GW}/metrics").start()
        try:
            publish.single(
                "homeassistant/status", b"online", hostname="127.0.0.1", port=broker.port
            )
            live.wait_for(lambda: len(live.snapshot()) >= 3, what="discovery sent again")
            assert {m.topic for m in live.snapshot()} == discovery_topics(store)
            seen = len(metrics.snapshot())
            metrics.wait_for(lambda: len(metrics.snapshot()) > seen + 1, what="metrics")
            last: dict[str, Any] = json.loads(metrics.snapshot()[-1].payload)
            assert last["unsolicited_messages"] == 0
        finally:
            live.stop()
            metrics.stop()
    finally:
        assert agent.stop() == 0, agent.log
    assert "Traceback" not in agent.log


def test_no_ghosts_after_reload_restart_or_disable(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    config = write_config(tmp_path, broker, sim, 3, HA_ON)
    agent = AgentProcess(config)
    try:
        states_ready(broker.port, 3)
        # A reload without meter-2: its discovery and state are gone from the broker.
        write_config(tmp_path, broker, sim, 2, HA_ON)
        agent.signal(signal.SIGHUP)
        wait_until(
            lambda: not ha_topics_of(retained(broker.port), "meter-2"),
            30,
            "meter-2's retained config and state cleared",
        )
    finally:
        assert agent.stop() == 0, agent.log
    # A restart without meter-1: what the last run announced is known from data_dir.
    write_config(tmp_path, broker, sim, 1, HA_ON)
    agent = AgentProcess(config)
    try:
        wait_until(
            lambda: not ha_topics_of(retained(broker.port), "meter-1"),
            30,
            "meter-1's retained config and state cleared after the restart",
        )
        states_ready(broker.port, 1)
        # Disabling by a reload clears everything announced.
        write_config(tmp_path, broker, sim, 1, HA_OFF)
        agent.signal(signal.SIGHUP)

        def cleared() -> bool:
            store = retained(broker.port)
            return not discovery_topics(store) and not any(t.endswith("/state") for t in store)

        wait_until(cleared, 30, "every discovery and state cleared")
    finally:
        assert agent.stop() == 0, agent.log
    assert "Traceback" not in agent.log


def test_state_only_moves_forward_across_an_outage(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    data_dir = tmp_path / "var"
    agent = AgentProcess(write_config(tmp_path, broker, sim, 2, HA_ON))
    watcher = Subscriber(broker.port, f"city/{GW}/+/state").start()
    try:
        states_ready(broker.port, 2)
        watcher.stop()
        broker.stop()
        wait_until(lambda: buffer_stats(data_dir).backlog_samples >= 20, 30, "a backlog")
        broker.start()
        watcher = Subscriber(broker.port, f"city/{GW}/+/state").start()
        wait_until(lambda: buffer_stats(data_dir).backlog_samples < 4, 30, "the backlog sent")

        def three_each() -> bool:
            topics = [m.topic for m in watcher.snapshot()]
            return len(set(topics)) == 2 and all(topics.count(t) >= 3 for t in set(topics))

        watcher.wait_for(three_each, what="three states of each device after the outage")
    finally:
        watcher.stop()
        assert agent.stop() == 0, agent.log
    by_device: dict[str, list[float]] = {}
    for m in watcher.snapshot():
        by_device.setdefault(m.topic, []).append(json.loads(m.payload)["t"])
    assert set(by_device) == {f"city/{GW}/meter-0/state", f"city/{GW}/meter-1/state"}
    for topic, times in by_device.items():
        assert times == sorted(times), f"{topic} went back: {times}"
        assert len(times) > 2


def test_demo_publishes_discovery_for_its_configured_devices(broker: Mosquitto) -> None:
    """`citygate demo --homeassistant`: every demo device, BLE sensors included, and nothing
    else (the BLE replay holds only the configured sensors' adverts, but an unconfigured
    address would get no discovery: tests/unit/test_homeassistant.py)."""
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "citygate.cli",
            "demo",
            "--homeassistant",
            "--broker",
            f"mqtt://127.0.0.1:{broker.port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        from citygate.demo import GATEWAY_ID

        expected = {
            f"homeassistant/device/{GATEWAY_ID}_{d}/config"
            for d in ("meter-townhall", "meter-library", "water-main")
        }
        holder: dict[str, dict[str, bytes]] = {}

        def announced() -> bool:
            holder["store"] = retained(broker.port)
            return expected <= discovery_topics(holder["store"])

        wait_until(announced, 60, "discovery of the demo's meters")
        store = holder["store"]
        check_discovery(store, GATEWAY_ID)
        info = json.loads(store[f"city/{GATEWAY_ID}/info"])
        configured = {d["id"] for d in info["devices"]}
        for topic in discovery_topics(store) - {f"homeassistant/device/{GATEWAY_ID}/config"}:
            node = topic.split("/")[2]
            assert node.removeprefix(f"{GATEWAY_ID}_") in configured, topic
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.communicate(timeout=20)
        finally:
            if demo.poll() is None:
                demo.kill()
    assert demo.returncode == 0


ACL_PASSWORDS = {GW: "gw-e2e-Secret-1", "homeassistant": "homeassistant-Secret-4"}


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto enforcing the shipped config/mosquitto-acl.example, with accounts for the
    gateway (its username is its id) and Home Assistant."""
    with reference_acl_broker(tmp_path, ACL_PASSWORDS) as b:
        yield b


def test_end_to_end_under_the_reference_acl(
    tmp_path: Path, acl_broker: Mosquitto, sim: SimProcess
) -> None:
    """`citygate run` logged in as its gateway id under the shipped ACL; Home Assistant's
    account reads everything it needs, the gateway hears its birth message, and the broker
    refuses nothing."""
    port = acl_broker.port
    secret = secret_file(tmp_path / "mqtt-password", ACL_PASSWORDS[GW])
    config = modbus_config(
        tmp_path / "gateway.toml",
        broker_port=port,
        data_dir=tmp_path / "var",
        devices=modbus_devices(sim.port, 2, "100ms"),
        extra=f'username = "{GW}"\npassword_file = "{secret}"\n\n{HA_ON}',
    )
    hass = Subscriber(port, "#", "homeassistant", ACL_PASSWORDS["homeassistant"]).start()
    configs = {
        f"homeassistant/device/{GW}/config",
        f"homeassistant/device/{GW}_meter-0/config",
        f"homeassistant/device/{GW}_meter-1/config",
    }
    states = {f"city/{GW}/meter-0/state", f"city/{GW}/meter-1/state"}
    agent = AgentProcess(config, metrics_interval=0.3)
    try:
        check_under_the_acl(agent, hass, configs, states, port)
    finally:
        hass.stop()
    assert "not authorized" not in agent.log.lower(), agent.log
    assert "refuse" not in agent.log, agent.log
    assert "Traceback" not in agent.log


def check_under_the_acl(
    agent: AgentProcess, hass: Subscriber, configs: set[str], states: set[str], port: int
) -> None:
    def topics(name: str) -> list[str]:
        return [m.topic for m in hass.snapshot() if m.topic == name or name == "*"]

    def metrics() -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in hass.snapshot() if m.topic.endswith("/metrics")]

    try:
        hass.wait_for(
            lambda: configs <= set(topics("*")) and all(len(topics(t)) >= 3 for t in states),
            what="discovery of every device and states updating",
        )
        latest = {m.topic: m.payload for m in hass.snapshot()}
        check_discovery({t: latest[t] for t in configs})
        for device in ("meter-0", "meter-1"):
            meter = json.loads(latest[f"homeassistant/device/{GW}_{device}/config"])
            state = json.loads(latest[f"city/{GW}/{device}/state"])
            assert set(state) - {"t"} == set(meter["components"])
            times = [json.loads(m.payload)["t"] for m in hass.snapshot(f"{device}/state")]
            assert times == sorted(times) and len(set(times)) >= 3, times
        assert latest[f"city/{GW}/status"] == b"online"

        # Home Assistant's birth message (its account may write it; the gateway may read it).
        announced = len([t for t in topics("*") if t in configs])
        publish.single(
            "homeassistant/status",
            b"online",
            qos=1,
            hostname="127.0.0.1",
            port=port,
            auth={"username": "homeassistant", "password": ACL_PASSWORDS["homeassistant"]},
        )
        hass.wait_for(
            lambda: len([t for t in topics("*") if t in configs]) >= announced + len(configs),
            what="discovery sent again after the birth message",
        )
        seen = len(metrics())
        hass.wait_for(lambda: len(metrics()) > seen + 1, what="two more metrics messages")
    finally:
        assert agent.stop() == 0, agent.log
    # Availability follows the gateway: `offline` at the stop.
    hass.wait_for(
        lambda: [m.payload for m in hass.snapshot(f"{GW}/status")][-1:] == [b"offline"],
        what="the gateway's offline status",
    )
    assert metrics() and all(m["refused_samples"] == 0 for m in metrics())
    assert all(m["unsolicited_messages"] == 0 for m in metrics())


def test_reload_moves_home_assistant_to_new_prefixes(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    """A reload that changes `mqtt.topic_prefix` and the discovery prefix moves discovery and
    states without a restart; the subscription to the old prefix's birth messages is undone
    (the broker's session keeps it across the publisher's reconnect), and so is the new one
    when Home Assistant is disabled: no birth message then counts as unsolicited."""
    config = write_config(tmp_path, broker, sim, 1, HA_ON)
    agent = AgentProcess(config, metrics_interval=0.3)
    metrics = Subscriber(broker.port, f"town/{GW}/metrics").start()

    def unsolicited_after(*birth_topics: str) -> int:
        for topic in birth_topics:
            publish.single(topic, b"online", qos=1, hostname="127.0.0.1", port=broker.port)
        seen = len(metrics.snapshot())
        metrics.wait_for(lambda: len(metrics.snapshot()) > seen + 1, what="metrics")
        return int(json.loads(metrics.snapshot()[-1].payload)["unsolicited_messages"])

    def ha_store() -> dict[str, bytes]:
        return {
            t: p
            for t, p in retained(broker.port).items()
            if t.startswith(("homeassistant/", "hass/")) or t.endswith("/state")
        }

    try:
        states_ready(broker.port, 1)
        write_config(
            tmp_path,
            broker,
            sim,
            1,
            f'topic_prefix = "town"\n\n{HA_ON}discovery_prefix = "hass"\n',
        )
        agent.signal(signal.SIGHUP)
        moved = {
            f"hass/device/{GW}/config",
            f"hass/device/{GW}_meter-0/config",
            f"town/{GW}/meter-0/state",
        }
        holder: dict[str, dict[str, bytes]] = {}

        def all_moved() -> bool:
            holder["store"] = ha_store()
            return set(holder["store"]) == moved

        wait_until(all_moved, 30, f"only {sorted(moved)} retained")
        store = holder["store"]
        check_discovery(store, prefix="hass", base="town")
        meter = json.loads(store[f"hass/device/{GW}_meter-0/config"])
        assert {c["state_topic"] for c in meter["components"].values()} == {
            f"town/{GW}/meter-0/state"
        }
        gateway = json.loads(store[f"hass/device/{GW}/config"])
        assert {c["state_topic"] for c in gateway["components"].values()} == {f"town/{GW}/metrics"}

        live = Subscriber(broker.port, "hass/device/#").start()
        try:
            assert unsolicited_after("homeassistant/status", "hass/status") == 0
            live.wait_for(lambda: len(live.snapshot()) >= 2, what="discovery sent again")
        finally:
            live.stop()

        write_config(tmp_path, broker, sim, 1, f'topic_prefix = "town"\n\n{HA_OFF}')
        agent.signal(signal.SIGHUP)
        wait_until(lambda: not ha_store(), 30, "every discovery and state cleared")
        assert unsolicited_after("hass/status") == 0
    finally:
        metrics.stop()
        assert agent.stop() == 0, agent.log
    assert "homeassistant: unsubscribed from homeassistant/status" in agent.log
    assert "Traceback" not in agent.log
