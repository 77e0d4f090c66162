"""``citygate demo``: simulators, a broker, the agent, and a live view.

Everything runs in this one process on loopback: the hardware simulators
(package ``citygate_sim``), an embedded MQTT broker (amqtt, bound to 127.0.0.1 only)
unless ``--broker URL`` names a real one, and the agent on a generated config
that is written to a temporary folder (its path is printed, so it can be read
and copied). On a terminal the view is ``citygate top``'s (agent/top.py) over the
demo's data_dir, and the agent's log lines are kept until the demo ends (the latest
shows in the footer for a while); otherwise one plain line per message that reaches
the broker. Ctrl-C (or ``q`` in the view) stops everything in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt

from citygate import datadir, logs, registry, senml
from citygate.config import Config, load

GATEWAY_ID = "gw-demo"

log = logging.getLogger("citygate.demo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(
    modbus_port: int,
    broker_url: str,
    protocol: str,
    data_dir: Path,
    *,
    mbus_port: str | None = None,
    ble_capture: Path | None = None,
    homeassistant: bool = False,
    wmbus_port: str | None = None,
) -> str:
    """The gateway.toml the demo runs (with the M-Bus water meter if ``mbus_port``,
    the BLE sensors if ``ble_capture``, Home Assistant discovery if ``homeassistant``,
    the wireless water meter if ``wmbus_port``: its key file goes beside ``data_dir``)."""
    return (
        _modbus_part(modbus_port, broker_url, protocol, data_dir)
        + ("\n[homeassistant]\nenabled = true\n\n" if homeassistant else "")
        + (_mbus_part(mbus_port) if mbus_port is not None else "")
        + (_ble_part(ble_capture) if ble_capture is not None else "")
        + (_wmbus_part(wmbus_port, data_dir.parent) if wmbus_port is not None else "")
    )


def _wmbus_part(port: str, key_dir: Path) -> str:
    """The encrypted water meter of the wireless M-Bus simulator, heard by its iM871A."""
    from citygate_sim.wmbus import DEMO_METERS

    meter = DEMO_METERS[0]
    assert meter.key is not None
    key_file = key_dir / f"wmbus-key-{meter.ident:08d}"
    key_file.write_text(meter.key.hex() + "\n")
    key_file.chmod(0o600)
    return f"""
# A wireless M-Bus water meter (OMS, AES mode 5) heard by a simulated IMST iM871A
# stick on a pseudo-terminal; the stick also hears two meters nobody configured.
[[wmbus]]
id = "radio"
port = "{port}"
dongle = "im871a"
mode = "T1"

[[device]]
id = "water-wireless"
driver = "wmbus"
receiver = "radio"
meter_id = "{meter.ident:08d}"
key_file = "{key_file}"
interval = "10s"
"""


def _ble_part(capture: Path) -> str:
    """BLE sensors from a simulated capture, replayed in a loop (no radio needed)."""
    from citygate_sim.ble import DEMO_SENSORS

    text = f"""
# BLE sensors: adverts replayed from a capture written by the BLE simulator
# (`citygate scan ble --record FILE` writes the same format from a real site).
[ble]
replay = "{capture}"
replay_loop = true
"""
    for sensor in DEMO_SENSORS:
        text += f"""
[[device]]
id = "env-{sensor.address.replace(":", "")[-6:].lower()}"
driver = "ble"
address = "{sensor.address}"
interval = "10s"
"""
        if sensor.bindkey is not None:
            key_file = capture.parent / f"bindkey-{sensor.address.replace(':', '')}"
            key_file.write_text(sensor.bindkey.hex() + "\n")
            key_file.chmod(0o600)
            text += f'bindkey_file = "{key_file}"\n'
    return text


MBUS_DEMO_METER = (12345678, 5)
"""Identification number and primary address of the demo's water meter."""


def _mbus_part(port: str) -> str:
    return f"""
# A wired M-Bus water meter on a pseudo-terminal. A pty refuses even parity:
# a real M-Bus line is 2400 baud, parity "E".
[[serial]]
id = "mbus"
port = "{port}"
baudrate = 2400
parity = "N"

[[device]]
id = "water-main"
driver = "mbus"
serial = "mbus"
address = {MBUS_DEMO_METER[1]}
interval = "10s"
labels = {{ building = "town hall" }}
"""


