"""The meters' physics: consistent electrical quantities, counters that only grow.

Time is an injected clock, stepped by the test; nothing sleeps.
"""

from __future__ import annotations

import cmath
import math
import random
import struct
import time

import pytest

from citygate_sim.modbus import ADVANCE_PERIOD, Table, make_meter
from citygate_sim.modbus._physics import Supply


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def local_time(hour: int) -> float:
    """A Unix time at ``hour``:00 local time today."""
    now = time.localtime()
    return time.mktime((now.tm_year, now.tm_mon, now.tm_mday, hour, 0, 0, 0, 0, -1))


def close(a: float, b: float, rel: float = 1e-5, abs_: float = 1e-3) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def check_phase(t: dict[str, float], suffix: str) -> None:
    v, i = t[f"voltage{suffix}"], t[f"current{suffix}"]
    p, s, q = t[f"active_power{suffix}"], t[f"apparent_power{suffix}"], t[f"reactive_power{suffix}"]
    pf = t[f"power_factor{suffix}"]
    assert 207.0 <= v <= 253.0
    assert close(p, v * i * pf, abs_=0.05), (p, v, i, pf)
    assert close(s, v * i, abs_=0.05)
    assert close(abs(q), math.sqrt(max(s * s - p * p, 0.0)), rel=1e-3, abs_=0.5)
    assert abs(p) <= s * (1 + 1e-6)
    if s > 1.0:
        assert 0.85 - 1e-6 <= abs(pf) <= 0.99 + 1e-6
        assert math.copysign(1.0, pf) == math.copysign(1.0, p)
    angle = f"phase_angle{suffix}"
    if angle in t:
        assert close(math.cos(math.radians(t[angle])), pf, abs_=1e-5)


def check_sdm630(t: dict[str, float]) -> None:
    for n in (1, 2, 3):
        check_phase(t, f"_l{n}")
        assert 0.5 <= t[f"voltage_thd_l{n}"] <= 6.0
        assert 2.0 <= t[f"current_thd_l{n}"] <= 30.0
    phases = (1, 2, 3)
    assert close(t["active_power"], sum(t[f"active_power_l{n}"] for n in phases), abs_=0.1)
    assert close(t["apparent_power"], sum(t[f"apparent_power_l{n}"] for n in phases), abs_=0.1)
    assert close(t["reactive_power"], sum(t[f"reactive_power_l{n}"] for n in phases), abs_=0.1)
    assert close(t["power_factor"], t["active_power"] / t["apparent_power"], abs_=1e-5)
    assert close(t["current_sum"], sum(t[f"current_l{n}"] for n in phases), abs_=1e-3)
    assert close(t["voltage_avg"], sum(t[f"voltage_l{n}"] for n in phases) / 3)
    assert 49.95 <= t["frequency"] <= 50.05
    # Phases 120 degrees apart: |Va - Vb|^2 = Va^2 + Vb^2 + Va Vb (law of cosines).
    for a, b in ((1, 2), (2, 3), (3, 1)):
        va, vb = t[f"voltage_l{a}"], t[f"voltage_l{b}"]
        line = t[f"voltage_l{a}_l{b}"]
        assert close(line, math.sqrt(va * va + vb * vb + va * vb))
        assert 0.9 * math.sqrt(3) * 230 <= line <= 1.1 * math.sqrt(3) * 230
    currents = sum(
        cmath.rect(t[f"current_l{n}"], math.radians(theta - t[f"phase_angle_l{n}"]))
        for n, theta in zip(phases, (0.0, -120.0, 120.0), strict=True)
    )
    assert close(t["current_n"], abs(currents), abs_=1e-3)
    assert close(t["energy_import"], sum(t[f"energy_import_l{n}"] for n in phases), abs_=0.01)
    assert close(t["energy_export"], sum(t[f"energy_export_l{n}"] for n in phases), abs_=0.01)
    assert close(t["energy_total"], t["energy_import"] + t["energy_export"], abs_=0.01)
    assert close(
        t["reactive_energy_total"],
        t["reactive_energy_import"] + t["reactive_energy_export"],
        abs_=0.01,
    )
    for n in phases:
        assert close(
            t[f"energy_total_l{n}"], t[f"energy_import_l{n}"] + t[f"energy_export_l{n}"], abs_=0.01
        )
    assert t["demand_power_max"] >= t["demand_power"]
    assert t["demand_time"] <= t["demand_period"] == 60.0


