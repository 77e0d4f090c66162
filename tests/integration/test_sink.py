"""``citygate sink`` against a real PostgreSQL (tests/support/postgres.py) and a real Mosquitto:
readings become rows, duplicates are removed and counted, nothing is acknowledged before it is
committed (kill -9 between receive and commit), malformed messages become dead letters, and
sinks in a share group split the messages."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import cbor2
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citygate.model import Reading
from citygate.senml import encode_body, encode_pack, encode_pack_cbor
from tests.support.broker import Mosquitto
from tests.support.postgres import Postgres
from tests.support.processes import ROOT, citygate_command
from tests.support.wait import wait_until

pytestmark = pytest.mark.broker

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
def dsn(postgres: Postgres) -> str:
    return postgres.create_database(f"sink_{next(_names)}")


@dataclass(frozen=True)
class Sample:
    seq: int
    time: float
    body: str
    clock_synced: bool = True


def pack(
    gateway: str, device: str, samples: Sequence[tuple[int, float, list[Reading]]], cbor: bool
) -> bytes:
    """A data message exactly as the agent writes it (citygate.senml)."""
    encoded = [Sample(seq, t, encode_body(readings)) for seq, t, readings in samples]
    encode = encode_pack_cbor if cbor else encode_pack
    return encode(f"{gateway}/{device}/", encoded)


def meter(seq: int) -> list[Reading]:
    return [
        Reading("voltage_l1", "V", 230.0 + seq / 10),
        Reading("voltage_l2", "V", 231.25),
        Reading("current_l1", "A", 4.82),
        Reading("energy_import", "kWh", 18234.71 + seq),
    ]


class Publisher:
    """An MQTT 5 client that publishes QoS 1 and waits for each PUBACK."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(broker: Mosquitto) -> Iterator[Publisher]:
    p = Publisher(broker.port)
    yield p
    p.close()


