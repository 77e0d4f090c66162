"""Home Assistant discovery, sans I/O: payloads, the state guard, clean-up and its file."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any, cast

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from citygate.buffer import StoredSample
from citygate.config import HomeAssistantSettings
from citygate.homeassistant import (
    STATE_FILE,
    DeviceInfo,
    HomeAssistant,
    device_discovery,
    gateway_discovery,
    state_payload,
)
from citygate.mqtt.client import Client, Incoming

BASE = "city/gw"
ON = HomeAssistantSettings(enabled=True)
OFF = HomeAssistantSettings(enabled=False)
BODY = (  # as citygate.senml stores it: with a unitless record, units on every record
    '"n":"voltage_l1","u":"V","v":231.2},{"n":"voltage_l2","u":"V","v":230},'
    '{"n":"energy_import","u":"kWh","v":18.5},{"n":"meter_status","vs":"ok"'
)


def sample(seq: int, device: str = "m1", t: float = 1764079200.5, body: str = BODY) -> StoredSample:
    return StoredSample(seq, device, t, True, 4, body)


class Broker:
    """A retained store: what a fresh subscriber would see."""

    def __init__(self) -> None:
        self.retained: dict[str, bytes] = {}
        self.log: list[str] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        self.log.append(topic)
        if payload:
            self.retained[topic] = payload
        else:
            self.retained.pop(topic, None)

    def json(self, topic: str) -> Any:
        return json.loads(self.retained[topic])


def devices(*ids: str) -> list[DeviceInfo]:
    return [DeviceInfo(i, "modbus") for i in ids]


def ha(tmp_path: Path, settings: HomeAssistantSettings, *ids: str) -> HomeAssistant:
    return HomeAssistant(settings, BASE, "gw", tmp_path, devices(*ids))


def test_state_is_flat() -> None:
    payload, quantities = state_payload(sample(7, t=1764079200.51234))
    assert json.loads(payload) == {
        "voltage_l1": 231.2,
        "voltage_l2": 230,
        "energy_import": 18.5,
        "meter_status": "ok",
        "t": 1764079200.512,
    }
    assert quantities == {
        "voltage_l1": "V",
        "voltage_l2": "V",
        "energy_import": "kWh",
        "meter_status": None,
    }


def test_base_unit_is_resolved() -> None:
    body = (
        '"bu":"V","n":"voltage_l1","v":231.2},{"n":"voltage_l2","v":230},'
        '{"bu":"A","n":"current_l1","v":1'
    )
    assert state_payload(sample(1, body=body))[1] == {
        "voltage_l1": "V",
        "voltage_l2": "V",
        "current_l1": "A",
    }


def test_hostile_body_gives_an_empty_state() -> None:
    payload, quantities = state_payload(sample(1, body='"n":'))
    assert json.loads(payload) == {"t": 1764079200.5} and quantities == {}


def test_discovery_payload_schema() -> None:
    info = DeviceInfo("m1", "modbus", "Eastron", "SDM630")
    message = device_discovery(BASE, "gw", info, state_payload(sample(1))[1])
    assert message["device"] == {
        "identifiers": ["citygate_gw_m1"],
        "name": "m1",
        "manufacturer": "Eastron",
        "model": "SDM630",
        "via_device": "citygate_gw",
    }
    assert message["origin"]["name"] == "citygate" and message["origin"]["sw_version"]
    components = message["components"]
    assert set(components) == {"voltage_l1", "voltage_l2", "energy_import", "meter_status"}
    for quantity, c in components.items():
        assert c["platform"] == "sensor"
        assert c["unique_id"] == f"gw_m1_{quantity}"
        assert c["state_topic"] == "city/gw/m1/state"
        assert c["value_template"] == "{{ value_json." + quantity + " }}"
        assert c["availability_mode"] == "all"
        assert [a["topic"] for a in c["availability"]] == ["city/gw/status", "city/gw/m1/status"]
        assert c["availability"][1]["value_template"] == "{{ value_json.state }}"
    assert components["energy_import"]["state_class"] == "total_increasing"
    assert components["energy_import"]["unit_of_measurement"] == "kWh"
    assert "state_class" not in components["meter_status"]
    gateway = gateway_discovery(BASE, "gw")
    assert gateway["device"]["identifiers"] == ["citygate_gw"]
    for c in gateway["components"].values():
        assert c["entity_category"] == "diagnostic" and c["state_topic"] == "city/gw/metrics"


def test_an_older_sample_never_becomes_the_state(tmp_path: Path) -> None:
    async def main() -> Broker:
        broker = Broker()
        h = ha(tmp_path, ON, "m1")
        h.acked(sample(10, t=100.0))
        h.acked(sample(4, t=40.0))  # a backlog row, refused before and accepted now
        await h.send_pending(broker.publish)
        h.acked(sample(9, t=90.0))
        await h.send_pending(broker.publish)
        return broker

    broker = asyncio.run(main())
    assert broker.json("city/gw/m1/state")["t"] == 100.0
    assert broker.log.count("city/gw/m1/state") == 1


def test_discovery_once_known_and_again_when_quantities_change(tmp_path: Path) -> None:
    async def main() -> Broker:
        broker = Broker()
        h = ha(tmp_path, ON, "m1", "m2")
        await h.send_pending(broker.publish)
        assert "homeassistant/device/gw/config" in broker.retained
        assert "homeassistant/device/gw_m1/config" not in broker.retained  # no sample yet
        h.acked(sample(1))
        await h.send_pending(broker.publish)
        h.acked(sample(2))  # the same quantities: no new discovery
        await h.send_pending(broker.publish)
        assert broker.log.count("homeassistant/device/gw_m1/config") == 1
        h.acked(sample(3, body='"n":"frequency","u":"Hz","v":50'))
        await h.send_pending(broker.publish)
        return broker

    broker = asyncio.run(main())
    components = broker.json("homeassistant/device/gw_m1/config")["components"]
    assert "frequency" in components and "voltage_l1" in components  # grows, never shrinks
    assert "homeassistant/device/gw_m2/config" not in broker.retained


def test_unconfigured_device_gets_no_discovery(tmp_path: Path) -> None:
    """A BLE address merely heard is never a configured device: nothing is announced."""

    async def main() -> Broker:
        broker = Broker()
        h = ha(tmp_path, ON, "thermo-1")
        h.acked(sample(1, device="ble-a4c138000001"))
        await h.send_pending(broker.publish)
        return broker

    assert set(asyncio.run(main()).retained) == {"homeassistant/device/gw/config"}


def test_removed_device_and_restart_ghosts_are_cleared(tmp_path: Path) -> None:
    async def main() -> Broker:
        broker = Broker()
        h = ha(tmp_path, ON, "m1", "m2")
        h.acked(sample(1, "m1"))
        h.acked(sample(2, "m2"))
        await h.send_pending(broker.publish)
        assert json.loads((tmp_path / STATE_FILE).read_text())["devices"].keys() == {"m1", "m2"}
        h.update(ON, devices("m1"))  # a reload without m2
        await h.send_pending(broker.publish)
        assert "homeassistant/device/gw_m2/config" not in broker.retained
        assert "city/gw/m2/state" not in broker.retained
        # A new run (restart) knows from data_dir what the last one announced.
        h.acked(sample(3, "m1"))
        await h.send_pending(broker.publish)
        again = ha(tmp_path, OFF, "m1")
        await again.send_pending(broker.publish)
        return broker

    broker = asyncio.run(main())
    assert broker.retained == {}
    assert not (tmp_path / STATE_FILE).exists()


def test_prefix_change_moves_discovery(tmp_path: Path) -> None:
    async def main() -> Broker:
        broker = Broker()
        h = ha(tmp_path, ON, "m1")
        h.acked(sample(1))
        await h.send_pending(broker.publish)
        h.update(HomeAssistantSettings(enabled=True, discovery_prefix="ha2"), devices("m1"))
        await h.send_pending(broker.publish)
        return broker

    broker = asyncio.run(main())
    assert set(broker.retained) == {
        "ha2/device/gw/config",
        "ha2/device/gw_m1/config",
        "city/gw/m1/state",
    }


def test_online_resends_but_retained_birth_does_not(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        broker = Broker()
        h = ha(tmp_path, ON, "m1")
        h.acked(sample(1))
        await h.send_pending(broker.publish)
        h.deliver(Incoming("homeassistant/status", b"online", retain=True))
        await h.send_pending(broker.publish)
        before = broker.log.count("homeassistant/device/gw_m1/config")
        h.deliver(Incoming("homeassistant/status", b"online", retain=False))
        await h.send_pending(broker.publish)
        return before, broker.log.count("homeassistant/device/gw_m1/config")

    assert asyncio.run(main()) == (1, 2)


def test_topic_prefix_change_moves_states_and_discovery(tmp_path: Path) -> None:
    """A reload with another ``mqtt.topic_prefix``: discovery points at the new state and
    availability topics, the newest state is on the new topic at once, the old one is cleared."""

    async def main() -> Broker:
        broker = Broker()
        h = ha(tmp_path, ON, "m1")
        h.acked(sample(1))
        await h.send_pending(broker.publish)
        h.update(ON, devices("m1"), "town/gw")
        await h.send_pending(broker.publish)
        return broker

    broker = asyncio.run(main())
    assert set(broker.retained) == {
        "homeassistant/device/gw/config",
        "homeassistant/device/gw_m1/config",
        "town/gw/m1/state",
    }
    assert broker.json("town/gw/m1/state")["t"] == 1764079200.5
    for c in broker.json("homeassistant/device/gw_m1/config")["components"].values():
        assert c["state_topic"] == "town/gw/m1/state"
        assert [a["topic"] for a in c["availability"]] == ["town/gw/status", "town/gw/m1/status"]
    for c in broker.json("homeassistant/device/gw/config")["components"].values():
        assert c["state_topic"] == "town/gw/metrics"


def test_restart_with_another_topic_prefix_clears_the_old_states(tmp_path: Path) -> None:
    async def main() -> Broker:
        broker = Broker()
        h = ha(tmp_path, ON, "m1")
        h.acked(sample(1))
        await h.send_pending(broker.publish)
        again = HomeAssistant(ON, "town/gw", "gw", tmp_path, devices("m1"))
        again.acked(sample(2))
        await again.send_pending(broker.publish)
        return broker

    broker = asyncio.run(main())
    assert "city/gw/m1/state" not in broker.retained
    assert "town/gw/m1/state" in broker.retained


class FakeClient:
    """The subscription side of citygate.mqtt.client.Client: what was asked of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.routes: set[str] = set()

    def route(self, topic_filter: str, sink: Any) -> None:
        self.routes.add(topic_filter)

    def unroute(self, topic_filter: str) -> None:
        self.routes.discard(topic_filter)

    async def subscribe(self, topic_filter: str, qos: int, within: float) -> ReasonCode:
        self.calls.append(("subscribe", topic_filter))
        return ReasonCode(PacketTypes.SUBACK, identifier=1)

    async def unsubscribe(self, topic_filter: str, within: float) -> ReasonCode:
        self.calls.append(("unsubscribe", topic_filter))
        return ReasonCode(PacketTypes.UNSUBACK, identifier=0)


