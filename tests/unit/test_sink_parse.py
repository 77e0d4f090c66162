"""The sink's parser (agent/sink/parse.py) and CBOR decoder (agent/sink/cbor_decode.py): the
agent's JSON and CBOR packs give the same rows, exactly; cbor2 (an independent decoder) agrees
with ours; any bytes at all give rows or :class:`Malformed`, nothing else."""

from __future__ import annotations

import contextlib
import math
from decimal import Decimal

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.cbor import encode
from citygate.model import Reading
from citygate.senml import encode_pack, encode_pack_cbor
from citygate.sink.cbor_decode import CborDecodeError, decode
from citygate.sink.parse import MAX_PAYLOAD, Malformed, Row, parse_message
from tests.unit.test_senml import readings, stored

TOPIC = "city/gw/meter-1/data"


def parse(payload: bytes) -> list[Row]:
    return parse_message(TOPIC, payload, "city")


def expected_rows(samples: list[list[Reading]]) -> list[Row]:
    out: list[Row] = []
    for s, rs in zip(stored(samples), samples, strict=True):
        for r in rs:
            v = r.value
            text = v.replace("\x00", "\ufffd") if isinstance(v, str) else None
            number = float(v) if type(v) in (int, float) else None
            flag = v if isinstance(v, bool) else None
            out.append(
                Row("gw", "meter-1", r.name, round(s.time, 3), number, text, flag, r.unit, s.seq)
            )
    return out


@given(st.lists(readings(), min_size=1, max_size=6))
def test_json_and_cbor_packs_give_the_readings_exactly(samples: list[list[Reading]]) -> None:
    # One sample per message when it has a unitless reading (agent/mqtt/data.py does so too).
    for sample in samples:
        rows = stored([sample])
        want = expected_rows([sample])
        want = [r._replace(seq=1, time=round(rows[0].time, 3)) for r in want]
        assert parse(encode_pack("gw/meter-1/", rows)) == want
        assert parse(encode_pack_cbor("gw/meter-1/", rows)) == want


SENML_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64) + 1, 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.integers(-5, 5) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)


@given(SENML_VALUES)
def test_the_decoder_agrees_with_cbor2(value: object) -> None:
    encodings = [cbor2.dumps(value)]
    with contextlib.suppress(ValueError):  # the agent's encoder writes no null
        encodings.append(encode(value))  # shortest floats, decimal fractions (tag 4)

    def plain(v: object) -> object:
        if isinstance(v, Decimal):
            return float(v)
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    for data in encodings:
        assert decode(data) == plain(cbor2.loads(data))


@given(st.binary(max_size=300))
def test_any_bytes_give_rows_or_malformed(data: bytes) -> None:
    kinds = []
    for payload in (data, b"\x81" + data, b"[" + data):
        try:
            parse(payload)
        except Malformed as exc:
            kinds.append(exc.kind)
    assert all(kinds)


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "bad_cbor"),  # 2^64 - 1 items announced
        (b"\x81" * 100, "bad_cbor"),  # nested deeper than a pack
        (b"\x9f\xff", "bad_cbor"),  # indefinite length
        (b"\x81\xc2\x41\x01", "bad_cbor"),  # a bignum tag
        (b"\x81\xa1\x00\x00\x00", "bad_cbor"),  # trailing bytes
        (b"[" * 50_000, "bad_json"),
        (b'[{"bn":"gw/meter-1/","bt":1,"seq":1,"n":"x","v":NaN}]', "bad_json"),
        (b'[{"bn":"gw/meter-1/","bt":1,"seq":1,"n":"x","v":1e999}]', "bad_value"),
        (b'[{"bn":"gw/meter-1/","bt":1e300,"seq":1,"n":"x","v":1}]', "bad_value"),
        (b'[{"bn":"gw/meter-1/","bt":1,"seq":-1,"n":"x","v":1}]', "bad_type"),
        (b'[{"bn":"gw/meter-1/","bt":1,"seq":true,"n":"x","v":1}]', "bad_type"),
        (b'[{"bn":"gw/meter-1/","bt":1,"seq":1,"n":"x","v":true}]', "bad_type"),
        (b'[{"bn":"gw/meter-1/","bt":1,"seq":1,"n":"x","v":1,"vs":"a"}]', "bad_type"),
        (b'[{"bn":"gw/meter-1/","bt":1,"seq":1,"n":"x","u":3,"v":1}]', "bad_type"),
        (b'[{"bn":"gw/meter-1/","bt":1,"seq":1,"n":"x\\ud800","v":1}]', "bad_value"),
        (
            b'[{"bn":"gw/meter-1/","bt":1,"seq":1,"n":"x","v":1},{"bn":"gw/other/","n":"y","v":1}]',
            "bn_mismatch",
        ),
        (
            b'[{"bn":"gw/meter-1/","bt":1,"seq":1,"n":"x","v":1},{"bt":2,"n":"y","v":1}]',
            "missing_seq",
        ),
        (b" " * (MAX_PAYLOAD + 1), "too_large"),
    ],
)
def test_hostile_messages_are_malformed(payload: bytes, kind: str) -> None:
    with pytest.raises(Malformed) as caught:
        parse(payload)
    assert caught.value.kind == kind


def test_decimal_fractions_read_as_the_json_double() -> None:
    assert decode(bytes.fromhex("C4822019 08FE".replace(" ", ""))) == 230.2
    with pytest.raises(CborDecodeError):
        decode(bytes.fromhex("C4821A000F4240 01"))  # exponent 10^6
    assert not math.isnan(decode(b"\xf9\x7c\x00"))  # type: ignore[arg-type]


def test_the_topic_names_gateway_and_device() -> None:
    payload = b'[{"bn":"gw/meter-1/","bt":1,"seq":1,"n":"x","v":1}]'
    assert parse_message("a/b/gw/meter-1/data", payload, "a/b")[0].gateway == "gw"
    with pytest.raises(Malformed):
        parse_message("city/gw/extra/meter-1/data", payload, "city")
