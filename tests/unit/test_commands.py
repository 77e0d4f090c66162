"""The sans-I/O parts of the command channel (citygate.commands): request validation, the
rate limit, the reply store (dedupe across restarts, pruned and bounded) and replies."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from citygate.commands import (
    DEDUPE_S,
    MAX_PAYLOAD,
    CommandError,
    Malformed,
    RateLimit,
    ReplyStore,
    parse_request,
    readings_result,
    reply_payload,
)
from citygate.drivers.api import Measurement, WriteRefused
from citygate.model import Reading, Sample
from citygate.status import Counters, StatusBoard
from citygate.supervise import DeviceSupervisor, Readout
from tests.support.wait import until


def test_a_valid_request() -> None:
    request = parse_request(
        "write",
        b'{"id": "a1", "device": "m1", "args": {"name": "sp", "value": 2}, "expires": 17e8}',
    )
    assert (request.id, request.name, request.device) == ("a1", "write", "m1")
    assert request.args == {"name": "sp", "value": 2}
    assert request.expires == 1.7e9


@pytest.mark.parametrize(
    ("payload", "message", "request_id"),
    [
        (b"{not json", "not JSON", None),
        (b"\xff\xfe", "not JSON", None),
        (b"[1, 2]", "not a JSON object", None),
        (b'{"device": "m1"}', '"id"', None),
        (b'{"id": 5}', '"id"', None),
        (b'{"id": ""}', '"id"', None),
        (json.dumps({"id": "x" * 129}).encode(), "longer than 128", None),
        (b'{"id": "a", "colour": 1}', 'unknown key "colour"', "a"),
        (b'{"id": "a", "device": 3}', '"device"', "a"),
        (b'{"id": "a", "args": [1]}', '"args"', "a"),
        (b'{"id": "a", "expires": "soon"}', '"expires"', "a"),
        (b'{"id": "a", "expires": true}', '"expires"', "a"),
        (b'{"id": "a", "expires": NaN}', "not JSON", None),
        (b"[" * 100_000 + b"]" * 100_000, "larger than", None),
    ],
)
def test_malformed_requests(payload: bytes, message: str, request_id: str | None) -> None:
    with pytest.raises(Malformed) as caught:
        parse_request("status", payload)
    assert message in caught.value.message
    assert caught.value.code == "bad_request"
    assert caught.value.request_id == request_id


def test_the_size_limit_is_checked_before_parsing() -> None:
    payload = json.dumps({"id": "a", "args": {"pad": "x" * MAX_PAYLOAD}}).encode()
    with pytest.raises(Malformed, match="larger than"):
        parse_request("status", payload)


def test_rate_limit_is_a_sliding_minute() -> None:
    limit = RateLimit(3)
    assert [limit.allow(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert limit.allow(59.9) is False
    assert limit.allow(60.0) is True  # the first one left the window
    assert limit.allow(60.5) is False
    limit.per_minute = 5  # a reload raised it
    assert limit.allow(61.5) is True


def test_reply_store_dedupes_across_reopen_and_forgets_after_a_day(tmp_path: Path) -> None:
    path = tmp_path / "commands.sqlite"
    store = ReplyStore(path)
    store.put("a", b'{"id":"a","ok":true,"result":1}', now=1000.0)
    assert store.get("a", now=1001.0) == b'{"id":"a","ok":true,"result":1}'
    assert store.get("b", now=1001.0) is None
    store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    again = ReplyStore(path)  # a restart
    assert again.get("a", now=1000.0 + DEDUPE_S - 1) is not None
    assert again.get("a", now=1000.0 + DEDUPE_S + 1) is None
    again.prune(now=1000.0 + DEDUPE_S + 1)
    assert again.count() == 0
    again.close()


def test_reply_store_is_bounded(tmp_path: Path) -> None:
    store = ReplyStore(tmp_path / "commands.sqlite", max_rows=50)
    for i in range(500):
        store.put(f"id-{i}", b"{}", now=float(i))
    assert store.count() <= 150  # pruned every 100 puts down to max_rows
    store.prune(now=500.0)
    assert store.count() == 50
    assert store.get("id-499", now=500.0) is not None
    assert store.get("id-0", now=500.0) is None
    store.close()


def test_replies() -> None:
    assert json.loads(reply_payload("a", {"x": 1})) == {"id": "a", "ok": True, "result": {"x": 1}}
    error = CommandError("busy", "later")
    assert json.loads(reply_payload("a", error=error)) == {
        "id": "a",
        "ok": False,
        "error": {"code": "busy", "message": "later"},
    }
    readout = Readout(
        (
            Reading("voltage", "V", 230.5),
            Reading("relay", None, True),
            Reading("serial", None, "AB12"),
            Reading("count", None, 7),
        ),
        1700000000.12345,
    )
    assert readings_result(readout) == {
        "readings": [
            {"n": "voltage", "v": 230.5, "u": "V"},
            {"n": "relay", "vb": True},
            {"n": "serial", "vs": "AB12"},
            {"n": "count", "v": 7},
        ],
        "t": 1700000000.123,
    }


class _WritableDriver:
    """A poll driver with a write (the shape of citygate.drivers.api.WritableDriver)."""

    def __init__(self) -> None:
        self.value = 20.0
        self.polls = 0

    async def __aenter__(self) -> _WritableDriver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def poll(self) -> list[Measurement]:
        self.polls += 1
        return [Measurement("setpoint", self.value, "Cel")]

    async def write(self, name: str, value: float | int | bool) -> float:
        if name != "setpoint":
            raise WriteRefused("forbidden", f"{name} is not writable")
        if not 5 <= float(value) <= 30:
            raise WriteRefused("out_of_range", "outside 5..30")
        self.value = float(value)
        return self.value


async def test_supervisor_runs_reads_and_writes_in_the_device_turn() -> None:
    driver = _WritableDriver()
    samples: list[Sample] = []

    async def submit(sample: Sample) -> None:
        samples.append(sample)

    board = StatusBoard(["boiler"])
    supervisor = DeviceSupervisor(
        "boiler", 3600.0, lambda: driver, submit, board, Counters(), lambda: True
    )
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(supervisor.run())
        await until(lambda: driver.polls == 1, 5, "the first scheduled poll")
        async with asyncio.timeout(5):
            assert await supervisor.request_write("setpoint", 21.5) == 21.5
            with pytest.raises(WriteRefused) as refused:
                await supervisor.request_write("setpoint", 99)
            assert refused.value.code == "out_of_range"
            readout = await supervisor.request_read()
        assert [(r.name, r.value) for r in readout.readings] == [("setpoint", 21.5)]
        assert driver.polls == 2  # the read polled now; the hourly grid is untouched
        assert samples[-1].readings == readout.readings  # and went the normal way
        task.cancel()
