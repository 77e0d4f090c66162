"""The wmbus driver through real parts: replayed captures of real telegrams, a stick on a pty."""

from __future__ import annotations

import asyncio
import json
import os
import tty
from collections.abc import Sequence
from pathlib import Path

import pytest

from citygate.drivers.api import DeviceContext, Measurement, WmbusSettings
from citygate.drivers.wmbus import im871a
from citygate.drivers.wmbus.config import configure
from citygate.drivers.wmbus.driver import Tally, WmbusDriver, make_receiver
from citygate.drivers.wmbus.receiver import (
    Receiver,
    ReceiverGaveUp,
    ReplaySource,
    StickSource,
)

TELEGRAMS = Path(__file__).parent / "telegrams"
WRONG_KEY = "00112233445566778899AABBCCDDEEFF"


def vector(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((TELEGRAMS / name).read_text())
    return loaded


def capture(path: Path, names: Sequence[str], rssi: int = -70) -> Path:
    with path.open("w") as stream:
        for name in names:
            stream.write(json.dumps({"t": 1000.0, "hex": vector(name)["hex"], "rssi": rssi}) + "\n")
    return path


def driver(meter_id: str, receiver: Receiver, key: str | None = None, interval: float = 900.0,
           records: list[str] | None = None) -> WmbusDriver:  # fmt: skip
    context = DeviceContext(device_id=f"m{meter_id}", interval=interval, config_dir=Path("."))
    options: dict[str, object] = {"receiver": receiver.name, "meter_id": meter_id, "key": key}
    if records is not None:
        options["records"] = records
    return WmbusDriver(configure(options, context), context, receiver=receiver, tally=Tally())


async def listen(
    receiver: Receiver, drivers: Sequence[WmbusDriver]
) -> dict[str, list[list[Measurement]]]:
    """Run the drivers while the receiver plays its source to the end; what each emitted."""
    emitted: dict[str, list[list[Measurement]]] = {d.device_id: [] for d in drivers}
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(d.run(lambda batch, i=d.device_id: emitted[i].append(list(batch))))
            for d in drivers
        ]
        await asyncio.sleep(0)  # every driver subscribes before the first telegram
        async with asyncio.timeout(10):
            await receiver.run()
        for task in tasks:
            task.cancel()
    return emitted


async def test_replayed_real_telegrams_reach_their_meters(tmp_path: Path) -> None:
    names = ["kdn-kadenwater-1.json", "apa-elf-1.json", "kdn-kadenwater-2.json", "sen-iperl-1.json"]
    path = capture(tmp_path / "air.jsonl", [*names, "kdn-kadenwater-1.json"])
    path.write_text(path.read_text() + '{"t": "x"}\nnot json\n')
    source = ReplaySource(path)
    receiver = Receiver(lambda: source, name="air")
    kaden = vector("kdn-kadenwater-1.json")
    right = driver("19228217", receiver, key=str(kaden["key"]))
    wrong = driver("19227961", receiver, key=WRONG_KEY)
    plain_refused = driver("01885619", receiver, key=WRONG_KEY)  # a plain meter, a key set
    plain = driver("12345699", receiver, records=["volume"])
    emitted = await listen(receiver, [right, wrong, plain_refused, plain])

    # The encrypted meter: its reference values, at once, then once per interval only.
    assert len(emitted[right.device_id]) == 1
    values = {m.name: m for m in emitted[right.device_id][0]}
    for expected in kaden["expected"]:  # type: ignore[attr-defined]
        assert values[expected["name"]].value == expected["value"]
        assert values[expected["name"]].unit == expected["unit"]
    assert values["rssi"] == Measurement("rssi", -70, "dBm")
    facts = right.status_facts()
    assert facts["meter"] == {
        "id": "19228217",
        "manufacturer": "KDN",
        "version": 1,
        "medium": "water",
    }
    assert facts["wmbus"]["telegrams"] == 2 and facts["wmbus"]["decode_errors"] == 0
    # Wrong key: counted, nothing published.
    assert emitted[wrong.device_id] == []
    assert wrong.status_facts()["wmbus"]["decode_errors"] == 1
    assert "meter" not in wrong.status_facts()
    # A plain telegram for a device with a key: refused.
    assert emitted[plain_refused.device_id] == []
    assert plain_refused.status_facts()["wmbus"]["refused_unencrypted"] == 1
    # records filter: only volume (and meter_status, rssi)
    assert {m.name for m in emitted[plain.device_id][0]} <= {"volume", "meter_status", "rssi"}
    assert "volume" in {m.name for m in emitted[plain.device_id][0]}
    # Nobody listens to the others: counted, not stored; bad lines counted.
    assert receiver.telegrams == 5
    assert receiver.unknown_telegrams == 0
    assert source.bad_lines == 2


