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

Some meters refuse (exception 02) a read that bridges unused addresses:
:func:`split_at_gaps` cuts a request into its gap-free runs, and
:meth:`ReadPlan.split_request` puts them in the plan in its place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from citygate.drivers.api import Measurement
from citygate.drivers.modbus.decode import BIT_TABLES, TABLES, BlockDecoder, RegisterSpec, Table

__all__ = [
    "MAX_BITS",
    "MAX_REGISTERS",
    "RTU_REQUEST_COST",
    "ReadPlan",
    "ReadRequest",
    "limits",
    "plan_requests",
    "split_at_gaps",
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
    registers: Sequence[RegisterSpec],
    *,
    max_gap: int,
    max_registers: int,
    request_cost: int | None = None,
) -> tuple[ReadRequest, ...]:
    """Coalesce ``registers`` into read requests, tables in the order of
    :data:`~citygate.drivers.modbus.decode.TABLES`, requests in address order.

    Without ``request_cost`` the sweep is greedy: every gap up to ``max_gap`` is
    bridged. With it (the cost of one more request, in registers' worth of wire
    time: :data:`RTU_REQUEST_COST` on a serial line) the requests minimise the
    total wire time — a gap is bridged only when reading it costs less than a
    new request — within the same limits.

    Raises ValueError for a register wider than the table's span limit.
    """
    if max_gap < 0 or max_registers < 1:
        raise ValueError("max_gap must be >= 0 and max_registers >= 1")
    if request_cost is not None and request_cost < 0:
        raise ValueError("request_cost must be >= 0")
    requests: list[ReadRequest] = []
    for table in TABLES:
        members = sorted(
            (spec for spec in registers if spec.table == table),
            key=lambda spec: (spec.address, spec.end),
        )
        if not members:
            continue
        gap_limit, span_limit = limits(table, max_gap, max_registers)
        if request_cost is not None:
            for spec in members:
                _check_width(spec, span_limit)
            unit = BITS_PER_REGISTER if table in BIT_TABLES else 1
            requests.extend(_cheapest(table, members, gap_limit, span_limit, request_cost * unit))
            continue
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


def _check_width(spec: RegisterSpec, span_limit: int) -> None:
    if spec.width > span_limit:
        raise ValueError(
            f"register {spec.name!r} spans {spec.width} registers,"
            f" more than one read may ask for ({span_limit})"
        )


def _blocks(members: Sequence[RegisterSpec]) -> list[tuple[int, int, list[RegisterSpec]]]:
    """Overlapping registers merged: ``(start, end, registers)`` in address order."""
    blocks: list[tuple[int, int, list[RegisterSpec]]] = []
    for spec in members:
        if blocks and spec.address < blocks[-1][1]:
            start, end, specs = blocks[-1]
            blocks[-1] = (start, max(end, spec.end), [*specs, spec])
        else:
            blocks.append((spec.address, spec.end, [spec]))
    return blocks


def _cheapest(
    table: Table,
    members: Sequence[RegisterSpec],
    gap_limit: int,
    span_limit: int,
    request_cost: int,
) -> list[ReadRequest]:
    """The requests of least total cost (``request_cost`` each, plus every address
    read), by dynamic programming over the blocks in address order."""
    blocks = _blocks(members)
    count = len(blocks)
    best: list[tuple[int, int]] = [(0, 0)] + [(0, 0)] * count  # (cost, requests) of blocks[:i]
    choice = [0] * (count + 1)
    for end_index in range(1, count + 1):
        candidates: list[tuple[int, int, int]] = []
        last_end = blocks[end_index - 1][1]
        for first in range(end_index - 1, -1, -1):
            start = blocks[first][0]
            if last_end - start > span_limit:
                break
            if first < end_index - 1 and blocks[first + 1][0] - blocks[first][1] > gap_limit:
                break
            cost, requests = best[first]
            # ties: fewer requests, then the earlier requests the fuller
            candidates.append((cost + request_cost + last_end - start, requests + 1, -first))
        cost, requests, negative_first = min(candidates)
        first = -negative_first
        best[end_index] = (cost, requests)
        choice[end_index] = first
    requests_out: list[ReadRequest] = []
    end_index = count
    while end_index:
        first = choice[end_index]
        group = blocks[first:end_index]
        start, end = group[0][0], max(block[1] for block in group)
        specs = tuple(spec for block in group for spec in block[2])
        requests_out.append(ReadRequest(table, start, end - start, specs))
        end_index = first
    return requests_out[::-1]