async def one_connection(h: HomeAssistant, client: FakeClient, *changes: Any) -> None:
    """Run ``h`` over ``client``; each of ``changes`` (an update's arguments) once the
    previous one has been carried out (nothing left to send)."""
    broker = Broker()
    task = asyncio.create_task(h.run(cast(Client, client), broker.publish, 1.0))
    try:
        for change in (None, *changes):
            if change is not None:
                h.update(*change)
            for _ in range(100):
                await asyncio.sleep(0)
            assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_subscription_given_up_is_unsubscribed(tmp_path: Path) -> None:
    """The broker's session keeps a subscription: one no longer wanted (another discovery
    prefix, Home Assistant disabled) is unsubscribed, or Home Assistant's birth messages on it
    would arrive as unsolicited messages."""
    client = FakeClient()
    h = ha(tmp_path, ON, "m1")
    hass = HomeAssistantSettings(enabled=True, discovery_prefix="hass")
    asyncio.run(one_connection(h, client, (hass, devices("m1")), (OFF, devices("m1"))))
    assert client.calls == [
        ("subscribe", "homeassistant/status"),
        ("unsubscribe", "homeassistant/status"),
        ("subscribe", "hass/status"),
        ("unsubscribe", "hass/status"),
    ]
    assert client.routes == set()