def _modbus_part(modbus_port: int, broker_url: str, protocol: str, data_dir: Path) -> str:
    return f"""\
# Written by `citygate demo`: the simulators listen on loopback.
[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data_dir}"
log_level = "warning"
labels = {{ site = "demo" }}

[mqtt]
url = "{broker_url}"
protocol = "{protocol}"
linger = "100ms"

[[device]]
id = "meter-townhall"
driver = "modbus"
host = "127.0.0.1"
port = {modbus_port}
unit = 1
profile = "eastron-sdm630"
interval = "2s"
labels = {{ building = "town hall" }}

[[device]]
id = "meter-library"
driver = "modbus"
host = "127.0.0.1"
port = {modbus_port}
unit = 2
profile = "eastron-sdm120"
interval = "5s"
"""


@contextlib.asynccontextmanager
async def _embedded_broker(port: int) -> AsyncIterator[None]:
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise SystemExit(
            "the embedded broker needs the demo extra: pip install 'citygate[demo]' "
            "(or use --broker mqtt://HOST:PORT)"
        ) from None
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await broker.shutdown()


def _format_value(record: Mapping[str, object]) -> str:
    if "v" in record:
        value = record["v"]
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
    elif "vb" in record:
        text = str(record["vb"]).lower()
    else:
        text = str(record.get("vs", ""))
    unit = record.get("u")
    return f"{text} {unit}" if unit else text


class LiveView:
    """Prints one line per message that reaches the broker (stdout is not a terminal)."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, str]] = {}
        self.seq: dict[str, int] = {}

    def on_message(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) == 4 and parts[3] == "data":
            device = parts[2]
            values = self.latest.setdefault(device, {})
            for record in senml.resolve(json.loads(payload)):
                if isinstance(seq := record.get("seq"), int):
                    self.seq[device] = seq
                values[str(record["n"]).rsplit("/", 1)[-1]] = _format_value(record)
            shown = ", ".join(f"{n}={v}" for n, v in list(values.items())[:6])
            print(
                f"{device} seq {self.seq.get(device)}: {shown}, … ({len(values)} readings)",
                flush=True,
            )
        elif len(parts) == 4 and parts[3] == "status":
            print(f"{parts[2]} is {json.loads(payload).get('state', '?')}", flush=True)
        elif len(parts) == 3 and parts[2] == "status":
            print(f"gateway {parts[1]} is {payload.decode(errors='replace')}", flush=True)


class KeptLog(logging.Handler):
    """The agent's log lines while the full-screen view is up: kept (bounded), the latest
    offered to the view's footer for :data:`NOTICE_S`, all printed when the demo ends."""

    NOTICE_S = 10.0

    def __init__(self, keep: int = 200) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._last = 0.0
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self._last = time.monotonic()

    def notice(self) -> str | None:
        """The latest line, while it is recent."""
        if self.lines and time.monotonic() - self._last < self.NOTICE_S:
            return self.lines[-1]
        return None


async def _watch(broker_url: str, protocol: str, view: LiveView) -> None:
    url = urlsplit(broker_url)
    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    while True:
        try:
            async with aiomqtt.Client(
                url.hostname or "127.0.0.1",
                url.port or 1883,
                protocol=version,
                identifier="citygate-demo-view",
            ) as client:
                await client.subscribe(f"city/{GATEWAY_ID}/#", qos=1)
                async for message in client.messages:
                    payload = (
                        message.payload
                        if isinstance(message.payload, bytes)
                        else str(message.payload).encode()
                    )
                    view.on_message(str(message.topic), payload)
        except aiomqtt.MqttError as exc:
            log.debug("live view: %s; reconnecting", exc)
            await asyncio.sleep(1.0)


async def _top_view(config: Config, stop: asyncio.Event, kept: KeptLog) -> None:
    from citygate.top import run_top

    await run_top(config, stop=stop, title="citygate demo", notice=kept.notice)
    stop.set()  # `q`


