"""SenML packs (issue 13): base units, and CBOR read back by an independent decoder (cbor2)
compared with the JSON pack reading by reading — same names, units, times, seqs and the very
same doubles."""

from __future__ import annotations

import json
import math
import struct
from decimal import Decimal

import cbor2
from hypothesis import example, given
from hypothesis import strategies as st

from citygate.buffer import StoredSample
from citygate.cbor import encode, encode_number
from citygate.drivers.api import shortest_float32
from citygate.model import Reading, Value
from citygate.mqtt.data import group_messages
from citygate.senml import encode_body, encode_pack, encode_pack_cbor, resolve, sets_base_unit

NAMES = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
UNITS = st.sampled_from(["W", "V", "A", "Wh", "Cel", "m3", "/", "%RH"])
FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False).map(shortest_float32),
    st.decimals(places=3, min_value=-1e6, max_value=1e6).map(float),
)


@st.composite
def readings(draw: st.DrawFn) -> list[Reading]:
    count = draw(st.integers(1, 8))
    names = draw(st.lists(NAMES, min_size=count, max_size=count, unique=True))
    found: list[Reading] = []
    for name in names:
        kind = draw(st.sampled_from(["float", "float", "int", "bool", "str"]))
        value: Value
        unit: str | None
        if kind == "float":
            value, unit = draw(FLOATS), draw(UNITS)
        elif kind == "int":
            value, unit = draw(st.integers(-(2**63), 2**63 - 1)), draw(st.none() | UNITS)
        elif kind == "bool":
            value, unit = draw(st.booleans()), None
        else:
            value, unit = draw(st.text(max_size=20)), None
        found.append(Reading(name, unit, value))
    return found


def stored(samples: list[list[Reading]], device: str = "meter-1") -> list[StoredSample]:
    return [
        StoredSample(seq, device, 1764079200.512 + seq, seq % 3 != 0, len(rs), encode_body(rs))
        for seq, rs in enumerate(samples, start=1)
    ]


def plain(value: object) -> object:
    """A decoded CBOR value as the double (or int, bool, str) it stands for."""
    return float(value) if isinstance(value, Decimal) else value


def expected(
    samples: list[StoredSample], originals: list[list[Reading]]
) -> list[tuple[object, ...]]:
    return [
        ("gw/meter-1/" + r.name, r.unit, r.value, s.seq, round(s.time, 3))
        for s, rs in zip(samples, originals, strict=True)
        for r in rs
    ]