def test_subscription_of_an_earlier_run_is_unsubscribed(tmp_path: Path) -> None:
    """The broker's session outlives the process: a restart with Home Assistant disabled
    (or another discovery prefix) unsubscribes what the last run subscribed to."""

    async def first_run() -> None:
        h = ha(tmp_path, ON, "m1")
        h.acked(sample(1))
        await one_connection(h, FakeClient())

    asyncio.run(first_run())
    client = FakeClient()
    asyncio.run(one_connection(ha(tmp_path, OFF, "m1"), client))
    assert client.calls == [("unsubscribe", "homeassistant/status")]
    assert not (tmp_path / STATE_FILE).exists()


def test_a_file_with_wildcard_topics_is_not_trusted(tmp_path: Path) -> None:
    """A damaged homeassistant.json cannot make the gateway publish to a wildcard (paho would
    raise and end the session at every connect): it is ignored."""
    (tmp_path / STATE_FILE).write_text(
        json.dumps({"prefix": "ha/#", "base": "city/+", "gateway": True, "devices": {"m1": {}}})
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / STATE_FILE).write_text(
        json.dumps({"prefix": "ha", "devices": {"m#": {}, "a/b": {}, "m1": {}}})
    )

    async def main() -> Broker:
        broker = Broker()
        await ha(tmp_path, OFF, "m1").send_pending(broker.publish)
        assert broker.log == []
        await ha(tmp_path / "other", OFF, "m1").send_pending(broker.publish)
        return broker

    assert asyncio.run(main()).log == ["ha/device/gw_m1/config", "city/gw/m1/state"]


def test_meter_identity_facts_fill_the_device_registry(tmp_path: Path) -> None:
    """Issue 16's identity registers (status "meter") reach Home Assistant's device page:
    serial number and firmware; a hostile fact (not a string, too long) is left out."""
    facts: dict[str, dict[str, Any]] = {
        "m1": {
            "meter": {"serial_number": "41029311", "model": "SDM630", "firmware_version": "3.04"}
        },
        "m2": {"meter": {"serial_number": 7, "firmware_version": "x" * 500, "id": "92752244"}},
    }

    async def main() -> Broker:
        broker = Broker()
        h = HomeAssistant(ON, BASE, "gw", tmp_path, devices("m1", "m2"), facts=facts.__getitem__)
        h.acked(sample(1, "m1"))
        h.acked(sample(2, "m2"))
        await h.send_pending(broker.publish)
        return broker

    broker = asyncio.run(main())
    m1 = broker.json("homeassistant/device/gw_m1/config")["device"]
    assert (m1["serial_number"], m1["model"], m1["sw_version"]) == ("41029311", "SDM630", "3.04")
    m2 = broker.json("homeassistant/device/gw_m2/config")["device"]
    assert m2["serial_number"] == "92752244"  # an M-Bus header's id
    assert "sw_version" not in m2
