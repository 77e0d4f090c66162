"""A data message (mqtt.md, "Data messages") to rows: sans-I/O, strict, never raising but
:class:`Malformed`.

The topic names the gateway and the device (``P/G/D/data``: the broker's ACL lets a gateway
write only under its own id), and the pack must agree: its first record's ``bn`` is ``"G/D/"``
and no later record names another. The first record of each sample carries ``bt`` (a finite
number) and ``seq`` (an integer ≥ 0); every record carries ``n`` and one value, ``v`` (a finite
number), ``vs`` (a string) or ``vb`` (a boolean); ``u``/``bu`` are strings. The encoding is told
by the first byte (a JSON pack opens with ``[`` or white space, a CBOR array with 0x80–0x9F,
which no JSON text can), so MQTT 3.1.1 messages without a content type read the same. The
records are resolved by :func:`citygate.senml.resolve` (base name, time and unit, ``seq``
carried to every record of its sample). Fields this version does not know are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from citygate.senml import resolve
from citygate.sink.cbor_decode import CborDecodeError
from citygate.sink.cbor_decode import decode as cbor_decode

MAX_PAYLOAD = 256 * 1024
"""Bytes: a larger data message is a dead letter (the agent's hold ≤ ``mqtt.max_batch``
readings, tens of KiB; its broker announces the same limit as Maximum Packet Size)."""
MAX_RECORDS = 10_000
MAX_NAME = 200
"""Characters in a gateway id, device id, quantity name or unit."""
MAX_TEXT = 4096
"""Characters in a ``vs`` value."""
MAX_SEQ = 2**63 - 1
MAX_TIME = 253402300800.0
"""Unix seconds of year 10000: later (or before 1970) is no sample's time."""

