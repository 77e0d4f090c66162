"""Coalescing for a serial line: the least wire time (plan_requests with request_cost)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.modbus.decode import RegisterSpec
from citygate.drivers.modbus.plan import RTU_REQUEST_COST, ReadRequest, plan_requests


def cost(requests: tuple[ReadRequest, ...], request_cost: int) -> int:
    return sum(request_cost + r.count for r in requests)


def floats(*addresses: int) -> list[RegisterSpec]:
    return [RegisterSpec(f"r{a}", a, "input", "float32") for a in addresses]


def test_a_gap_is_read_only_when_cheaper_than_a_request() -> None:
    registers = floats(0, 4, 18)  # gaps of 2 and 12 unused registers
    plan = plan_requests(registers, max_gap=16, max_registers=125, request_cost=10)
    assert [(r.address, r.count) for r in plan] == [(0, 6), (18, 2)]
    greedy = plan_requests(registers, max_gap=16, max_registers=125)
    assert [(r.address, r.count) for r in greedy] == [(0, 20)]
    assert cost(plan, 10) < cost(greedy, 10)


def test_limits_still_hold() -> None:
    registers = floats(*range(0, 200, 2))
    plan = plan_requests(registers, max_gap=0, max_registers=80, request_cost=RTU_REQUEST_COST)
    assert [(r.address, r.count) for r in plan] == [(0, 80), (80, 80), (160, 40)]


addresses = st.lists(st.integers(0, 400), min_size=1, max_size=40, unique=True)


@given(addresses, st.integers(0, 30), st.integers(4, 125), st.integers(0, 40))
def test_the_cheapest_plan_covers_every_register_within_limits(
    starts: list[int], max_gap: int, max_registers: int, request_cost: int
) -> None:
    registers = floats(*starts)  # float32: 2 registers each, may overlap
    plan = plan_requests(
        registers, max_gap=max_gap, max_registers=max_registers, request_cost=request_cost
    )
    greedy = plan_requests(registers, max_gap=max_gap, max_registers=max_registers)
    assert sorted(s.name for r in plan for s in r.registers) == sorted(s.name for s in registers)
    for request in plan:
        assert request.count <= max_registers
        for spec in request.registers:
            assert request.address <= spec.address and spec.end <= request.end
        used = sorted({a for s in request.registers for a in range(s.address, s.end)})
        gaps = [b - a - 1 for a, b in itertools.pairwise(used)]
        assert max(gaps, default=0) <= max_gap
    assert cost(plan, request_cost) <= cost(greedy, request_cost)
