"""A real Mosquitto for tests: spawned on a free loopback port, stoppable, restartable."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.wait import DEFAULT_TIMEOUT, wait_until


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if found is None:
        raise RuntimeError("mosquitto is not installed: run `sudo apt-get install mosquitto`")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsListener:
    """A second, TLS listener on the same broker (the plain one stays for subscribers).

    With ``require_certificate`` a client must show a certificate signed by ``cafile``;
    its common name becomes its user name.
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def conf(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
        ]
        if self.require_certificate:
            lines += ["require_certificate true", "use_identity_as_username true"]
        return "\n".join(lines) + "\n"


class Mosquitto:
    """One broker process; ``start()`` again after ``stop()`` reuses the port(s).

    ``port``/``url`` are the plain listener's. With ``tls`` the broker also listens
    with TLS (``tls.port``/``tls.url``) and settings are per listener:
    ``anonymous`` and ``extra_conf`` then apply to the plain listener only.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_conf: str = "",
        anonymous: bool = True,
        tls: TlsListener | None = None,
    ) -> None:
        self.workdir = workdir
        self.anonymous = anonymous
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"mqtt://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def log_text(self) -> str:
        """What the broker has logged so far (``log_type all`` when there is a TLS listener)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _write_conf(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            ("per_listener_settings true\nlog_type all\n" if self.tls else "")
            + f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
            "persistence false\n"
            # As root, Mosquitto would switch to its own user and lose access to the test's files.
            "user root\n"
            # Mosquitto's default (1000) silently drops QoS 1 messages to a slow subscriber.
            "max_queued_messages 1000000\n"
            "max_inflight_messages 100\n"
            f"log_dest file {self.log_path}\n"
            + self.extra_conf
            + ("\n" + self.tls.conf() if self.tls else "")
        )
        return conf

    def start(self, timeout: float = 20.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self._write_conf()
        self.process = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class Subscriber:
    """A paho subscriber on its own thread that records every message (QoS 1)."""

    port: int
    topic: str = "#"
    username: str | None = None
    password: str | None = None
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-sub-{time.monotonic_ns()}"
        )
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the SUBACK: messages published from now on reach us

        def on_connect(
            client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
        ) -> None:
            client.subscribe(self.topic, qos=1)
            self.connected.set()

        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain)))

        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)

    def start(self) -> Subscriber:
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(DEFAULT_TIMEOUT):
            raise RuntimeError("subscriber could not connect")
        if not self.subscribed.wait(DEFAULT_TIMEOUT):
            raise RuntimeError(f"the broker did not confirm the subscription to {self.topic!r}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self, suffix: str | None = None) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if suffix is None or m.topic.endswith(suffix)]

    def data_records(self) -> list[dict[str, Any]]:
        """Every SenML record of every data message, resolved (bn/bt/seq carried, ``u`` from
        a base unit ``bu`` in force); ``n`` stays the quantity name."""
        out: list[dict[str, Any]] = []
        for m in self.snapshot("/data"):
            pack = json.loads(m.payload)
            bn = bt = seq = clock = bu = None
            for rec in pack:
                bn = rec.get("bn", bn)
                bu = rec.get("bu", bu)
                if "bt" in rec:
                    bt, seq, clock = rec["bt"], rec["seq"], rec.get("clock")
                unit = {"u": rec.get("u", bu)} if "u" in rec or bu is not None else {}
                out.append(
                    {
                        **rec,
                        **unit,
                        "bn": bn,
                        "bt": bt,
                        "seq": seq,
                        "clock": clock,
                        "topic": m.topic,
                    }
                )
        return out

    def seqs(self) -> list[int]:
        seen: list[int] = []
        for m in self.snapshot("/data"):
            for rec in json.loads(m.payload):
                if "seq" in rec:
                    seen.append(rec["seq"])
        return seen

    def wait_for(self, predicate: Any, timeout: float = DEFAULT_TIMEOUT, what: str = "") -> None:
        """Poll ``predicate`` (usually on what was received) until true; see :func:`wait_until`."""
        wait_until(
            predicate,
            timeout,
            what or "a condition on the messages received",
            explain=lambda: f"{len(self.snapshot())} messages received on {self.topic!r}",
        )


class DataCatcher:
    """An MQTT 5 subscriber to the data topics keeping each message's topic, payload and content
    type (the MQTT 5 property)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, str | None]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe("city/+/+/data", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(20):
            raise RuntimeError("no SUBACK")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        content_type = getattr(msg.properties, "ContentType", None)
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), content_type))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[tuple[str, bytes, str | None]]:
        with self.lock:
            return list(self.messages)

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
