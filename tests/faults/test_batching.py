"""How the publisher cuts a backlog page into data messages (mqtt.md: one device per message,
oldest first, at most max_batch readings; a sample larger than that travels alone)."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from citygate.buffer import StoredSample
from citygate.mqtt.data import group_messages


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
