"""SenML (RFC 8428) as mqtt.md writes it: JSON, and CBOR (§6).

A sample is stored in the buffer already encoded as its *body*: its records
joined, without the opening brace of the first record and the closing brace of
the last. A JSON data message is then put together from bodies without re-encoding a
single reading::

    [{"bn":"G/D/","bt":T1,"seq":S1,<body 1>},{"bt":T2,"seq":S2,<body 2>}]

Base unit. When every reading of a sample has a unit, the first record of each run of two or
more readings in one unit states it as ``bu`` and the records in that unit leave ``u`` out
until another ``bu`` (RFC 8428 base-field rules; a record with its own ``u`` keeps it). A
meter lists its registers grouped (three voltages, three currents, ...), so this removes most
units. A record without a unit would inherit a ``bu`` in force, so a sample with a unitless
reading never sets one, and a data message never puts such a sample after one that did
(:func:`sets_base_unit`; agent/mqtt/data.py starts a new message).

CBOR (:func:`encode_pack_cbor`): the same records with the integer labels of RFC 8428 Table 4
(``bn`` -2, ``bt`` -3, ``bu`` -4, ``n`` 0, ``u`` 1, ``v`` 2, ``vs`` 3, ``vb`` 4); the extension
fields keep their text labels (``"seq"``, ``"clock"``). Numbers as :mod:`citygate.cbor` writes
them: each gives back the double the JSON text gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from citygate import cbor
from citygate.model import Reading

_CACHE_LIMIT = 4096  # names and units come from configs and profiles; a bound all the same
_prefix_cache: dict[tuple[str, str | None], str] = {}
_float_heads: dict[str, str] = {}


def _prefix(name: str, unit: str | None) -> str:
    key = (name, unit)
    prefix = _prefix_cache.get(key)
    if prefix is None:
        prefix = '"n":' + json.dumps(name)
        if unit is not None:
            prefix += ',"u":' + json.dumps(unit)
        if len(_prefix_cache) >= _CACHE_LIMIT:
            _prefix_cache.clear()
        _prefix_cache[key] = prefix
    return prefix


def _float_head(name: str) -> str:
    """``"n":NAME,"v":`` for a float in the base unit (or with no unit), cached."""
    head = _float_heads.get(name)
    if head is None:
        head = _prefix(name, None) + ',"v":'
        if len(_float_heads) >= _CACHE_LIMIT:
            _float_heads.clear()
        _float_heads[name] = head
    return head


_BASE_UNIT_HEAD = '"bu":'
_base_unit_heads: dict[str, str] = {}


def sets_base_unit(body: str) -> bool:
    """The stored sample ``body`` states a ``bu`` somewhere (see the module docstring).

    ``"bu":`` cannot occur inside a JSON string (its quotes would be escaped)."""
    return _BASE_UNIT_HEAD in body


def _value_field(value: object) -> str:
    kind = type(value)
    if kind is float:
        return ',"v":' + repr(value)
    if kind is bool:
        return ',"vb":true' if value else ',"vb":false'
    if kind is int:
        return ',"v":' + str(value)
    return ',"vs":' + json.dumps(str(value))


def _base_unit_head(unit: str) -> str:
    head = _base_unit_heads.get(unit)
    if head is None:
        head = _BASE_UNIT_HEAD + json.dumps(unit) + ","
        if len(_base_unit_heads) >= _CACHE_LIMIT:
            _base_unit_heads.clear()
        _base_unit_heads[unit] = head
    return head


def encode_body(readings: Sequence[Reading]) -> str:
    """The records of one sample, as stored in the buffer (see module doc)."""
    units = [r.unit for r in readings]
    if None in units:  # a unitless record would inherit a bu: units stay on every record
        return "},{".join([_prefix(r.name, r.unit) + _value_field(r.value) for r in readings])
    parts: list[str] = []
    append = parts.append
    float_heads = _float_heads
    base_unit: str | None = None
    count = len(readings)
    # Per reading, the usual case (a float in the unit in force) is one cached head and a repr.
    for i, r in enumerate(readings):
        unit = units[i]
        if unit != base_unit:
            run = i + 1
            while run < count and units[run] == unit:
                run += 1
            if run - i < 2:  # a lone record keeps its "u"
                append(_prefix(r.name, unit) + _value_field(r.value))
                continue
            # two records without "u" pay for one "bu"
            assert unit is not None
            base_unit = unit
            append(_base_unit_head(unit) + _prefix(r.name, None) + _value_field(r.value))
            continue
        value = r.value
        if type(value) is float:
            head = float_heads.get(r.name)
            append((head or _float_head(r.name)) + repr(value))
        else:
            append(_prefix(r.name, None) + _value_field(value))
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


_CBOR_LABELS: dict[str, int] = {
    "bn": -2,
    "bt": -3,
    "bu": -4,
    "n": 0,
    "u": 1,
    "v": 2,
    "vs": 3,
    "vb": 4,
}


def encode_pack_cbor(base_name: str, samples: Iterable[EncodedSample]) -> bytes:
    """One data message as SenML CBOR: the records :func:`encode_pack` writes, the same
    values, integer labels (see the module docstring)."""
    records: list[dict[int | str, object]] = []
    for s in samples:
        head: dict[int | str, object] = {} if records else {-2: base_name}
        head[-3] = round(s.time, 3)
        head["seq"] = s.seq
        if not s.clock_synced:
            head["clock"] = "unsynced"
        for index, record in enumerate(json.loads("[{" + s.body + "}]")):
            fields = {_CBOR_LABELS.get(label, label): value for label, value in record.items()}
            records.append({**head, **fields} if index == 0 else fields)
    return cbor.encode(records)


def resolve(pack: Sequence[Mapping[str | int, object]]) -> list[dict[str, object]]:
    """The records of a SenML pack (JSON or CBOR labels) with their base fields applied:
    ``n`` = base name + name, ``t`` = base time (+ time), ``u`` from ``bu`` where a record has
    none; ``seq`` and ``clock`` carried to every record of their sample. For consumers of
    the data messages (the demo's live view, tests)."""
    labels = {value: key for key, value in _CBOR_LABELS.items()}
    resolved: list[dict[str, object]] = []
    base_name, base_time, base_unit = "", 0.0, None
    sample: dict[str, object] = {}
    for raw in pack:
        record = {str(labels.get(k, k)) if isinstance(k, int) else k: v for k, v in raw.items()}
        base_name = str(record.pop("bn", base_name))
        if "bt" in record:
            base_time = float(record.pop("bt"))  # type: ignore[arg-type]
            sample = {}
        base_unit = record.pop("bu", base_unit)
        for extension in ("seq", "clock"):
            if extension in record:
                sample[extension] = record[extension]
        out: dict[str, object] = {**sample, **record}
        out["n"] = base_name + str(record.get("n", ""))
        out["t"] = base_time + float(record.get("t", 0.0))  # type: ignore[arg-type]
        if "u" not in record and base_unit is not None:
            out["u"] = base_unit
        resolved.append(out)
    return resolved