async def test_unknown_ids_are_counted_never_stored(tmp_path: Path) -> None:
    names = [p.name for p in sorted(TELEGRAMS.glob("*.json")) if not vector(p.name)["crc_present"]]
    receiver = make_receiver(WmbusSettings(id="air", replay=capture(tmp_path / "a.jsonl", names)))
    listener = driver("19228217", receiver, key=str(vector("kdn-kadenwater-1.json")["key"]))
    await listen(receiver, [listener])
    assert receiver.telegrams == len(names)
    assert receiver.unknown_telegrams == len(names) - 1
    assert receiver.facts()["unknown_telegrams"] == len(names) - 1
    # Only subscribed meters are kept (the latest telegram, for a restarted driver).
    assert receiver.latest("19228217") is not None
    assert receiver.latest("01885619") is None


async def test_silence_is_reported_with_the_last_error(tmp_path: Path) -> None:
    from citygate.drivers.wmbus.driver import DeviceSilent

    path = capture(tmp_path / "a.jsonl", ["kdn-kadenwater-2.json"])
    receiver = Receiver(lambda: ReplaySource(path), name="air")
    wrong = driver("19227961", receiver, key=WRONG_KEY, interval=0.01)

    async def run_both() -> None:
        async with asyncio.timeout(10), asyncio.TaskGroup() as group:
            group.create_task(wrong.run(lambda batch: None))
            await asyncio.sleep(0)
            group.create_task(receiver.run())

    with pytest.raises(ExceptionGroup) as caught:
        await run_both()
    (error,) = caught.value.exceptions
    assert isinstance(error, DeviceSilent)
    assert "no decodable telegram" in str(error)
    assert str(error).endswith("(wrong key or corrupt telegram); wmbus air: the capture ended")


class FakeStick:
    """An iM871A on the master side of a pty: answers configuration and pings, sends telegrams."""

    def __init__(self) -> None:
        self.master, self.slave = (
            os.openpty()
        )  # the slave stays open: no EIO before the agent opens it
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.requests: list[bytes] = []
        self.decoder = bytearray()

    def answer(self, telegrams: Sequence[bytes], hang_up: bool) -> None:
        """Read requests until the link mode is set, then send the telegrams."""
        while True:
            chunk = os.read(self.master, 256)
            self.requests.append(chunk)
            if chunk.startswith(im871a.device_info_request()):
                info = bytes([0x33, 0, 0x15, 2, 1, 2, 3, 4])
                os.write(self.master, im871a.encode(1, 0x10, info, crc=True))
            if im871a.set_config_request("C1") in chunk:
                os.write(self.master, im871a.encode(1, 0x04, b"\x00", crc=True))
                break
        for telegram in telegrams:
            body = bytes([0xC2, 0x03, len(telegram) - 1]) + telegram[1:] + bytes([200])
            os.write(self.master, b"\xa5" + body + im871a.crc16_x25(body).to_bytes(2, "little"))
        # Answer one ping (the receiver asks when the air is quiet), then vanish at the next.
        pings = 0
        while pings < 2:
            chunk = os.read(self.master, 256)
            self.requests.append(chunk)
            if im871a.ping_request() in chunk:
                pings += 1
                if pings == 1:
                    os.write(self.master, im871a.encode(1, 0x02, crc=True))
        if hang_up:
            os.close(self.master)


async def test_a_stick_on_a_pty_is_configured_read_and_given_up_when_it_vanishes() -> None:
    stick = FakeStick()
    kaden = vector("kdn-kadenwater-1.json")
    telegram = bytes.fromhex(str(kaden["hex"]))
    receiver = Receiver(
        lambda: StickSource(stick.path, "im871a", "C1", ping_after=0.05), name="stick",
        restarts=1, backoff_start=0.01,
    )  # fmt: skip
    meter = driver("19228217", receiver, key=str(kaden["key"]))
    emitted: list[list[Measurement]] = []
    answering = asyncio.create_task(asyncio.to_thread(stick.answer, [telegram, telegram], True))

    async def run_both() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(meter.run(emitted.append))
            await asyncio.sleep(0)
            async with asyncio.timeout(20):
                await receiver.run()

    with pytest.raises(ExceptionGroup) as caught:
        await run_both()
    await answering
    assert any(isinstance(e, ReceiverGaveUp) for e in caught.value.exceptions)
    assert "cannot open" in str(receiver.problem) or "lost" in str(receiver.problem)
    assert receiver.gave_up and receiver.failures_total == 2
    assert [m.value for m in emitted[0] if m.name == "volume"] == [81.0976]
    assert [m.value for m in emitted[0] if m.name == "rssi"] == [im871a.rssi_dbm(200)]
    assert meter.status_facts()["wmbus"]["telegrams"] == 2
    os.close(stick.slave)