@contextlib.contextmanager
def _logs_kept(kept: KeptLog | None) -> Iterator[None]:
    """While the full-screen view is up, log lines go to ``kept`` (printed at the end)."""
    if kept is None:
        yield
        return
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers[:] = [kept]
    try:
        yield
    finally:
        root.handlers[:] = handlers
        for line in kept.lines:
            print(line, file=sys.stderr)


async def _demo(broker: str | None, homeassistant: bool = False) -> None:
    try:
        from citygate_sim.mbus import MbusSimulator, WaterMeter
        from citygate_sim.modbus import ModbusTcpSimulator, make_meter
    except ImportError:
        raise SystemExit(
            "the demo needs the simulators: pip install -e hardware-sim (make demo does it)"
        ) from None
    from citygate.app import Agent

    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    with tempfile.TemporaryDirectory(prefix="citygate-demo-") as tmp:
        workdir = Path(tmp)
        meters = {1: make_meter("sdm630", seed=1), 2: make_meter("sdm120", seed=2)}
        simulator = ModbusTcpSimulator(meters, host="127.0.0.1", port=0)
        # the water meter's time runs 60 times faster: its volume visibly grows
        water = WaterMeter(*MBUS_DEMO_METER, seed=3, speed=60.0)
        mbus = MbusSimulator([water], baudrate=2400)
        from citygate_sim.ble import BleSimulator

        # The wireless water meter only when the wmbus driver is installed; its telegrams
        # come 4 times faster than a real meter's 16 s.
        wmbus = None
        if "wmbus" in registry.factories():
            from citygate_sim.wmbus import WmbusSimulator

            wmbus = WmbusSimulator(fast=4.0, seed=5)
        capture = workdir / "ble-capture.jsonl"
        with capture.open("w") as stream:
            BleSimulator(seed=4).write_capture(stream, 3600.0)
        async with simulator, mbus, contextlib.AsyncExitStack() as stack:
            if wmbus is not None:
                await stack.enter_async_context(wmbus)
            if broker is None:
                port = _free_port()
                await stack.enter_async_context(_embedded_broker(port))
                broker_url, protocol = (
                    f"mqtt://127.0.0.1:{port}",
                    "3.1.1",
                )  # amqtt speaks MQTT 3.1.1
            else:
                broker_url, protocol = broker, "5"
            config_path = workdir / "gateway.toml"
            config_path.write_text(
                demo_config(
                    simulator.port,
                    broker_url,
                    protocol,
                    workdir / "var",
                    mbus_port=mbus.port,
                    ble_capture=capture,
                    homeassistant=homeassistant,
                    wmbus_port=wmbus.port if wmbus is not None else None,
                )
            )
            config = load(config_path, registry.factories())
            header = (
                f"citygate demo — Modbus TCP simulator on 127.0.0.1:{simulator.port}, "
                f"M-Bus water meter on {mbus.port}, BLE sensors replayed, "
                + (f"wireless M-Bus stick on {wmbus.port}, " if wmbus is not None else "")
                + f"broker {broker_url}\n"
                f"config: {config_path}"
                + (
                    "\nHome Assistant discovery on homeassistant/device/#"
                    " (point Home Assistant's MQTT integration at this broker)"
                    if homeassistant
                    else ""
                )
            )
            print(header, flush=True)
            datadir.prepare(config.gateway.data_dir)  # as `citygate run` does before its Agent
            agent = Agent(config, registry.factories())
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            kept = KeptLog() if terminal else None
            with _logs_kept(kept):
                async with asyncio.TaskGroup() as tg:
                    agent_task = tg.create_task(agent.run(), name="agent")
                    if kept is not None:
                        view_task = tg.create_task(_top_view(config, stop, kept), name="live-view")
                    else:
                        view_task = tg.create_task(
                            _watch(broker_url, protocol, LiveView()), name="live-view"
                        )
                    await stop.wait()
                    if kept is not None:
                        await view_task  # leaves the full screen within half a second
                    print("\nstopping the demo…", flush=True)
                    agent.request_stop()
                    await agent_task
                    view_task.cancel()


def run_demo(broker: str | None = None, homeassistant: bool = False) -> int:
    """Run the demo until Ctrl-C (with Home Assistant discovery if ``homeassistant``)."""
    logs.setup("warning")
    asyncio.run(_demo(broker, homeassistant))
    return 0
