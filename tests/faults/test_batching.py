"""How the publisher batches: it cuts a backlog page into data messages (mqtt.md: one device
per message, oldest first, at most max_batch readings; a sample larger than that travels alone),
and lingers for a fuller batch only while a message awaits its PUBACK."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.buffer import StoredSample
from citygate.mqtt.data import group_messages
from tests.faults.helpers import (
    SessionSubscriber,
    everything_arrived,
    make_agent,
    persistent_broker,
    running,
    synthetic_config,
    until,
)
from tests.support.broker import Mosquitto
from tests.support.proxy import Proxy


@st.composite
def pages(draw: st.DrawFn) -> list[StoredSample]:
    devices = draw(st.lists(st.sampled_from("abcd"), max_size=60))
    readings = draw(st.lists(st.integers(1, 40), min_size=len(devices), max_size=len(devices)))
    return [
        StoredSample(seq, device, float(seq), True, n, "")
        for seq, (device, n) in enumerate(zip(devices, readings, strict=True), start=1)
    ]


@given(pages(), st.integers(1, 100))
def test_messages_are_per_device_in_order_and_within_max_batch(
    page: list[StoredSample], max_batch: int
) -> None:
    messages = group_messages(page, max_batch)
    sent = [s for m in messages for s in m.samples]
    assert sorted(s.seq for s in sent) == [s.seq for s in page]  # each sample exactly once
    for message in messages:
        assert {s.device_id for s in message.samples} == {message.device_id}
        assert message.readings == sum(s.readings for s in message.samples)
        assert message.readings <= max_batch or len(message.samples) == 1
    for device in "abcd":
        in_messages = [s.seq for m in messages if m.device_id == device for s in m.samples]
        assert in_messages == [s.seq for s in page if s.device_id == device]
        # full batches: a message was closed only because the next sample did not fit
        mine = [m for m in messages if m.device_id == device]
        for closed, following in pairwise(mine):
            assert closed.readings + following.samples[0].readings > max_batch


def test_a_sample_larger_than_max_batch_travels_alone() -> None:
    page = [
        StoredSample(1, "a", 1.0, True, 3, ""),
        StoredSample(2, "a", 2.0, True, 50, ""),
        StoredSample(3, "a", 3.0, True, 3, ""),
    ]
    assert [[s.seq for s in m.samples] for m in group_messages(page, 10)] == [[1], [2], [3]]


# --- adaptive batching (issue 13 point 1), against a real Mosquitto ---------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = persistent_broker(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


@pytest.mark.broker
async def test_linger_is_an_upper_bound_that_only_a_busy_window_uses(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """Light load: every sample goes out on its own at once, although linger is 60 s and a
    batch holds 100 samples. PUBACKs held back: samples gather into full batches."""
    sub = SessionSubscriber(broker.port).start()
    with Proxy(broker.port) as proxy:
        config = synthetic_config(
            tmp_path, proxy.port, devices=1, values=5, interval=0.05, linger=60.0, max_batch=500
        )
        agent = make_agent(config)
        try:
            async with running(agent):
                await until(lambda: len(sub.distinct()) >= 10, 20, "samples without lingering")
                alone = [r for r in sub.snapshot() if r.message_readings == 5]
                assert len(alone) >= 5  # one sample per message while nothing is in flight

                proxy.freeze("down")  # the broker's PUBACKs are held: the window stays busy
                await until(lambda: agent.publisher.in_flight >= 1, 20, "a message in flight")
                await until(lambda: agent.publisher.in_flight >= 3, 60, "full batches sent")
                proxy.resume()
                await until(
                    lambda: any(r.message_readings == 500 for r in sub.snapshot()),
                    30,
                    "a full batch delivered",
                )
            await everything_arrived(sub, config.gateway.data_dir)
        finally:
            sub.stop()
