"""Replay protection outlives the driver (issue 12): the last encryption counter accepted is
kept in the runtime's per-device state file (``<data_dir>/state/<device id>``), so a looped
capture of old encrypted adverts stays refused after the driver, the supervisor's restart of
it, or the agent restarts.

Adverts go in at bleak's own backend interface (:mod:`.radio`); the state files are real files
written by the agent's :class:`~citygate.devstate.FileDeviceState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from citygate.app import Agent
from citygate.config import load
from citygate.devstate import FileDeviceState
from citygate.drivers.api import DeviceContext
from citygate.drivers.ble.config import BleDeviceConfig
from citygate.drivers.ble.driver import SAVE_EVERY_S, BleDriver, Tally, factory
from citygate.drivers.ble.scanner import BleakSource, ScannerHub
from citygate.model import Sample
from citygate.status import Counters, StatusBoard
from citygate.supervise import DeviceSupervisor
from citygate_sim.ble import DEMO_BINDKEY
from tests.support.wait import until

from .radio import ManualClock, Radio, settle
from .test_driver import Emitted, make_hub, running
from .test_hostile import KEYED, PLAIN_BTHOME, encrypted_adverts

ADVERTS = encrypted_adverts(6)  # counters 1…6


def keyed_driver(
    hub: ScannerHub, clock: ManualClock, data_dir: Path, key: bytes = DEMO_BINDKEY
) -> BleDriver:
    """A fresh driver as the runtime builds it: a new context and a new state object."""
    context = DeviceContext("env-enc", 10.0, Path("."), state=FileDeviceState(data_dir, "env-enc"))
    return BleDriver(
        BleDeviceConfig(KEYED, "bthome", key), context, hub=hub, clock=clock, sleep=clock.sleep
    )


def saved(data_dir: Path) -> dict[str, object]:
    record: dict[str, object] = json.loads((data_dir / "state" / "env-enc").read_bytes())
    return record


async def test_a_replayed_advert_stays_refused_after_a_driver_restart(tmp_path: Path) -> None:
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    async with running(hub.run()):
        first = keyed_driver(hub, clock, tmp_path)
        emitted = Emitted(clock)
        async with running(first.run(emitted)):
            for advert in ADVERTS[:4]:
                radio.advertise(KEYED, service_data=advert)
                await clock.advance(1)
            assert saved(tmp_path)["counter"] == 1  # saved at once, then at most every 10 s
        assert saved(tmp_path)["counter"] == 4  # and when the driver stops
        path = tmp_path / "state" / "env-enc"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

        second = keyed_driver(hub, clock, tmp_path)
        again = Emitted(clock)
        async with running(second.run(again)):
            for advert in ADVERTS[:4]:  # a looped capture of what the sensor sent before
                radio.advertise(KEYED, service_data=advert)
            assert again.samples == []
            # The four, and the hub's copy of the last advert heard, which a new driver takes.
            assert second.status_facts()["replayed_adverts"] == 5
            radio.advertise(KEYED, service_data=ADVERTS[4])  # the sensor's next one
            assert len(again.samples) == 1


async def test_saves_are_coalesced(tmp_path: Path) -> None:
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    writes: list[bytes] = []
    store = FileDeviceState(tmp_path, "env-enc")

    class Counting:
        def load(self) -> bytes | None:
            return store.load()

        def save(self, data: bytes) -> None:
            writes.append(data)
            store.save(data)

    context = DeviceContext("env-enc", 10.0, Path("."), state=Counting())
    driver = BleDriver(
        BleDeviceConfig(KEYED, "bthome", DEMO_BINDKEY),
        context,
        hub=hub,
        clock=clock,
        sleep=clock.sleep,
    )
    many = encrypted_adverts(45)
    async with running(hub.run()), running(driver.run(Emitted(clock))):
        for advert in many:  # one a second for 45 s: saved at 0, 10, 20, 30 and 40 s
            radio.advertise(KEYED, service_data=advert)
            await clock.advance(1)
        assert len(writes) == 1 + int(45 // SAVE_EVERY_S)
        assert json.loads(writes[-1])["counter"] < 45
    assert len(writes) == 2 + int(45 // SAVE_EVERY_S)
    assert json.loads(writes[-1])["counter"] == 45  # the stop saves the last one


async def test_another_sensor_or_key_under_the_same_id_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    caplog.set_level(logging.INFO)
    async with running(hub.run()):
        async with running(keyed_driver(hub, clock, tmp_path).run(Emitted(clock))):
            radio.advertise(KEYED, service_data=ADVERTS[5])
        assert saved(tmp_path)["counter"] == 6
        assert DEMO_BINDKEY.hex() not in (tmp_path / "state" / "env-enc").read_text()
        # The same id, a new key: the sensor was re-keyed and its counter started again.
        new_key = bytes(16)
        emitted = Emitted(clock)
        async with running(keyed_driver(hub, clock, tmp_path, new_key).run(emitted)):
            await settle()
        assert "saved replay state is for another sensor or key" in caplog.text


async def test_a_corrupt_state_file_is_logged_once_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "env-enc").write_bytes(b"[" * 50_000)  # nested too deep for json
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    emitted = Emitted(clock)
    async with running(hub.run()), running(keyed_driver(hub, clock, tmp_path).run(emitted)):
        radio.advertise(KEYED, service_data=ADVERTS[0])
        assert len(emitted.samples) == 1
    assert caplog.text.count("saved replay state unreadable") == 1
    assert saved(tmp_path)["counter"] == 1


async def test_unusable_state_is_told_once_across_driver_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "env-enc").write_bytes(b"\x00garbage")
    radio, clock = Radio(), ManualClock()
    hub = make_hub(radio, clock)
    async with running(hub.run()):
        for _ in range(3):  # the sensor is silent: nothing new to save between restarts
            async with running(keyed_driver(hub, clock, tmp_path).run(Emitted(clock))):
                await settle()
    assert caplog.text.count("saved replay state unreadable") == 1


# --------------------------------------------------------------------------- under the supervisor


@contextlib.asynccontextmanager
async def supervised(data_dir: Path) -> AsyncIterator[tuple[Radio, ManualClock, StatusBoard]]:
    """The runtime's supervisor, restarting the driver from the factory as the agent does."""
    radio, clock = Radio(), ManualClock()
    hub = ScannerHub(
        lambda: BleakSource("hci0", backend=radio.backend(), wall_clock=clock),
        power_cycle=None,
        clock=clock,
        sleep=clock.sleep,
    )
    context = DeviceContext(
        "env-enc", 10.0, Path("."), hub=hub, state=FileDeviceState(data_dir, "env-enc")
    )
    settings = factory.configure(
        {"address": KEYED, "format": "bthome", "bindkey": DEMO_BINDKEY.hex()}, context
    )
    board = StatusBoard(["env-enc"])
    samples: list[Sample] = []

    async def submit(sample: Sample) -> None:
        samples.append(sample)

    tally = Tally()

    def make() -> BleDriver:  # what factory.create does, with the rig's clock
        return BleDriver(
            settings, context, hub=hub, clock=clock, sleep=clock.sleep, wall_clock=clock,
            tally=tally,
        )  # fmt: skip

    supervisor = DeviceSupervisor(
        "env-enc", 10.0, make, submit, board, Counters(), lambda: True, clock=clock,
        sleep=clock.sleep,
    )  # fmt: skip
    tasks = [asyncio.create_task(hub.run()), asyncio.create_task(supervisor.run())]
    await settle()
    try:
        yield radio, clock, board
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_looped_capture_does_not_bring_an_offline_sensor_back(tmp_path: Path) -> None:
    """The issue's report: old encrypted adverts made a sensor go offline, then online again."""
    async with supervised(tmp_path) as (radio, clock, board):
        status = board.devices["env-enc"]
        for advert in ADVERTS[:3]:
            radio.advertise(KEYED, service_data=advert)
            await clock.advance(1)
        assert status.state == "online"
        for _ in range(40):  # the sensor dies: offline after 3 intervals
            await clock.advance(1)
        assert status.state == "offline"
        for _ in range(60):  # someone loops a capture of its old adverts
            radio.advertise(KEYED, service_data=ADVERTS[_ % 3])
            await clock.advance(1)
        assert status.state == "offline"
        radio.advertise(KEYED, service_data=PLAIN_BTHOME)  # and tries a plain one
        for _ in range(40):  # a silent push device's facts are told when its driver stops
            await clock.advance(1)
        assert status.state == "offline"
        assert status.extra["rejected_adverts"] == 1
        assert status.extra["replayed_adverts"] > 0  # (none counted while no driver listens)
        radio.advertise(KEYED, service_data=ADVERTS[3])  # the sensor is back
        for _ in range(40):
            await clock.advance(1)
            if status.state == "online":
                break
        assert status.state == "online"