# RFC 8428 Table 4, the labels mqtt.md uses: CBOR packs use the integers.
_LABELS: dict[int, str] = {-2: "bn", -3: "bt", -4: "bu", 0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb"}
_JSON_FIRST = frozenset(b"[ \t\r\n")


class Row(NamedTuple):
    """One reading as the ``readings`` table holds it."""

    gateway: str
    device: str
    quantity: str
    time: float
    value: float | None
    value_text: str | None
    value_bool: bool | None
    unit: str | None
    seq: int


class Malformed(ValueError):
    """The message is not a data message of the contract; ``kind`` names the fault (one log
    line per kind), the text says where."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Topic:
    """``P/G/D/data`` split."""

    gateway: str
    device: str


def parse_topic(topic: str, prefix: str) -> Topic:
    """The gateway and device a data topic names (under ``prefix``)."""
    head = prefix + "/"
    if not topic.startswith(head) or not topic.endswith("/data"):
        raise Malformed("bad_topic", f"not a data topic under {prefix!r}")
    parts = topic[len(head) : -len("/data")].split("/")
    if len(parts) != 2 or not all(0 < len(p) <= MAX_NAME for p in parts):
        raise Malformed("bad_topic", "expected P/G/D/data")
    return Topic(parts[0], parts[1])


def decode_pack(payload: bytes) -> list[Mapping[str | int, object]]:
    """The pack: a non-empty array of maps (JSON objects or CBOR maps)."""
    if len(payload) > MAX_PAYLOAD:
        raise Malformed("too_large", f"{len(payload)} bytes (limit {MAX_PAYLOAD})")
    if not payload:
        raise Malformed("bad_encoding", "empty payload")
    pack: object
    if payload[0] in _JSON_FIRST:
        try:
            pack = json.loads(payload, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise Malformed("bad_json", f"not JSON: {_short(exc)}") from None
    elif 0x80 <= payload[0] <= 0x9F:
        try:
            pack = cbor_decode(payload)
        except CborDecodeError as exc:
            raise Malformed("bad_cbor", f"not CBOR: {exc}") from None
    else:
        raise Malformed(
            "bad_encoding", f"neither a JSON nor a CBOR array (first byte 0x{payload[0]:02X})"
        )
    if not isinstance(pack, list) or not pack:
        raise Malformed("bad_pack", "not a non-empty array of records")
    if len(pack) > MAX_RECORDS:
        raise Malformed("too_large", f"{len(pack)} records (limit {MAX_RECORDS})")
    if not all(isinstance(r, dict) for r in pack):
        raise Malformed("bad_pack", "a record is not a map")
    return pack


def parse_message(topic: str, payload: bytes, prefix: str) -> list[Row]:
    """The rows of one data message, or :class:`Malformed`."""
    where = parse_topic(topic, prefix)
    pack = decode_pack(payload)
    records = [
        {_LABELS.get(k, k) if isinstance(k, int) else k: v for k, v in r.items()} for r in pack
    ]
    _check(records, where)
    base = f"{where.gateway}/{where.device}/"
    rows: list[Row] = []
    for record in resolve(records):
        quantity = str(record["n"])[len(base) :]
        value = record.get("v")
        text = record.get("vs")
        if isinstance(text, str):
            text = _text(text)
        flag = record.get("vb")
        unit = record.get("u")
        when = float(record["t"])  # type: ignore[arg-type]
        if not 0.0 <= when < MAX_TIME:
            raise Malformed("bad_value", f"time {when!r} is outside 1970 to 9999")
        rows.append(
            Row(
                where.gateway,
                where.device,
                quantity,
                when,
                None if value is None else float(value),  # type: ignore[arg-type]
                text if isinstance(text, str) else None,
                flag if isinstance(flag, bool) else None,
                unit if isinstance(unit, str) else None,
                int(record["seq"]),  # type: ignore[call-overload]
            )
        )
    return rows


def _check(records: Sequence[Mapping[str | int, object]], where: Topic) -> None:
    """The contract's rules on the raw records (before base fields are applied)."""
    base = f"{where.gateway}/{where.device}/"
    first = records[0]
    if "bn" not in first:
        raise Malformed("missing_bn", "the first record has no bn")
    for index, record in enumerate(records):
        at = f"record {index}"
        if "bn" in record and record["bn"] != base:
            raise Malformed("bn_mismatch", f"{at}: bn {_short(record['bn'])} is not {base!r}")
        if ("bt" in record) != ("seq" in record) or (index == 0 and "bt" not in record):
            raise Malformed("missing_seq", f"{at}: a sample's first record needs bt and seq")
        if "bt" in record:
            _number(record["bt"], at, "bt")
            seq = record["seq"]
            if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
                raise Malformed("bad_type", f"{at}: seq {_short(seq)} is not an integer ≥ 0")
        if "t" in record:
            _number(record["t"], at, "t")
        name = record.get("n")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise Malformed("bad_type", f"{at}: n is not a quantity name")
        _storable(name, at, "n")
        for field in ("u", "bu"):
            if field in record:
                unit = record[field]
                if not isinstance(unit, str) or len(unit) > MAX_NAME:
                    raise Malformed("bad_type", f"{at}: {field} is not a unit")
                _storable(unit, at, field)
        values = [f for f in ("v", "vs", "vb") if f in record]
        if len(values) != 1:
            raise Malformed("bad_type", f"{at}: expected one of v, vs, vb, found {len(values)}")
        value = record[values[0]]
        if values[0] == "v":
            _number(value, at, "v")
        elif values[0] == "vs":
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise Malformed("bad_type", f"{at}: vs is not a string of ≤ {MAX_TEXT} characters")
        elif not isinstance(value, bool):
            raise Malformed("bad_type", f"{at}: vb is not a boolean")


def _number(value: object, at: str, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Malformed("bad_type", f"{at}: {field} {_short(value)} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise Malformed("bad_value", f"{at}: {field} is not finite")
    if isinstance(value, int) and abs(value) > 2**63:
        raise Malformed("bad_value", f"{at}: {field} is out of range")


def _storable(text: str, at: str, field: str) -> None:
    """PostgreSQL text holds neither NUL nor a lone surrogate (which JSON's \\u escapes allow)."""
    if "\x00" in text:
        raise Malformed("bad_value", f"{at}: {field} holds a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise Malformed("bad_value", f"{at}: {field} is not valid Unicode") from None


def _text(text: str) -> str:
    """A ``vs`` value PostgreSQL can store: NUL and lone surrogates (JSON's \\u escapes allow
    both) become U+FFFD; the reading is kept."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text


def _no_constant(text: str) -> object:
    raise ValueError(f"{text} is not a JSON number")


def _short(value: object) -> str:
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
