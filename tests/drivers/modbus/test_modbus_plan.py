"""Coalescing registers into read requests."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.decode import REGISTER_WIDTH, RegisterSpec
from drivers.modbus.plan import ReadPlan, ReadRequest, limits, plan_requests


def floats(*addresses: int, table: str = "input") -> list[RegisterSpec]:
    return [RegisterSpec(f"r{a}", a, table, "float32") for a in addresses]  # type: ignore[arg-type]


def spans(requests: tuple[ReadRequest, ...]) -> list[tuple[str, int, int]]:
    return [(r.table, r.address, r.count) for r in requests]


def test_neighbours_within_max_gap_share_a_request() -> None:
    registers = floats(0, 2, 10, 40)
    assert spans(plan_requests(registers, max_gap=8, max_registers=125)) == [
        ("input", 0, 12),
        ("input", 40, 2),
    ]
    assert spans(plan_requests(registers, max_gap=0, max_registers=125)) == [
        ("input", 0, 4),
        ("input", 10, 2),
        ("input", 40, 2),
    ]


def test_span_limit_splits_requests() -> None:
    registers = floats(*range(0, 20, 2))
    assert spans(plan_requests(registers, max_gap=16, max_registers=8)) == [
        ("input", 0, 8),
        ("input", 8, 8),
        ("input", 16, 4),
    ]


def test_tables_never_mix_and_come_in_a_fixed_order() -> None:
    registers = [
        RegisterSpec("h", 0, "holding", "uint16"),
        RegisterSpec("i", 1, "input", "uint16"),
        RegisterSpec("c", 0, "coil", "bool"),
        RegisterSpec("d", 0, "discrete", "bool"),
    ]
    tables = [r.table for r in plan_requests(registers, max_gap=16, max_registers=125)]
    assert tables == ["input", "holding", "coil", "discrete"]


def test_overlapping_registers_are_read_once() -> None:
    registers = [
        RegisterSpec("whole", 10, "holding", "uint64"),
        RegisterSpec("low", 12, "holding", "uint32"),
        RegisterSpec("last", 13, "holding", "int16"),
    ]
    (request,) = plan_requests(registers, max_gap=0, max_registers=125)
    assert (request.address, request.count, len(request.registers)) == (10, 4, 3)


def test_bit_tables_count_in_register_equivalents() -> None:
    assert limits("coil", 16, 125) == (256, 2000)
    assert limits("discrete", 1, 10) == (16, 160)
    assert limits("holding", 16, 200) == (16, 125)
    bits = [RegisterSpec(f"b{a}", a, "coil", "bool") for a in (0, 100, 1999, 2000, 2300)]
    assert spans(plan_requests(bits, max_gap=16, max_registers=125)) == [
        ("coil", 0, 101),
        ("coil", 1999, 2),
        ("coil", 2300, 1),
    ]


def test_a_register_wider_than_the_limit_is_an_error() -> None:
    with pytest.raises(ValueError, match="spans 4 registers"):
        plan_requests([RegisterSpec("x", 0, "input", "float64")], max_gap=0, max_registers=2)


def test_read_plan_decodes_replies_in_request_order() -> None:
    plan = ReadPlan.build(
        [RegisterSpec("a", 0, "input", "uint16"), RegisterSpec("b", 100, "input", "uint16")],
        max_gap=0,
        max_registers=125,
    )
    assert [m.value for m in plan.decode([[7], [9]])] == [7, 9]
    with pytest.raises(ValueError, match="expected 2 replies"):
        plan.decode([[7]])


# ------------------------------------------------------------------ properties

specs_strategy = st.lists(
    st.builds(
        lambda table, data_type, address, index: RegisterSpec(
            f"r{index}", address, table, "bool" if table in ("coil", "discrete") else data_type
        ),
        st.sampled_from(["input", "holding", "coil", "discrete"]),
        st.sampled_from(list(REGISTER_WIDTH)),
        st.integers(min_value=0, max_value=3000),
        st.integers(),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(
    registers=specs_strategy,
    max_gap=st.integers(min_value=0, max_value=40),
    max_registers=st.integers(min_value=4, max_value=125),
)
def test_plan_properties(registers: list[RegisterSpec], max_gap: int, max_registers: int) -> None:
    requests = plan_requests(registers, max_gap=max_gap, max_registers=max_registers)
    # every register is in exactly one request, of its table, inside its span
    placed = [spec for request in requests for spec in request.registers]
    assert sorted(map(id, placed)) == sorted(map(id, registers))
    for request in requests:
        gap_limit, span_limit = limits(request.table, max_gap, max_registers)
        assert 1 <= request.count <= span_limit
        assert all(spec.table == request.table for spec in request.registers)
        assert all(request.address <= s.address and s.end <= request.end for s in request.registers)
        # the request starts and ends on registers, and bridges no gap > max_gap
        covered = sorted((s.address, s.end) for s in request.registers)
        assert covered[0][0] == request.address
        assert max(end for _, end in covered) == request.end
        reach = covered[0][1]
        for start, end in covered[1:]:
            assert start - reach <= gap_limit
            reach = max(reach, end)
    # greedy left to right: the next request's first register could not have joined
    for current, following in itertools.pairwise(requests):
        if following.table != current.table:
            continue
        gap_limit, span_limit = limits(current.table, max_gap, max_registers)
        first = min(following.registers, key=lambda s: (s.address, s.end))
        assert (
            first.address - current.end > gap_limit
            or max(current.end, first.end) - current.address > span_limit
        )
