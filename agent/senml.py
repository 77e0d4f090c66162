"""SenML JSON (RFC 8428) as mqtt.md writes it.

A sample is stored in the buffer already encoded as its *body*: its records
joined, without the opening brace of the first record and the closing brace of
the last. A data message is then put together from bodies without re-encoding a
single reading::

    [{"bn":"G/D/","bt":T1,"seq":S1,<body 1>},{"bt":T2,"seq":S2,<body 2>}]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Protocol

from citygate.model import Reading

_prefix_cache: dict[tuple[str, str | None], str] = {}


def _prefix(name: str, unit: str | None) -> str:
    key = (name, unit)
    prefix = _prefix_cache.get(key)
    if prefix is None:
        prefix = '"n":' + json.dumps(name)
        if unit is not None:
            prefix += ',"u":' + json.dumps(unit)
        _prefix_cache[key] = prefix
    return prefix


def encode_body(readings: Sequence[Reading]) -> str:
    """The records of one sample, as stored in the buffer (see module doc)."""
    parts: list[str] = []
    for r in readings:
        value = r.value
        kind = type(value)
        if kind is float:
            field = ',"v":' + repr(value)
        elif kind is bool:
            field = ',"vb":true' if value else ',"vb":false'
        elif kind is int:
            field = ',"v":' + str(value)
        else:
            field = ',"vs":' + json.dumps(str(value))
        parts.append(_prefix(r.name, r.unit) + field)
    return "},{".join(parts)


class EncodedSample(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def time(self) -> float: ...
    @property
    def clock_synced(self) -> bool: ...
    @property
    def body(self) -> str: ...


def encode_pack(base_name: str, samples: Iterable[EncodedSample]) -> bytes:
    """One data message: the samples of one device, oldest first."""
    out: list[str] = []
    first = True
    for s in samples:
        head = '{"bn":' + json.dumps(base_name) + "," if first else "{"
        first = False
        clock = "" if s.clock_synced else '"clock":"unsynced",'
        out.append(f'{head}"bt":{s.time:.3f},"seq":{s.seq},{clock}{s.body}}}')
    return ("[" + ",".join(out) + "]").encode()
