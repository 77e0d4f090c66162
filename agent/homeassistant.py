"""Home Assistant MQTT discovery (mqtt.md, "Home Assistant"; opt-in ``[homeassistant]``).

Builders (sans-I/O): :func:`device_discovery` (one device-based discovery message per device,
``<prefix>/device/<G>_<D>/config``), :func:`gateway_discovery` (the gateway as a device with
diagnostic sensors read from ``P/G/metrics``) and :func:`state_payload` (the flat retained state
``P/G/D/state`` of one stored sample). Classes and units come from :mod:`citygate.ha_classes`.

:class:`HomeAssistant` is the runtime side; it outlives publishers (a reload may replace one):

* Which quantities a device publishes is known from its samples: a device is announced once its
  first sample is acknowledged by the broker, and again when a sample brings a quantity not
  announced yet (the set only grows while running, so that a register failing once does not
  make an entity vanish).
* State: the data loop calls :meth:`HomeAssistant.acked` with the newest sample of every
  acknowledged message; only a sample with a higher ``seq`` than the last state of its device
  becomes the new state, so a backlog replayed after an outage never moves the state back. Only
  that one sample is decoded, and the state is published by the session's task, not the data
  loop.
* What was announced (device ids, their quantities, the discovery prefix and the topic base
  ``P/G``) is kept in ``<data_dir>/homeassistant.json`` (written atomically, only when it
  changes). On start and on reload, a device announced before but no longer configured (or every
  device, when ``[homeassistant]`` is disabled) gets an empty retained config (Home Assistant
  deletes it) and its retained state is cleared; the file then forgets it. This also removes the
  ghosts of an earlier run: a restart with a device removed, or with Home Assistant disabled,
  clears them.
* A new ``mqtt.topic_prefix`` (reload or restart) moves the states: those under the old
  ``P/G`` are cleared, the newest of each device is published under the new one at once, and
  discovery is sent again with the new state and availability topics.
* Discovery is sent after each connect and again when ``<prefix>/status`` says ``online`` (a
  retained ``online`` is ignored: it is an old birth message, and the connect sent discovery).
  The session's task subscribes to ``<prefix>/status``; a reload that changes the prefix or
  enables Home Assistant subscribes to the new one at once. The broker's session (kept across
  connections and restarts, agent/mqtt/session.py) keeps a subscription until it is undone, so
  the one no longer wanted (another prefix, or Home Assistant disabled) is unsubscribed:
  otherwise every birth message on it would arrive as an unsolicited message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citygate import __version__
from citygate.buffer import StoredSample
from citygate.config import HomeAssistantSettings
from citygate.ha_classes import classify
from citygate.mqtt.client import Client, Incoming, MqttError, reason_text
from citygate.safefile import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "homeassistant.json"
"""What was announced, in ``data_dir`` (see the module docstring)."""
SUPPORT_URL = "https://github.com/citygate/citygate"
ORIGIN_NAME = "citygate"
GATEWAY_SENSORS: tuple[tuple[str, str, str | None], ...] = (
    # (metrics field, name, state_class)
    ("backlog_samples", "Backlog samples", "measurement"),
    ("dropped_samples", "Dropped samples", "total_increasing"),
    ("devices_offline", "Devices offline", "measurement"),
)
MAX_QUANTITIES = 1000  # per device: a bound on what a (hostile) driver can make us announce


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A configured device as Home Assistant sees it."""

    id: str
    driver: str
    manufacturer: str | None = None
    model: str | None = None
    medium: str | None = None  # an M-Bus meter's (water, gas, …): classes of its volumes
    serial_number: str | None = None  # a meter's identity facts (status "meter")
    sw_version: str | None = None


def device_identifier(gateway_id: str, device_id: str | None = None) -> str:
    """The ``device.identifiers`` entry (stable across restarts)."""
    return f"citygate_{gateway_id}" if device_id is None else f"citygate_{gateway_id}_{device_id}"


def discovery_topic(prefix: str, gateway_id: str, device_id: str | None = None) -> str:
    """``<prefix>/device/<G>_<D>/config``; the gateway's own is ``<prefix>/device/<G>/config``."""
    node = gateway_id if device_id is None else f"{gateway_id}_{device_id}"
    return f"{prefix}/device/{node}/config"