def test_the_factory_keeps_one_tally_per_device() -> None:
    """Counts and log episodes outlive each driver the supervisor makes for a device."""
    context = DeviceContext("env-enc", 10.0, Path("."))
    other = DeviceContext("env-other", 10.0, Path("."))
    settings = factory.configure({"address": KEYED, "format": "auto"}, context)
    first, again, elsewhere = (factory.create(settings, c) for c in (context, context, other))
    assert isinstance(first, BleDriver) and isinstance(again, BleDriver)
    assert isinstance(elsewhere, BleDriver)
    assert first.tally is again.tally and first.tally is not elsewhere.tally


# --------------------------------------------------------------------------- the agent


def write_site(tmp_path: Path, capture: list[dict[str, bytes]]) -> Path:
    """gateway.toml with one encrypted sensor fed by a capture (``[ble] replay``); no broker."""
    lines = [json.dumps({"t": 0.0, "address": "00:00:00:00:00:01"})]  # devices subscribe first
    lines += [
        json.dumps({"t": 0.3 + i / 100, "address": KEYED,
                    "service_data": {k: v.hex() for k, v in advert.items()}})
        for i, advert in enumerate(capture)
    ]  # fmt: skip
    (tmp_path / "site.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
id = "gw-test"
data_dir = "var"

[mqtt]
url = "mqtt://127.0.0.1:9"   # nobody listens: samples stay in the buffer

[ble]
replay = "site.jsonl"

[[device]]
id = "env-enc"
driver = "ble"
address = "{KEYED}"
interval = "10s"
bindkey = "{DEMO_BINDKEY.hex()}"
""",
        encoding="utf-8",
    )
    return path


async def run_agent_until_the_capture_ends(path: Path) -> str:
    """Run the agent of ``path`` until its capture has been replayed; the device's state."""
    agent = Agent(load(path, {"ble": factory}), {"ble": factory})
    async with asyncio.TaskGroup() as group:
        task = group.create_task(agent.run())
        try:
            hub = agent.ble_hub
            assert isinstance(hub, ScannerHub)
            await until(lambda: hub.problem == "the capture ended", 10, "the capture replayed")
            await settle()  # the supervisor takes what the driver emitted
            return agent.board.devices["env-enc"].state
        finally:
            agent.request_stop()
            async with asyncio.timeout(20):
                await task


async def test_replayed_adverts_stay_refused_after_an_agent_restart(tmp_path: Path) -> None:
    """The runtime wires the state: <data_dir>/state/<device id> outlives the agent."""
    assert await run_agent_until_the_capture_ends(write_site(tmp_path, ADVERTS[:3])) == "online"
    assert saved(tmp_path / "var")["counter"] == 3
    # Restarted with a capture of the same old adverts: none is taken.
    assert await run_agent_until_the_capture_ends(write_site(tmp_path, ADVERTS[:3])) != "online"
    assert saved(tmp_path / "var")["counter"] == 3
