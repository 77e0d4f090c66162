"""The push-device schedule of the driver API, alone, with a fake clock (``now`` values)."""

from __future__ import annotations

import pytest

from citygate.drivers.api import Measurement, PushSchedule


def m(name: str, value: float, unit: str | None = None) -> Measurement:
    return Measurement(name, value, unit)


def test_first_values_are_emitted_at_once() -> None:
    schedule = PushSchedule(60.0)
    schedule.listening(100.0)
    assert schedule.take([m("temperature", 21.5, "Cel")], 100.5) == [m("temperature", 21.5, "Cel")]
    assert not schedule.pending
    assert schedule.due(1000.0) is None  # nothing held: nothing to emit, however late


def test_values_within_an_interval_are_held_and_the_latest_emitted_by_the_tick() -> None:
    schedule = PushSchedule(60.0)
    schedule.listening(0.0)
    assert schedule.take([m("temperature", 20.0), m("humidity", 40.0)], 0.0) is not None
    assert schedule.take([m("temperature", 20.5)], 10.0) is None
    assert schedule.take([m("temperature", 21.0), m("battery", 90.0)], 30.0) is None
    assert schedule.pending
    assert schedule.due(59.9) is None
    # Only the latest value of each name, in the order the names were first heard.
    assert schedule.due(60.0) == [m("temperature", 21.0), m("humidity", 40.0), m("battery", 90.0)]
    assert not schedule.pending
    assert schedule.due(200.0) is None


def test_values_an_interval_after_the_last_emit_are_emitted_at_once() -> None:
    schedule = PushSchedule(60.0)
    assert schedule.take([m("a", 1.0)], 0.0) is not None
    assert schedule.take([m("a", 2.0)], 70.0) == [m("a", 2.0)]
    assert schedule.take([m("a", 3.0)], 100.0) is None  # 30 s after the last emit
    assert schedule.due(129.0) is None
    assert schedule.due(130.0) == [m("a", 3.0)]


def test_nothing_is_emitted_before_anything_was_taken() -> None:
    schedule = PushSchedule(60.0)
    schedule.listening(0.0)
    assert not schedule.pending
    assert schedule.due(0.0) is None
    assert schedule.due(500.0) is None


def test_silence_counts_from_listening_then_from_the_last_values() -> None:
    schedule = PushSchedule(10.0)
    assert schedule.silence_limit == 30.0
    schedule.listening(100.0)
    assert schedule.silent_for(125.0) == 25.0
    schedule.take([m("a", 1.0)], 120.0)
    assert schedule.silent_for(145.0) == 25.0
    # Listening again (a restart of the driver) counts from then, not from older values.
    schedule.listening(200.0)
    assert schedule.silent_for(210.0) == 10.0


def test_tick_is_a_quarter_interval_at_most_a_second() -> None:
    assert PushSchedule(2.0).tick == 0.5
    assert PushSchedule(900.0).tick == 1.0
    assert PushSchedule(60.0, silent_after=5).silence_limit == 300.0


def test_names_are_bounded_and_the_extra_ones_counted() -> None:
    schedule = PushSchedule(60.0, max_names=3)
    babble = [m(f"q{i}", float(i)) for i in range(10_000)]
    emitted = schedule.take(babble, 0.0)
    assert emitted == babble[:3]
    assert schedule.dropped == 10_000 - 3
    # The names kept still update; new names still drop.
    schedule.take([m("q1", -1.0), m("new", 0.0)], 1.0)
    assert schedule.due(60.0) == [m("q0", 0.0), m("q1", -1.0), m("q2", 2.0)]
    assert schedule.dropped == 10_000 - 3 + 1


def test_default_bound() -> None:
    schedule = PushSchedule(60.0)
    emitted = schedule.take((m(f"q{i}", 0.0) for i in range(1000)), 0.0)
    assert emitted is not None
    assert len(emitted) == 256
    assert schedule.dropped == 1000 - 256


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_names"):
        PushSchedule(60.0, max_names=0)