def state_topic(topic_base: str, device_id: str) -> str:
    """``P/G/D/state``."""
    return f"{topic_base}/{device_id}/state"


def _origin() -> dict[str, str]:
    return {"name": ORIGIN_NAME, "sw_version": __version__, "support_url": SUPPORT_URL}


def _availability(topic_base: str, device_id: str) -> list[dict[str, str]]:
    gateway = {
        "topic": f"{topic_base}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    device = {
        "topic": f"{topic_base}/{device_id}/status",
        "value_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    return [gateway, device]


def device_discovery(
    topic_base: str, gateway_id: str, device: DeviceInfo, quantities: Mapping[str, str | None]
) -> dict[str, Any]:
    """The device-based discovery message of ``device``: one sensor per quantity
    (``quantities``: name → its SenML unit, None for none)."""
    info: dict[str, Any] = {
        "identifiers": [device_identifier(gateway_id, device.id)],
        "name": device.id,
    }
    if device.manufacturer:
        info["manufacturer"] = device.manufacturer
    if device.model:
        info["model"] = device.model
    if device.serial_number:
        info["serial_number"] = device.serial_number
    if device.sw_version:
        info["sw_version"] = device.sw_version
    info["via_device"] = device_identifier(gateway_id)
    availability = _availability(topic_base, device.id)
    components: dict[str, dict[str, Any]] = {}
    for quantity in sorted(quantities):
        ha = classify(quantity, quantities[quantity], device.medium)
        component: dict[str, Any] = {
            "platform": "sensor",
            "unique_id": f"{gateway_id}_{device.id}_{quantity}",
            "name": quantity,
            "state_topic": state_topic(topic_base, device.id),
            "value_template": _template(quantity),
        }
        if ha.device_class is not None:
            component["device_class"] = ha.device_class
        if ha.state_class is not None:
            component["state_class"] = ha.state_class
        if ha.unit is not None:
            component["unit_of_measurement"] = ha.unit
        component["availability"] = availability
        component["availability_mode"] = "all"
        components[quantity] = component
    return {"device": info, "origin": _origin(), "components": components}


def gateway_discovery(topic_base: str, gateway_id: str) -> dict[str, Any]:
    """The gateway as a device: diagnostic sensors read from ``P/G/metrics``."""
    components: dict[str, dict[str, Any]] = {}
    for field, name, state_class in GATEWAY_SENSORS:
        component: dict[str, Any] = {
            "platform": "sensor",
            "unique_id": f"{gateway_id}_{field}",
            "name": name,
            "state_topic": f"{topic_base}/metrics",
            "value_template": "{{ value_json." + field + " }}",
            "entity_category": "diagnostic",
            "availability": [
                {
                    "topic": f"{topic_base}/status",
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }
            ],
        }
        if state_class is not None:
            component["state_class"] = state_class
        components[field] = component
    return {
        "device": {
            "identifiers": [device_identifier(gateway_id)],
            "name": gateway_id,
            "manufacturer": ORIGIN_NAME,
            "model": "gateway",
            "sw_version": __version__,
        },
        "origin": _origin(),
        "components": components,
    }


def decode_sample(body: str) -> list[tuple[str, str | None, Any]]:
    """The (quantity, SenML unit, value) of a stored sample body (citygate.senml), with
    base units (``bu``) resolved; records that do not parse give nothing."""
    try:
        records = json.loads("[{" + body + "}]")
    except ValueError:
        return []
    out: list[tuple[str, str | None, Any]] = []
    base_unit: str | None = None
    for record in records:
        if not isinstance(record, dict):
            continue
        if "bu" in record:
            base_unit = record["bu"]
        name = record.get("n")
        if not isinstance(name, str):
            continue
        unit = record.get("u", base_unit)
        for key in ("v", "vs", "vb"):
            if key in record:
                out.append((name, unit if isinstance(unit, str) else None, record[key]))
                break
    return out


def state_payload(sample: StoredSample) -> tuple[bytes, dict[str, str | None]]:
    """The flat state ``{"<quantity>": value, …, "t": <Unix s>}`` of ``sample`` and its
    quantities (name → SenML unit)."""
    readings = decode_sample(sample.body)
    state: dict[str, Any] = {name: value for name, _, value in readings}
    state["t"] = round(sample.time, 3)
    payload = json.dumps(state, separators=(",", ":")).encode()
    return payload, {name: unit for name, unit, _ in readings}


def device_info(device_id: str, driver: str, driver_config: object) -> DeviceInfo:
    """Manufacturer and model where the config knows them (a Modbus profile's header)."""
    profile = getattr(driver_config, "profile", None)
    manufacturer = getattr(profile, "manufacturer", None)
    model = getattr(profile, "model", None)
    return DeviceInfo(
        device_id,
        driver,
        manufacturer if isinstance(manufacturer, str) else None,
        model if isinstance(model, str) else None,
    )


def _facts_info(device: DeviceInfo, facts: Mapping[str, Any]) -> DeviceInfo:
    """Fill manufacturer, model and medium from a driver's status facts (an M-Bus meter's
    header, a BLE decoder's)."""
    manufacturer, model, medium = device.manufacturer, device.model, device.medium
    serial_number, sw_version = device.serial_number, device.sw_version
    for source in (facts, facts.get("meter")):
        if not isinstance(source, Mapping):
            continue
        # A Modbus meter's identity registers; a (wireless) M-Bus meter's id is its serial.
        for key in ("serial_number", "id"):
            found = source.get(key)
            if serial_number is None and isinstance(found, str) and 0 < len(found) <= 64:
                serial_number = found
        found = source.get("firmware_version")
        if sw_version is None and isinstance(found, str) and 0 < len(found) <= 64:
            sw_version = found
        found = source.get("manufacturer")
        if manufacturer is None and isinstance(found, str) and found:
            manufacturer = found
        found = source.get("model")
        if model is None and isinstance(found, str) and found:
            model = found
        found = source.get("medium")
        if medium is None and isinstance(found, str) and found:
            medium = found
    return DeviceInfo(
        device.id, device.driver, manufacturer, model, medium, serial_number, sw_version
    )


Publish = Callable[[str, bytes], Awaitable[None]]
"""Publish retained, QoS 1, waiting for the PUBACK (the announcer's)."""


class HomeAssistant:
    """Discovery, state and clean-up for one gateway (see the module docstring)."""

    def __init__(
        self,
        settings: HomeAssistantSettings,
        topic_base: str,
        gateway_id: str,
        data_dir: Path,
        devices: Sequence[DeviceInfo],
        facts: Callable[[str], Mapping[str, Any]] | None = None,
    ) -> None:
        self._settings = settings
        self._base = topic_base  # P/G of the states announced (the file's, until update)
        self._gateway_id = gateway_id
        self._path = data_dir / STATE_FILE
        self._facts = facts
        self._devices: dict[str, DeviceInfo] = {}
        self._quantities: dict[str, dict[str, str | None]] = {}  # announced (or to be)
        self._announced_prefix: str | None = None  # the prefix the file's devices are under
        self._gateway_announced = False
        self._state_seq: dict[str, int] = {}  # the seq of each device's last state
        self._states: dict[str, bytes] = {}  # states waiting to be published
        self._last_states: dict[str, bytes] = {}  # the newest state of each device
        self._dirty: set[str] = set()  # devices whose discovery must be (re)sent
        self._clear: dict[str, None] = {}  # topics to empty (retained), in order
        self._resend = True  # every discovery again (a connect, `online`)
        self._saved: bytes | None = None
        self._wake = asyncio.Event()
        self._subscribed: str | None = None  # the status filter subscribed on this connection
        self._held: str | None = None  # the status filter the broker's session holds
        self._load()
        self.update(settings, devices, topic_base)

    # ------------------------------------------------------------------ state kept on disk

    def _load(self) -> None:
        try:
            data = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("homeassistant: cannot read %s (%s); starting afresh", self._path, exc)
            return
        if not isinstance(data, dict) or not _topic_part(data.get("prefix")):
            log.warning("homeassistant: %s is not what it should be; starting afresh", self._path)
            return
        self._announced_prefix = data["prefix"]
        self._held = f"{data['prefix']}/status"  # the last run subscribed to it
        if _topic_part(data.get("base")):
            self._base = data["base"]
        self._gateway_announced = bool(data.get("gateway"))
        devices = data.get("devices")
        if isinstance(devices, dict):
            for device_id, quantities in devices.items():
                if _topic_part(device_id) and "/" not in device_id and isinstance(quantities, dict):
                    self._quantities[device_id] = {
                        str(q): u if isinstance(u, str) else None
                        for q, u in list(quantities.items())[:MAX_QUANTITIES]
                    }

    def _save(self) -> None:
        if self._announced_prefix is None and not self._quantities:
            data = b""
        else:
            document = {
                "prefix": self._announced_prefix,
                "base": self._base,
                "gateway": self._gateway_announced,
                "devices": self._quantities,
            }
            data = json.dumps(document, sort_keys=True).encode()
        if data == self._saved:
            return
        try:
            if data:
                write_atomic(self._path, data, durable=False)
            else:
                self._path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("homeassistant: cannot write %s: %s", self._path, exc)
            return
        self._saved = data

    # ------------------------------------------------------------------ config

    @property
    def enabled(self) -> bool:
        """``[homeassistant] enabled``."""
        return self._settings.enabled

    @property
    def topic_filter(self) -> str:
        """``<prefix>/status``: Home Assistant's birth and last will."""
        return f"{self._settings.discovery_prefix}/status"

    def update(
        self,
        settings: HomeAssistantSettings,
        devices: Sequence[DeviceInfo],
        topic_base: str | None = None,
    ) -> None:
        """Start, or a reload: clear what is announced and no longer wanted; a new
        ``topic_base`` (``P/G``: ``mqtt.topic_prefix`` changed) moves the states."""
        self._settings = settings
        self._devices = {d.id: d for d in devices} if settings.enabled else {}
        old_base = self._base
        new_base = old_base if topic_base is None else topic_base
        old_prefix = self._announced_prefix
        if old_prefix is not None and old_prefix != settings.discovery_prefix:
            gone = list(self._quantities)  # all of them, from the old prefix
        else:
            gone = [d for d in self._quantities if d not in self._devices]
        if old_prefix is not None:
            for device_id in gone:
                self._clear[discovery_topic(old_prefix, self._gateway_id, device_id)] = None
            if self._gateway_announced and (
                not settings.enabled or old_prefix != settings.discovery_prefix
            ):
                self._clear[discovery_topic(old_prefix, self._gateway_id)] = None
        # States: of a device no longer configured, and every one under a base given up.
        for device_id in self._quantities:
            if device_id not in self._devices or new_base != old_base:
                self._clear[state_topic(old_base, device_id)] = None
        for device_id in gone:
            if device_id not in self._devices:
                self._quantities.pop(device_id, None)
                self._state_seq.pop(device_id, None)
                self._states.pop(device_id, None)
                self._last_states.pop(device_id, None)
            self._dirty.discard(device_id)
        if new_base != old_base:
            self._base = new_base
            for device_id in self._devices:  # back to a base cleared by an earlier reload
                self._clear.pop(state_topic(new_base, device_id), None)
            # The newest state of each device on its new topic now, not at its next sample.
            for device_id, payload in self._last_states.items():
                self._states.setdefault(device_id, payload)
        self._resend = True
        self._wake.set()

    # ------------------------------------------------------------------ inputs

    def acked(self, sample: StoredSample) -> None:
        """The broker acknowledged a data message whose newest sample is ``sample``."""
        device_id = sample.device_id
        if not self._settings.enabled or device_id not in self._devices:
            return
        if sample.seq <= self._state_seq.get(device_id, 0):
            return  # an older sample (a backlog replayed, a refusal retried): not the state
        self._state_seq[device_id] = sample.seq
        payload, quantities = state_payload(sample)
        self._states[device_id] = payload
        self._last_states[device_id] = payload
        known = self._quantities.setdefault(device_id, {})
        new = {q: u for q, u in quantities.items() if known.get(q, "\0") != u}
        if new and len(known) < MAX_QUANTITIES:
            known.update(list(new.items())[: MAX_QUANTITIES - len(known)])
            self._dirty.add(device_id)
        self._wake.set()

    def deliver(self, incoming: Incoming) -> None:
        """A message on ``<prefix>/status``: ``online`` (not retained) sends discovery again."""
        if incoming.retain or incoming.payload.strip() != b"online":
            return
        if not self._settings.enabled or incoming.topic != self.topic_filter:
            return  # on a filter being unsubscribed
        log.info("homeassistant: Home Assistant is online; sending discovery again")
        self._resend = True
        self._wake.set()

    # ------------------------------------------------------------------ the session's task

    async def run(self, client: Client, publish: Publish, ack_timeout: float) -> None:
        """One connection's task: subscribe to ``<prefix>/status``, send discovery and states
        as they come (a raising publish ends the session, like the announcer's)."""
        self._subscribed = None
        self._resend = True
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._subscribe(client, ack_timeout)
            await self.send_pending(publish)

    async def _subscribe(self, client: Client, ack_timeout: float) -> None:
        wanted = self.topic_filter if self._settings.enabled else None
        held = self._held
        if held is not None and held != wanted:
            # Routed until the UNSUBACK: what the broker sent before it is not unsolicited.
            reason = await client.unsubscribe(held, within=ack_timeout)
            self._held = None
            client.unroute(held)
            if reason is not None and reason.is_failure:
                log.warning(
                    "homeassistant: the broker refused to unsubscribe from %s: %s",
                    held,
                    reason_text(reason),
                )
            else:
                log.info("homeassistant: unsubscribed from %s", held)
        if self._subscribed is not None and self._subscribed != wanted:
            client.unroute(self._subscribed)
            self._subscribed = None
        if wanted is None or wanted == self._subscribed:
            return
        client.route(wanted, self.deliver)
        self._subscribed = wanted
        reason = await client.subscribe(wanted, 1, within=ack_timeout)
        if reason.is_failure:
            log.warning(
                "homeassistant: the broker refused the subscription to %s: %s (discovery is "
                "sent at each connect only)",
                wanted,
                reason_text(reason),
            )
        else:
            self._held = wanted

    async def send_pending(self, publish: Publish) -> None:
        """Publish what is due: clears, discovery (gateway first), then states."""
        while self._clear:
            topic = next(iter(self._clear))
            await publish(topic, b"")
            self._clear.pop(topic, None)
            if topic.endswith("/config"):
                log.info("homeassistant: removed %s", topic)
        if not self._settings.enabled:
            self._announced_prefix = None
            self._gateway_announced = False
            self._quantities.clear()
            self._save()
            return
        prefix = self._settings.discovery_prefix
        if self._resend:
            self._resend = False
            self._dirty.update(self._quantities)
            await publish(
                discovery_topic(prefix, self._gateway_id),
                _dumps(gateway_discovery(self._base, self._gateway_id)),
            )
            self._gateway_announced = True
            self._announced_prefix = prefix
        while self._dirty:
            device_id = min(self._dirty)
            device = self._devices.get(device_id)
            quantities = self._quantities.get(device_id)
            if device is not None and quantities:
                if self._facts is not None:
                    device = _facts_info(device, self._facts(device_id))
                message = device_discovery(self._base, self._gateway_id, device, quantities)
                await publish(discovery_topic(prefix, self._gateway_id, device_id), _dumps(message))
                self._announced_prefix = prefix
            self._dirty.discard(device_id)
        self._save()
        while self._states:
            device_id = min(self._states)
            payload = self._states.pop(device_id)
            try:
                await publish(state_topic(self._base, device_id), payload)
            except (MqttError, TimeoutError):
                # Keep it for the next connection unless a newer one came meanwhile.
                self._states.setdefault(device_id, payload)
                raise


def known_devices(
    devices: Iterable[tuple[str, str, object]],
) -> list[DeviceInfo]:
    """DeviceInfo of each (id, driver, driver_config)."""
    return [device_info(i, drv, cfg) for i, drv, cfg in devices]


def _topic_part(text: object) -> bool:
    """Whether ``text`` (from the file) can start a topic name: published to, not matched."""
    return isinstance(text, str) and 0 < len(text) <= 1024 and not set(text) & set("+#\0")


def _template(quantity: str) -> str:
    if quantity.isidentifier():
        return "{{ value_json." + quantity + " }}"
    return "{{ value_json[" + json.dumps(quantity) + "] }}"


def _dumps(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