def check_sdm120(t: dict[str, float]) -> None:
    check_phase(t, "")
    assert 49.95 <= t["frequency"] <= 50.05
    assert close(t["energy_total"], t["energy_import"] + t["energy_export"], abs_=0.01)
    assert t["demand_current_max"] >= t["demand_current"]


COUNTERS = ("energy_", "reactive_energy_", "apparent_energy", "charge")


def counters(t: dict[str, float]) -> dict[str, float]:
    return {
        name: value
        for name, value in t.items()
        if name.startswith(COUNTERS) or (name.startswith("demand_") and name.endswith("_max"))
    }


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("model", ["sdm630", "sdm120"])
def test_a_day_of_physics(model: str, seed: int) -> None:
    clock = FakeClock()
    meter = make_meter(model, seed=seed, clock=clock, start_time=local_time(0))
    check = check_sdm630 if model == "sdm630" else check_sdm120
    before = meter.truth()
    check(before)
    for _ in range(3 * 24 * 2):  # two days in 20-minute steps
        clock.now += 1200.0
        after = meter.truth()
        check(after)
        old, new = counters(before), counters(after)
        for name, value in new.items():
            assert value >= old[name], f"{name} went down: {old[name]} -> {value}"
        before = after


def phase_suffixes(model: str) -> list[str]:
    return ["_l1", "_l2", "_l3"] if model == "sdm630" else [""]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("model", ["sdm630", "sdm120"])
def test_energy_is_power_integrated_over_time(model: str, seed: int) -> None:
    clock = FakeClock()
    meter = make_meter(model, seed=seed, clock=clock, start_time=local_time(12))
    for _ in range(6):
        before = meter.truth()
        clock.now += 3600.0
        after = meter.truth()
        for suffix in phase_suffixes(model):
            power_kw = before[f"active_power{suffix}"] / 1000.0
            imported = after[f"energy_import{suffix}"] - before[f"energy_import{suffix}"]
            exported = after[f"energy_export{suffix}"] - before[f"energy_export{suffix}"]
            assert close(imported, max(power_kw, 0.0), abs_=0.01), (suffix, imported, power_kw)
            assert close(exported, max(-power_kw, 0.0), abs_=0.01), (suffix, exported, power_kw)
            kvar = before[f"reactive_power{suffix}"] / 1000.0
            reactive_in = (
                after[f"reactive_energy_import{suffix}"] - before[f"reactive_energy_import{suffix}"]
            )
            assert close(reactive_in, max(kvar, 0.0), abs_=0.01)


def test_state_advances_at_most_every_advance_period() -> None:
    clock = FakeClock()
    meter = make_meter("sdm630", seed=1, clock=clock)
    first = meter.truth()
    clock.now += ADVANCE_PERIOD / 2
    assert meter.truth() == first
    clock.now += ADVANCE_PERIOD
    assert meter.truth() != first


def test_frozen_values_stand_still_and_the_frozen_time_is_skipped() -> None:
    clock = FakeClock()
    meter = make_meter("sdm630", seed=1, clock=clock)
    meter.freeze()
    frozen = meter.truth()
    clock.now += 3600.0
    assert meter.truth() == frozen
    meter.unfreeze()
    clock.now += 2 * ADVANCE_PERIOD
    moved = meter.truth()
    assert moved != frozen
    # an hour at tens of kW would add kWh; 0.1 s adds nothing visible in float32
    assert moved["energy_import"] - frozen["energy_import"] < 0.01


