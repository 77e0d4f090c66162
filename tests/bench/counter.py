"""A counting MQTT subscriber: every data sample once (de-duplicated on seq), when it arrived.

Runs paho's network loop on its own thread in the bench process. It decodes each data
message (SenML: a record with ``bt`` opens a sample, the records up to the next such
record are its readings) and keeps one :class:`Arrival` per new ``seq``; the agent's
metrics messages are kept too.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True, slots=True)
class Arrival:
    """One sample as the subscriber first received it."""

    seq: int
    topic: str
    bt: float  # the sample's time (wall clock of the agent, which is ours)
    readings: int
    at: float  # wall clock when the message reached the subscriber


@dataclass(frozen=True, slots=True)
class Metrics:
    """One metrics message of the agent."""

    at: float
    values: dict[str, Any]


class ReadingCounter:
    """Subscribes to ``city/#`` (QoS 1) and counts samples and readings."""

    def __init__(self, port: int, topic: str = "city/#") -> None:
        self.port = port
        self.topic = topic
        self._lock = threading.Lock()
        self._seen: set[int] = set()
        self._arrivals: list[Arrival] = []
        self._metrics: list[Metrics] = []
        self.duplicates = 0
        self.messages = 0
        self.bad_messages = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-counter-{time.monotonic_ns()}"
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        # Back on the broker quickly after a restart (paho types these as int; any number works).
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]

    def start(self, timeout: float = 10.0) -> ReadingCounter:
        """Connect and subscribe; returns once the broker confirmed the subscription."""
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(f"counter could not subscribe on port {self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def reset(self) -> None:
        """Forget everything counted (a new agent run with a new buffer restarts seq)."""
        with self._lock:
            self._seen.clear()
            self._arrivals.clear()
            self._metrics.clear()
            self.duplicates = self.messages = self.bad_messages = 0

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
    ) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_disconnect(self, client: mqtt.Client, *args: Any) -> None:
        self.subscribed.clear()

    def _on_subscribe(self, *args: Any) -> None:
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.time()
        topic = msg.topic
        if topic.endswith("/metrics"):
            try:
                values = json.loads(msg.payload)
            except ValueError:
                return
            with self._lock:
                self._metrics.append(Metrics(at, values))
            return
        if not topic.endswith("/data"):
            return
        try:
            samples = _samples(json.loads(msg.payload))
        except (ValueError, TypeError, KeyError):
            with self._lock:
                self.bad_messages += 1
            return
        with self._lock:
            self.messages += 1
            for seq, bt, readings in samples:
                if seq in self._seen:
                    self.duplicates += 1
                    continue
                self._seen.add(seq)
                self._arrivals.append(Arrival(seq, topic, bt, readings, at))

    # ------------------------------------------------------------------ queries

    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)

    def metrics(self) -> list[Metrics]:
        with self._lock:
            return list(self._metrics)

    def first_arrival(self) -> float | None:
        with self._lock:
            return self._arrivals[0].at if self._arrivals else None

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` until true; raise TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:g} s")
            time.sleep(0.01)


def _samples(pack: Any) -> list[tuple[int, float, int]]:
    """(seq, bt, readings) of each sample in a SenML data message."""
    out: list[tuple[int, float, int]] = []
    for record in pack:
        if "bt" in record:
            out.append((int(record["seq"]), float(record["bt"]), 0))
        if not out:
            raise ValueError("a data message must open with a sample's first record")
        seq, bt, n = out[-1]
        out[-1] = (seq, bt, n + 1)
    return out


def readings(arrivals: Iterable[Arrival]) -> int:
    """Total readings of ``arrivals``."""
    return sum(a.readings for a in arrivals)


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def metrics_at(history: list[Metrics], moment: float) -> Metrics | None:
    """The last metrics message received at or before ``moment``."""
    before = [m for m in history if m.at <= moment]
    return before[-1] if before else None


def metrics_delta(history: list[Metrics], start: float, end: float, key: str) -> int | None:
    """How much counter ``key`` of the metrics grew between ``start`` and ``end``."""
    first, last = metrics_at(history, start), metrics_at(history, end)
    if first is None or last is None:
        return None
    return int(last.values[key]) - int(first.values[key])
