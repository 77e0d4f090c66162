"""The data loop keeps each device's samples in order when the cursor goes back while a
fetched batch is still being handed over (a renewed MQTT session fails the publishes in
flight; agent/mqtt/data.py). The loop runs against a real buffer and a scripted client whose
publishes the test answers one by one: no broker timing involved."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from citygate.buffer import AsyncBuffer, NewSample
from citygate.config import BufferSettings, MqttSettings
from citygate.mqtt.client import MqttError
from citygate.mqtt.data import DataLoop
from citygate.status import Counters
from tests.support.wait import until


class ScriptedClient:
    """Records each publish (its seqs) and waits for the test to answer it."""

    def __init__(self) -> None:
        self.sent: list[list[int]] = []
        self.waiting: list[asyncio.Future[ReasonCode]] = []

    async def publish(self, topic: str, payload: bytes, **_: object) -> ReasonCode:
        self.sent.append([int(record["seq"]) for record in json.loads(payload) if "seq" in record])
        future: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        return await future

    def answer_all(self, error: Exception | None = None) -> None:
        for future in self.waiting:
            if not future.done():
                if error is None:
                    future.set_result(ReasonCode(PacketTypes.PUBACK, "Success"))
                else:
                    future.set_exception(error)
        self.waiting.clear()


async def test_rows_going_again_are_not_overtaken_by_the_rest_of_their_batch(
    tmp_path: Path,
) -> None:
    settings = MqttSettings(
        url="mqtt://127.0.0.1:1", host="127.0.0.1", port=1, max_inflight=1, max_batch=1,
        linger=0.0,
    )  # fmt: skip
    body = '"n":"v","v":1.0'
    async with AsyncBuffer(tmp_path / "buffer.sqlite3", BufferSettings()) as buffer:
        await buffer.append([NewSample("dev-a", 1000.0 + i, True, 1, body) for i in range(4)])
        loop = DataLoop(settings, "gw", "p/gw", buffer, Counters(), ack_timeout=30.0)
        client = ScriptedClient()
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(loop.run(client))  # type: ignore[arg-type]
            loop.resume()
            # one message in flight (window of 1); the rest of the fetched batch waits for it
            await until(lambda: client.sent == [[1]], 5, "the first message sent")
            # the session is renewed: the publish fails, and the loop stays paused until the
            # next connection
            loop.pause()
            client.answer_all(MqttError("the session was renewed"))
            await until(lambda: loop.in_flight == 0, 5, "the failed publish handled")
            loop.resume()
            while sum(map(len, client.sent)) < 5:
                await until(lambda: bool(client.waiting), 5, f"in flight after {client.sent}")
                client.answer_all()
            loop.stop()
            await asyncio.wait_for(run, 5)
        sent = [seq for message in client.sent for seq in message]
        assert sent == [1, 1, 2, 3, 4]  # seq 1 again before 2, never 2 before it