def seen(pack: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [
        (
            r["n"],
            r.get("u"),
            plain(r.get("v", r.get("vs", r.get("vb")))),
            r["seq"],
            r["t"],
        )
        for r in resolve(pack)
    ]


@given(st.lists(readings(), min_size=1, max_size=6))
def test_json_and_cbor_packs_hold_the_same_readings(samples: list[list[Reading]]) -> None:
    rows = stored(samples)
    for message in group_messages(rows, max_batch=10**6):
        originals = [samples[s.seq - 1] for s in message.samples]
        want = expected(message.samples, originals)
        from_json = seen(json.loads(encode_pack("gw/meter-1/", message.samples)))
        from_cbor = seen(cbor2.loads(encode_pack_cbor("gw/meter-1/", message.samples)))
        assert from_json == want
        assert from_cbor == want  # numbers compare as the same double (5.0 may travel as 5)


def test_a_base_unit_replaces_the_repeated_units() -> None:
    readings = [
        Reading("vol1", "V", 230.2),
        Reading("vol2", "V", 231.0),
        Reading("amp1", "A", 4.8),
        Reading("amp2", "A", 4.9),
        Reading("freq", "Hz", 50.0),
        Reading("vol3", "V", 229.5),
    ]
    assert encode_body(readings) == (
        '"bu":"V","n":"vol1","v":230.2},{"n":"vol2","v":231.0},'
        '{"bu":"A","n":"amp1","v":4.8},{"n":"amp2","v":4.9},'
        '{"n":"freq","u":"Hz","v":50.0},{"n":"vol3","u":"V","v":229.5'
    )  # a run of two or more states its unit once; a single record keeps its own
    # a unitless reading would inherit a base unit: none then
    body = encode_body(
        [Reading("volt", "V", 230.2), Reading("vol2", "V", 231.0), Reading("status", None, 0)]
    )
    assert not sets_base_unit(body) and body.count('"u":"V"') == 2


def test_a_sample_without_base_unit_never_follows_one_with_it_in_a_message() -> None:
    with_bu = [Reading("volt", "V", 230.2), Reading("vol2", "V", 231.0)]
    without = [Reading("volt", "V", 230.3), Reading("status", None, 3)]
    rows = stored([with_bu, with_bu, without, with_bu])
    messages = group_messages(rows, max_batch=500)
    assert [[s.seq for s in m.samples] for m in messages] == [[1, 2], [3, 4]]
    for message in messages:
        records = resolve(json.loads(encode_pack("gw/meter-1/", message.samples)))
        units = {(r["seq"], r["n"]): r.get("u") for r in records}
        assert all(unit is None for (_, name), unit in units.items() if name.endswith("status"))


@given(st.floats(allow_nan=False))
@example(230.2)
@example(-0.0)
@example(1e20)
@example(5e-324)
def test_every_number_reads_back_as_the_same_double(value: float) -> None:
    decoded = plain(cbor2.loads(encode_number(value)))
    assert decoded == value and type(decoded) in (int, float)
    assert math.copysign(1.0, float(decoded)) == math.copysign(1.0, value)  # type: ignore[arg-type]
    assert len(encode_number(value)) <= 9


def test_numbers_take_their_shortest_exact_form() -> None:
    assert encode_number(230.2).hex() == "c482201908fe"  # tag 4 [-1, 2302]: 6 bytes
    assert encode_number(0.5).hex() == "f93800"  # a half float holds it
    assert encode_number(230.25).hex() == "f95b32"  # a half float holds it
    assert encode_number(100000.5) == b"\xfa" + struct.pack(">f", 100000.5)  # a single does
    assert encode_number(7.0).hex() == "07"
    assert encode_number(-12).hex() == "2b"
    float32 = struct.unpack(">f", struct.pack(">f", 123.456789))[0]
    assert len(encode_number(shortest_float32(float32))) <= 8
    assert encode({"a": [1, True, "x"]}).hex() == "a161618301f56178"


def value_text(value: Value) -> str:
    if type(value) is bool:
        return ',"vb":true' if value else ',"vb":false'
    if type(value) is float:
        return f',"v":{value!r}'
    if type(value) is int:
        return f',"v":{value}'
    return f',"vs":{json.dumps(str(value))}'


def reference_body(readings: list[Reading]) -> str:
    """The module docstring's rule, written plainly (no caches, no fast path)."""
    units = [r.unit for r in readings]
    records: list[str] = []
    base: str | None = None
    for i, r in enumerate(readings):
        head = ""
        if None not in units and r.unit != base and units[i : i + 2] == [r.unit, r.unit]:
            base, head = r.unit, f'"bu":{json.dumps(r.unit)},'
        shown = "" if r.unit in (base, None) else f',"u":{json.dumps(r.unit)}'
        records.append(f'{head}"n":{json.dumps(r.name)}{shown}{value_text(r.value)}')
    return "},{".join(records)


@st.composite
def meter_samples(draw: st.DrawFn) -> list[Reading]:
    """Runs of readings in one unit, as meters list them, now and then another kind."""
    found: list[Reading] = []
    for run in range(draw(st.integers(1, 6))):
        unit = draw(st.sampled_from(["W", "V", "A", None]))
        for i in range(draw(st.integers(1, 5))):
            value: Value = draw(st.one_of(FLOATS, FLOATS, st.integers(), st.booleans()))
            found.append(Reading(f"q{run}_{i}", unit, value))
    return found


@given(st.one_of(readings(), meter_samples()))
@example([Reading("a", "V", 1.0), Reading("b", "V", 2.0), Reading("c", "A", 3.0)])
@example([Reading("a", "V", 1.0), Reading("b", "A", True), Reading("c", "A", 3)])
def test_the_body_is_the_plain_rule_byte_for_byte(readings: list[Reading]) -> None:
    assert encode_body(readings) == reference_body(readings)