class SinkProcess:
    """``citygate sink`` as a subprocess; its log is collected."""

    def __init__(self, broker: Mosquitto, dsn: str, *extra: str, client_id: str = "sink-1") -> None:
        self.process = subprocess.Popen(
            citygate_command(
                "sink",
                "--broker",
                broker.url,
                "--database",
                dsn,
                "--client-id",
                client_id,
                "--batch-ms",
                "20",
                "--stats-interval",
                "0.2",
                *extra,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for_log("schema applied")
        self.wait_for_log("subscribed")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 30.0) -> str:
        def seen() -> str | None:
            assert self.process.poll() is None, f"the sink exited:\n{self.log}"
            return next((line for line in reversed(self.lines) if text in line), None)

        return wait_until(seen, timeout, f"log line {text!r}", explain=lambda: self.log)

    def counter(self, name: str) -> int:
        """The last value of ``name`` in the counters line (``12 rows written``); -1 before
        the first such line."""
        for line in reversed(self.lines):
            if "rows written" in line:
                for part in line.split(", "):
                    if name in part:
                        return int(part.split(": ")[-1].split()[0])
        return -1

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(20)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._reader.join(5)


async def rows(dsn: str, query: str = "SELECT * FROM readings") -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()


async def count(dsn: str, table: str = "readings") -> int:
    return int((await rows(dsn, f"SELECT count(*) AS n FROM {table}"))[0]["n"])


async def wait_count(dsn: str, n: int, table: str = "readings", timeout: float = 30.0) -> None:
    """Until ``table`` holds ``n`` rows (more is a failure too)."""
    deadline = time.monotonic() + timeout
    while (have := await count(dsn, table)) < n:
        assert time.monotonic() < deadline, f"{have} rows of {n} in {table} after {timeout} s"
        await asyncio.sleep(0.05)
    assert have == n


async def test_readings_become_rows_json_and_cbor(
    broker: Mosquitto, dsn: str, publisher: Publisher
) -> None:
    sink = SinkProcess(broker, dsn)
    try:
        t0 = 1764079200.512
        mixed = [
            Reading("meter_status", None, "ok"),
            Reading("tamper", None, True),
            Reading("pulses", None, 7),
            Reading("temperature", "Cel", -3.5),
        ]
        publisher.send("city/gw-a/m1/data", pack("gw-a", "m1", [(1, t0, meter(1))], cbor=False))
        publisher.send(
            "city/gw-a/m1/data", pack("gw-a", "m1", [(2, t0 + 10, meter(2))], cbor=False)
        )
        # A sample with a unitless reading never follows one that set a base unit (mqtt.md).
        publisher.send("city/gw-a/m1/data", pack("gw-a", "m1", [(3, t0 + 20, mixed)], cbor=False))
        publisher.send(
            "city/gw-b/m1/data",
            pack("gw-b", "m1", [(1, t0, mixed), (2, t0 + 10.001, meter(2))], cbor=True),
        )
        expected: set[tuple[Any, ...]] = set()
        for gateway, samples in (
            ("gw-a", [(1, t0, meter(1)), (2, t0 + 10, meter(2)), (3, t0 + 20, mixed)]),
            ("gw-b", [(1, t0, mixed), (2, t0 + 10.001, meter(2))]),
        ):
            for seq, t, readings in samples:
                for r in readings:
                    v = r.value
                    expected.add(
                        (
                            gateway,
                            "m1",
                            r.name,
                            round(t, 3),
                            float(v) if type(v) in (int, float) else None,
                            v if isinstance(v, str) else None,
                            v if isinstance(v, bool) else None,
                            r.unit,
                            seq,
                        )
                    )
        await wait_count(dsn, len(expected))
        got = {
            (
                r["gateway"],
                r["device"],
                r["quantity"],
                round(r["time"].timestamp(), 3),
                r["value"],
                r["value_text"],
                r["value_bool"],
                r["unit"],
                r["seq"],
            )
            for r in await rows(dsn)
        }
        assert got == expected
        assert await count(dsn) == len(expected)
    finally:
        assert sink.stop() == 0
    assert "0 dead letters" in sink.lines[-1]


async def test_a_message_delivered_twice_is_stored_once_and_counted(
    broker: Mosquitto, dsn: str, publisher: Publisher
) -> None:
    sink = SinkProcess(broker, dsn)
    try:
        first = pack(
            "gw-a", "m1", [(10, 1764079200.0, meter(10)), (11, 1764079210.0, meter(11))], False
        )
        publisher.send("city/gw-a/m1/data", first)
        await wait_count(dsn, 8)
        # At least once: the same samples again, alone and next to a new one (same G and seq,
        # re-encoded as CBOR by a restarted agent).
        publisher.send("city/gw-a/m1/data", first)
        again = pack(
            "gw-a", "m1", [(11, 1764079210.0, meter(11)), (12, 1764079220.0, meter(12))], True
        )
        publisher.send("city/gw-a/m1/data", again)
        await wait_count(dsn, 12)
        wait_until(lambda: sink.counter("duplicates skipped") == 12, what="12 duplicates counted")
        assert sink.counter("rows written") == 12
        assert await count(dsn) == 12
    finally:
        assert sink.stop() == 0


async def test_nothing_is_acknowledged_before_commit_kill_9_loses_nothing(
    broker: Mosquitto, dsn: str, publisher: Publisher
) -> None:
    """Messages received but not committed when the sink dies come again to the restarted sink
    (same client id: its persistent session), as do those sent while it was down."""

    def send(gateway: str, seqs: range) -> None:
        for seq in seqs:
            payload = pack(gateway, "m1", [(seq, 1764079200.0 + seq, meter(seq))], False)
            publisher.send(f"city/{gateway}/m1/data", payload)

    sink = SinkProcess(broker, dsn)
    blocker = await asyncpg.connect(dsn)
    try:
        send("gw-a", range(1, 11))
        await wait_count(dsn, 40)
        # Writers now wait on the lock: the sink receives, but its commit cannot happen.
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE readings IN EXCLUSIVE MODE")
        send("gw-a", range(11, 31))
        send("gw-b", range(1, 11))
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        deadline = time.monotonic() + 30
        while await blocker.fetchval(waiting) == 0:
            assert time.monotonic() < deadline, f"the sink never tried to write:\n{sink.log}"
            await asyncio.sleep(0.05)
        sink.kill()
        send("gw-b", range(11, 21))  # queued by the broker for the sink's session
        await lock.rollback()
        assert await count(dsn) == 40  # the killed sink's transaction was rolled back

        sink = SinkProcess(broker, dsn)
        await wait_count(dsn, (30 + 20) * 4)
        keys = {(r["gateway"], r["seq"]) for r in await rows(dsn)}
        assert keys == {("gw-a", s) for s in range(1, 31)} | {("gw-b", s) for s in range(1, 21)}
    finally:
        await blocker.close()
        sink.stop()


async def test_malformed_messages_become_dead_letters(
    broker: Mosquitto, dsn: str, publisher: Publisher
) -> None:
    good = {"bn": "gw-a/m1/", "bt": 1764079200.5, "seq": 1, "n": "voltage_l1", "u": "V", "v": 1.5}

    def js(*records: dict[str, Any]) -> bytes:
        return json.dumps(list(records)).encode()

    malformed: list[tuple[str, bytes]] = [
        ("bad_json", b'[{"bn": "gw-a/m1/", '),
        ("bad_json", b"[" * 100_000),  # deeper than any parser's recursion
        ("bad_cbor", b"\x81\xa2\x00"),  # truncated
        ("bad_cbor", b"\x81" * 5_000),  # nested arrays
        ("bad_cbor", b"\x9b" + b"\xff" * 8),  # an array of 2^64 - 1 items announced
        ("bad_encoding", b"hello"),
        ("bad_pack", b"[]"),
        ("bad_pack", b' {"bn": "gw-a/m1/"}'),
        ("bad_pack", b"[1]"),
        ("bad_encoding", b'{"bn": "gw-a/m1/"}'),
        ("missing_bn", js({k: v for k, v in good.items() if k != "bn"})),
        ("missing_seq", js({k: v for k, v in good.items() if k != "seq"})),
        ("bad_type", js({**good, "v": "1.5"})),
        ("bad_type", js({**good, "seq": 1.5})),
        ("bn_mismatch", js({**good, "bn": "gw-other/m1/"})),
        ("bad_value", js({**good, "n": "voltage\x00"})),
        ("bad_value", cbor2.dumps([{-2: "gw-a/m1/", -3: 1.0, "seq": 1, 0: "x", 2: math.inf}])),
        ("too_large", js(good) + b" " * 300_000),
    ]
    sink = SinkProcess(broker, dsn)
    try:
        for _, payload in malformed:
            publisher.send("city/gw-a/m1/data", payload)
        publisher.send("city/gw-a/m1/data", js(good))
        await wait_count(dsn, len(malformed), "dead_letter")
        await wait_count(dsn, 1)
        letters = await rows(dsn, "SELECT * FROM dead_letter ORDER BY id")
        assert [r["error"].split(":")[0] for r in letters] == [kind for kind, _ in malformed]
        for letter, (_, payload) in zip(letters, malformed, strict=True):
            assert letter["topic"] == "city/gw-a/m1/data"
            assert letter["payload_size"] == len(payload)
            assert letter["payload"] == payload[: 64 * 1024]
        kinds = {kind for kind, _ in malformed}
        wait_until(lambda: sink.counter("dead letters") == len(malformed), what="dead letters")
        # One log line per kind, not per message.
        logged = [line for line in sink.lines if "dead letter on" in line]
        assert len(logged) == len(kinds), logged
        assert "Traceback" not in sink.log
    finally:
        assert sink.stop() == 0


async def test_sinks_in_a_share_group_split_the_messages(
    broker: Mosquitto, dsn: str, publisher: Publisher
) -> None:
    sinks = [
        SinkProcess(broker, dsn, "--share", "writers", client_id=f"sink-{name}")
        for name in ("a", "b")
    ]
    try:
        sent = 0
        for seq in range(1, 21):
            for gateway in ("gw-1", "gw-2", "gw-3", "gw-4", "gw-5"):
                payload = pack(gateway, "m1", [(seq, 1764079200.0 + seq, meter(seq))], seq % 2 == 0)
                publisher.send(f"city/{gateway}/m1/data", payload)
                sent += 1
        await wait_count(dsn, sent * 4)
        wait_until(
            lambda: sum(sink.counter("messages in") for sink in sinks) == sent,
            what=f"{sent} messages between the two sinks",
        )
        split = [sink.counter("messages in") for sink in sinks]
        assert all(n > 0 for n in split), split
        assert sum(sink.counter("duplicates skipped") for sink in sinks) == 0
        keys = [(r["gateway"], r["seq"], r["quantity"]) for r in await rows(dsn)]
        assert len(keys) == len(set(keys)) == sent * 4
    finally:
        for sink in sinks:
            assert sink.stop() == 0


async def test_database_down_nothing_acknowledged_then_everything_written(
    broker: Mosquitto, publisher: Publisher
) -> None:
    own = Postgres().start()  # this one is stopped and started again
    try:
        dsn = own.create_database("sink")
        sink = SinkProcess(broker, dsn)
        try:
            for seq in range(1, 6):
                payload = pack("gw-a", "m1", [(seq, 1764079200.0 + seq, meter(seq))], False)
                publisher.send("city/gw-a/m1/data", payload)
            await wait_count(dsn, 20)
            wait_until(lambda: sink.counter("acknowledged") == 5, what="5 acknowledged")
            own.stop(remove=False)
            for seq in range(6, 16):
                payload = pack("gw-a", "m1", [(seq, 1764079200.0 + seq, meter(seq))], False)
                publisher.send("city/gw-a/m1/data", payload)
            sink.wait_for_log("nothing acknowledged; retrying")
            lines = len(sink.lines)
            wait_until(lambda: any("database failures" in x for x in sink.lines[lines:]))
            acked = sink.counter("acknowledged")
            own.start()
            sink.wait_for_log("writing again")
            await wait_count(dsn, 60)
            assert acked == 5  # nothing was acknowledged while the database was down
            wait_until(lambda: sink.counter("acknowledged") == 15, what="15 acknowledged")
        finally:
            assert sink.stop() == 0
    finally:
        own.stop()


async def test_a_broker_overrunning_the_window_meets_backpressure_and_nothing_is_lost(
    tmp_path: Path, dsn: str
) -> None:
    """A broker that ignores the in-flight limit (here: MQTT 3.1.1, unlimited in-flight) while
    the database is slow: the sink stops reading rather than queueing without bound."""
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf="max_inflight_messages 0\n")
    broker.start()
    publisher = Publisher(broker.port)
    sink = SinkProcess(broker, dsn, "--protocol", "3.1.1", "--receive-maximum", "1")
    blocker = await asyncpg.connect(dsn)
    try:
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE readings IN EXCLUSIVE MODE")
        for seq in range(1, 301):
            payload = pack("gw-a", "m1", [(seq, 1764079200.0 + seq, meter(seq))], False)
            publisher.send("city/gw-a/m1/data", payload)
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        deadline = time.monotonic() + 30
        while await blocker.fetchval(waiting) == 0:
            assert time.monotonic() < deadline, f"the sink never tried to write:\n{sink.log}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # (the broker pushes; a sink reading on would take it all)
        await lock.rollback()
        await wait_count(dsn, 300 * 4)
        wait_until(lambda: sink.counter("acknowledged") == 300, what="300 acknowledged")
        assert sink.counter("broker reconnects") == 0
        assert sink.counter("read pauses") > 0
        assert sink.counter("duplicates skipped") == 0
    finally:
        await blocker.close()
        assert sink.stop() == 0
        publisher.close()
        broker.stop()
