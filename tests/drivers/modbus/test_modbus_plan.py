"""Coalescing registers into read requests."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate.drivers.modbus.decode import REGISTER_WIDTH, RegisterSpec
from citygate.drivers.modbus.plan import ReadPlan, ReadRequest, limits, plan_requests, split_at_gaps


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


def test_split_at_gaps_cuts_a_request_into_its_runs() -> None:
    registers = [
        *floats(0, 2, 6),
        RegisterSpec("wide", 10, "input", "float64"),  # 10..13
        RegisterSpec("inside", 12, "input", "uint16"),  # overlaps "wide"
        RegisterSpec("touching", 14, "input", "uint16"),
    ]
    (request,) = plan_requests(registers, max_gap=16, max_registers=125)
    assert spans(split_at_gaps(request)) == [
        ("input", 0, 4),
        ("input", 6, 2),
        ("input", 10, 5),
    ]
    (gap_free,) = plan_requests(floats(0, 2), max_gap=16, max_registers=125)
    assert split_at_gaps(gap_free) == (gap_free,)
    with pytest.raises(ValueError, match="at least one register"):
        split_at_gaps(ReadRequest("input", 0, 2, ()))


def test_bits_split_at_unused_bits() -> None:
    bits = [RegisterSpec(f"b{a}", a, "coil", "bool") for a in (0, 1, 2, 5, 6, 40)]
    (request,) = plan_requests(bits, max_gap=16, max_registers=125)
    assert spans(split_at_gaps(request)) == [("coil", 0, 3), ("coil", 5, 2), ("coil", 40, 1)]


def test_read_plan_splits_a_request_in_place() -> None:
    plan = ReadPlan.build(
        [*floats(0, 4), RegisterSpec("h", 0, "holding", "uint16")], max_gap=16, max_registers=125
    )
    assert spans(plan.requests) == [("input", 0, 6), ("holding", 0, 1)]
    assert spans(plan.split_request(0)) == [("input", 0, 2), ("input", 4, 2)]
    assert spans(plan.requests) == [("input", 0, 2), ("input", 4, 2), ("holding", 0, 1)]
    assert plan.split_count == 1
    assert [m.value for m in plan.decode([[0x3F80, 0], [0x4000, 0], [7]])] == [1.0, 2.0, 7]
    # a request without a gap stays
    assert spans(plan.split_request(2)) == [("holding", 0, 1)]
    assert (len(plan.requests), plan.split_count) == (3, 1)


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


@settings(max_examples=300, deadline=None)
@given(
    registers=specs_strategy,
    max_gap=st.integers(min_value=0, max_value=40),
    max_registers=st.integers(min_value=4, max_value=125),
)
def test_split_properties(registers: list[RegisterSpec], max_gap: int, max_registers: int) -> None:
    for request in plan_requests(registers, max_gap=max_gap, max_registers=max_registers):
        parts = split_at_gaps(request)
        # the parts hold exactly the request's registers, each once
        placed = [spec for part in parts for spec in part.registers]
        assert sorted(map(id, placed)) == sorted(map(id, request.registers))
        # ... and cover exactly the addresses the request's registers cover
        used = {a for spec in request.registers for a in range(spec.address, spec.end)}
        read = [a for part in parts for a in range(part.address, part.end)]
        assert sorted(read) == sorted(used)  # no address read twice, none unused
        _, span_limit = limits(request.table, max_gap, max_registers)
        for part in parts:
            assert part.table == request.table
            assert request.address <= part.address and part.end <= request.end
            assert 1 <= part.count <= span_limit
            assert all(part.address <= s.address and s.end <= part.end for s in part.registers)
        # in address order, each separated from the next by at least one unused address
        for current, following in itertools.pairwise(parts):
            assert current.end < following.address
        if len(parts) == 1:
            assert parts == (request,)


@settings(max_examples=200, deadline=None)
@given(
    registers=specs_strategy.filter(bool),
    max_gap=st.integers(min_value=0, max_value=40),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_split_plan_decodes_like_the_coalesced_one(
    registers: list[RegisterSpec], max_gap: int, seed: int
) -> None:
    rng = random.Random(seed)
    words = {table: [rng.randrange(0x10000) for _ in range(3010)] for table in ("input", "holding")}
    bits = {table: [rng.random() < 0.5 for _ in range(3010)] for table in ("coil", "discrete")}

    def reply(request: ReadRequest) -> list[int] | list[bool]:
        if request.table in bits:
            return bits[request.table][request.address : request.end]
        return words[request.table][request.address : request.end]

    coalesced = ReadPlan.build(registers, max_gap=max_gap, max_registers=125)
    expected = coalesced.decode([reply(r) for r in coalesced.requests])
    split = ReadPlan.build(registers, max_gap=max_gap, max_registers=125)
    for index in reversed(range(len(split.requests))):
        split.split_request(index)
    assert all(len(split_at_gaps(r)) == 1 for r in split.requests)
    got = split.decode([reply(r) for r in split.requests])
    # NaN != NaN: compare the values' representations
    assert [(m.name, repr(m.value), m.unit) for m in got] == [
        (m.name, repr(m.value), m.unit) for m in expected
    ]
