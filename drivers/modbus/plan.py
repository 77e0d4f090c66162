"""Coalescing registers into as few read requests as the limits allow.

Per table, registers are sorted by address and swept left to right: a register
joins the current request when the unused addresses between the request's end
and its start are at most ``max_gap`` and the request would then span at most
the table's limit; otherwise it starts a new request. Overlapping registers
(two views of the same words) are allowed.

Limits on bit tables (coils, discrete inputs) count in register equivalents,
16 bits to a register: a request spans at most ``min(2000, 16 × max_registers)``
bits and bridges at most ``16 × max_gap`` unused bits. With the defaults (125,
16) that is the protocol's 2000-bit maximum and 256 bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.api import Measurement
from drivers.modbus.decode import BIT_TABLES, TABLES, BlockDecoder, RegisterSpec, Table

__all__ = [
    "MAX_BITS",
    "MAX_REGISTERS",
    "ReadPlan",
    "ReadRequest",
    "limits",
    "plan_requests",
]

MAX_REGISTERS = 125
"""The protocol's limit on registers per read (FC 03/04)."""
MAX_BITS = 2000
"""The protocol's limit on bits per read (FC 01/02)."""
BITS_PER_REGISTER = 16


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read: ``count`` addresses of ``table`` from ``address``, holding ``registers``."""

    table: Table
    address: int
    count: int
    registers: tuple[RegisterSpec, ...]

    @property
    def end(self) -> int:
        """First address after the request."""
        return self.address + self.count


def limits(table: Table, max_gap: int, max_registers: int) -> tuple[int, int]:
    """``(max_gap, max_span)`` in addresses of ``table`` (see the module docstring)."""
    if table in BIT_TABLES:
        return max_gap * BITS_PER_REGISTER, min(MAX_BITS, max_registers * BITS_PER_REGISTER)
    return max_gap, min(MAX_REGISTERS, max_registers)


def plan_requests(
    registers: Sequence[RegisterSpec], *, max_gap: int, max_registers: int
) -> tuple[ReadRequest, ...]:
    """Coalesce ``registers`` into read requests, tables in the order of
    :data:`~drivers.modbus.decode.TABLES`, requests in address order.

    Raises ValueError for a register wider than the table's span limit.
    """
    if max_gap < 0 or max_registers < 1:
        raise ValueError("max_gap must be >= 0 and max_registers >= 1")
    requests: list[ReadRequest] = []
    for table in TABLES:
        members = sorted(
            (spec for spec in registers if spec.table == table),
            key=lambda spec: (spec.address, spec.end),
        )
        if not members:
            continue
        gap_limit, span_limit = limits(table, max_gap, max_registers)
        current: list[RegisterSpec] = []
        start = end = 0
        for spec in members:
            if spec.width > span_limit:
                raise ValueError(
                    f"register {spec.name!r} spans {spec.width} registers,"
                    f" more than one read may ask for ({span_limit})"
                )
            new_end = max(end, spec.end)
            if current and spec.address - end <= gap_limit and new_end - start <= span_limit:
                current.append(spec)
                end = new_end
                continue
            if current:
                requests.append(ReadRequest(table, start, end - start, tuple(current)))
            current, start, end = [spec], spec.address, spec.end
        requests.append(ReadRequest(table, start, end - start, tuple(current)))
    return tuple(requests)


class ReadPlan:
    """The compiled reads of one device: its requests and their decoders."""

    __slots__ = ("decoders", "requests")

    def __init__(self, requests: Sequence[ReadRequest]) -> None:
        self.requests = tuple(requests)
        self.decoders = tuple(
            BlockDecoder(request.table, request.address, request.count, request.registers)
            for request in self.requests
        )

    @classmethod
    def build(
        cls, registers: Sequence[RegisterSpec], *, max_gap: int, max_registers: int
    ) -> ReadPlan:
        """Coalesce and compile ``registers``."""
        return cls(plan_requests(registers, max_gap=max_gap, max_registers=max_registers))

    def decode(self, replies: Sequence[Sequence[int] | Sequence[bool]]) -> list[Measurement]:
        """Decode the replies to :attr:`requests`, one per request, in order."""
        if len(replies) != len(self.decoders):
            raise ValueError(f"expected {len(self.decoders)} replies, got {len(replies)}")
        measurements: list[Measurement] = []
        for decoder, reply in zip(self.decoders, replies, strict=True):
            measurements.extend(decoder.decode(reply))
        return measurements