def test_same_seed_same_meter_different_seed_different_meter() -> None:
    start = local_time(9)
    meters = [
        make_meter("sdm630", seed=seed, clock=FakeClock(), start_time=start) for seed in (4, 4, 5)
    ]
    truths = [meter.truth() for meter in meters]
    assert truths[0] == truths[1]
    assert truths[0]["voltage_l1"] != truths[2]["voltage_l1"]
    assert truths[0]["serial_number"] != truths[2]["serial_number"]


def test_speed_multiplies_simulated_time() -> None:
    start = local_time(10)
    fast_clock, slow_clock = FakeClock(), FakeClock()
    fast = make_meter("sdm120", seed=3, clock=fast_clock, speed=60.0, start_time=start)
    slow = make_meter("sdm120", seed=3, clock=slow_clock, start_time=start)
    fast_clock.now += 60.0
    slow_clock.now += 3600.0
    assert fast.truth() == slow.truth()


def test_generic_values_walk() -> None:
    clock = FakeClock()
    meter = make_meter("generic100", seed=1, clock=clock)
    first = meter.truth()
    assert sorted(first) == sorted(f"value_{i}" for i in range(100))
    clock.now += 1.0
    second = meter.truth()
    moved = [abs(second[name] - first[name]) for name in first]
    assert all(0 < step < 10 for step in moved)  # about 1 per square-root second


def test_generic_values_rounded_to_decimals_are_short_float32() -> None:
    """``generic<N>d1``: the registers hold a float32 of a one-decimal value (196.6)."""
    clock = FakeClock()
    meter = make_meter("generic50d1", seed=2, clock=clock)
    assert meter.model == "generic50d1"
    clock.now += 3.0
    values = meter.truth()
    assert len(values) == 50
    for value in values.values():  # what the registers hold, widened to a double
        assert value == struct.unpack(">f", struct.pack(">f", round(value, 1)))[0]
    image = meter.read_registers(Table.INPUT_REGISTERS, 0, 100)
    assert isinstance(image, bytes)
    registers = [struct.unpack(">f", image[4 * i : 4 * i + 4])[0] for i in range(50)]
    assert registers == list(values.values())


def supply_at(curve: str, hour: float, pv_peak_power: float = 0.0) -> float:
    supply = Supply(
        random.Random(1), phases=3, peak_power=30_000.0, curve=curve, pv_peak_power=pv_peak_power
    )
    return sum(phase.active_power for phase in supply.phases(hour * 3600.0))


def test_load_follows_the_time_of_day() -> None:
    assert supply_at("street_lighting", 2) > 10 * supply_at("street_lighting", 12)
    assert supply_at("office", 11) > 2 * supply_at("office", 3)


def test_pv_exports_at_noon_and_not_at_night() -> None:
    assert supply_at("office", 13, pv_peak_power=80_000.0) < 0
    assert supply_at("office", 2, pv_peak_power=80_000.0) > 0


def test_counters_grow_only_in_their_direction() -> None:
    exported_somewhere = False
    for seed in range(40):
        clock = FakeClock()
        meter = make_meter("sdm630", seed=seed, clock=clock, start_time=local_time(0))
        if meter.supply.pv_peak_power == 0:  # type: ignore[attr-defined]
            continue
        before = meter.truth()
        for _ in range(24 * 4):
            clock.now += 900.0
            after = meter.truth()
            for suffix in ("_l1", "_l2", "_l3"):
                power = before[f"active_power{suffix}"]
                exported = after[f"energy_export{suffix}"] > before[f"energy_export{suffix}"]
                imported = after[f"energy_import{suffix}"] > before[f"energy_import{suffix}"]
                assert not exported or power < 0
                assert not imported or power > 0
                assert exported or power > -50.0
                assert imported or power < 50.0
                exported_somewhere |= exported
            before = after
    assert exported_somewhere