RTU_REQUEST_COST = 10
"""One more Modbus RTU request in registers' worth of wire time: its 8 bytes, the
reply's 5 bytes of framing and two 3.5-character silences (20 characters) cost as
much as reading 10 more registers (2 characters each), at any baud rate."""


def split_at_gaps(request: ReadRequest) -> tuple[ReadRequest, ...]:
    """The gap-free parts of ``request``, in address order: one request per run of
    registers with no unused address inside it (overlapping registers stay together).

    A request without a gap comes back as one request spanning its registers.
    Raises ValueError for a request holding no register.
    """
    # by address only, like BlockDecoder: the parts' measurements keep the order
    members = sorted(request.registers, key=lambda spec: spec.address)
    if not members:
        raise ValueError("a read request holds at least one register")
    parts: list[ReadRequest] = []
    current = [members[0]]
    start, end = members[0].address, members[0].end
    for spec in members[1:]:
        if spec.address <= end:
            current.append(spec)
            end = max(end, spec.end)
            continue
        parts.append(ReadRequest(request.table, start, end - start, tuple(current)))
        current, start, end = [spec], spec.address, spec.end
    parts.append(ReadRequest(request.table, start, end - start, tuple(current)))
    return tuple(parts)


def _decoder(request: ReadRequest) -> BlockDecoder:
    return BlockDecoder(request.table, request.address, request.count, request.registers)


class ReadPlan:
    """The compiled reads of one device: its requests and their decoders.

    The plan may narrow itself at run time (:meth:`split_request`) when the device
    refuses a read across unused addresses; it is shared by every driver created
    from the same config, so what was learned outlives a reconnect.
    """

    __slots__ = ("decoders", "requests", "split_count")

    def __init__(self, requests: Sequence[ReadRequest]) -> None:
        self.requests = tuple(requests)
        self.decoders = tuple(_decoder(request) for request in self.requests)
        self.split_count = 0
        """Requests replaced by their gap-free parts so far."""

    def split_request(self, index: int) -> tuple[ReadRequest, ...]:
        """Replace request ``index`` by its gap-free parts (:func:`split_at_gaps`)
        and return them; a request without a gap stays as it is.

        Replies to :meth:`decode` then follow the new :attr:`requests`; the
        measurements come out as before, in the same order.
        """
        parts = split_at_gaps(self.requests[index])
        if len(parts) > 1:
            self.requests = self.requests[:index] + parts + self.requests[index + 1 :]
            self.decoders = (
                self.decoders[:index]
                + tuple(_decoder(part) for part in parts)
                + self.decoders[index + 1 :]
            )
            self.split_count += 1
        return parts

    @classmethod
    def build(
        cls,
        registers: Sequence[RegisterSpec],
        *,
        max_gap: int,
        max_registers: int,
        request_cost: int | None = None,
    ) -> ReadPlan:
        """Coalesce (see :func:`plan_requests`) and compile ``registers``."""
        return cls(
            plan_requests(
                registers,
                max_gap=max_gap,
                max_registers=max_registers,
                request_cost=request_cost,
            )
        )

    def decode(self, replies: Sequence[Sequence[int] | Sequence[bool]]) -> list[Measurement]:
        """Decode the replies to :attr:`requests`, one per request, in order."""
        if len(replies) != len(self.decoders):
            raise ValueError(f"expected {len(self.decoders)} replies, got {len(replies)}")
        measurements: list[Measurement] = []
        for decoder, reply in zip(self.decoders, replies, strict=True):
            measurements.extend(decoder.decode(reply))
        return measurements
