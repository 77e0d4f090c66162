"""Hypothesis strategies for the fuzz targets: seed mutations and generated gateway.toml.

:func:`inputs` is what ``make test`` (and ``make fuzz`` without atheris) feeds a target:
random bytes, corpus seeds mutated (bit flips, cuts, splices, repeated slices) and, for
the config loader, TOML documents built from the loader's own key tables with random
keys, values and nesting, then written out (and sometimes damaged as text).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from citygate.config import BUFFER_FIELDS, DEVICE_FIELDS, GATEWAY_FIELDS, MQTT_FIELDS, SERIAL_FIELDS
from citygate.drivers.ble.config import FIELDS as BLE_DEVICE_FIELDS
from citygate.drivers.mbus.config import FIELDS as MBUS_FIELDS
from citygate.drivers.modbus.config import FIELDS as MODBUS_FIELDS

__all__ = ["gateway_toml", "inputs", "mutated", "toml_text"]


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    """A seed with a few random edits (or a splice of two seeds)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "repeat", "cut", "splice")))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            at = min(at, len(data) - 1)
            data[at] = draw(
                st.sampled_from((0x00, 0x01, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))))
            )
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "repeat":
            end = min(len(data), at + draw(st.integers(1, 16)))
            data[at:at] = data[at:end] * draw(st.integers(1, 8))
        elif op == "cut":
            del data[at:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


# --------------------------------------------------------------------------- TOML

KEYS = sorted(
    {
        *GATEWAY_FIELDS, *MQTT_FIELDS, *BUFFER_FIELDS, *SERIAL_FIELDS, *DEVICE_FIELDS,
        *MBUS_FIELDS, *BLE_DEVICE_FIELDS, *MODBUS_FIELDS,
        "gateway", "mqtt", "buffer", "ble", "serial", "device", "include", "registers",
    }
)  # fmt: skip
WORDS = ("gw-1", "meter-1", "mbus", "modbus", "ble", "mqtt://localhost", "mqtts://h:8883",
          "10s", "0s", "1h", "15m", "64MiB", "1KB", "ABCD", "float32", "input", "coil",
          "kWh", "eastron-sdm630", "12345678", "A4:C1:38:5B:0F:21", "devices.d/*.toml",
          "secret.txt", "E", "N", "auto", "bthome", "", "x" * 70, "é", "\u202e")  # fmt: skip

_scalars = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from((0, 1, -1, 2400, 65536, 2**31)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(timezones=st.one_of(st.none(), st.just(dt.UTC))),
    st.dates(),
    st.times(),
)
_key = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=8))


def _tables(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_key, children, max_size=6),
    )


_values = st.recursive(_scalars, _tables, max_leaves=20)
_DEVICE_KEYS = sorted({*DEVICE_FIELDS, *MBUS_FIELDS, *MODBUS_FIELDS, *BLE_DEVICE_FIELDS})
_device = st.fixed_dictionaries(
    {
        "id": st.sampled_from(("meter-1", "meter-2", "Bad Id", "")),
        "driver": st.sampled_from(("modbus", "mbus", "ble", "nope")),
    },
    optional=dict.fromkeys([k for k in _DEVICE_KEYS if k not in ("id", "driver")], _values),
)
_serial = st.fixed_dictionaries(
    {"id": st.sampled_from(("mbus", "rtu", "mbus"))},
    optional=dict.fromkeys([k for k in sorted(SERIAL_FIELDS) if k != "id"], _values),
)


def _section(fields: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=dict.fromkeys(sorted(fields), _values))


gateway_toml: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"gateway": st.one_of(st.just({"id": "gw-1"}), _section(list(GATEWAY_FIELDS)))},
    optional={
        "mqtt": _section(list(MQTT_FIELDS)),
        "buffer": _section(list(BUFFER_FIELDS)),
        "ble": st.dictionaries(_key, _values, max_size=3),
        "serial": st.lists(_serial, max_size=3),
        "device": st.lists(_device, max_size=4),
        "include": st.one_of(st.sampled_from(("devices.d/*.toml", "*.toml")), _values),
    },
).flatmap(
    lambda doc: st.dictionaries(_key, _values, max_size=2).map(lambda extra: {**extra, **doc})
)
"""A gateway.toml document as data: the loader's sections with random keys and values."""


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    # A TOML basic string is a JSON string, but for DEL, which TOML wants escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key_text(key: str) -> str:
    bare = key.replace("_", "").replace("-", "")
    return key if bare.isalnum() and key.isascii() else _scalar_text(key)


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key_text(k)} = {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return _scalar_text(value)


def toml_text(document: dict[str, Any]) -> str:
    """TOML for ``document``: top-level tables as ``[name]``, lists of tables as ``[[name]]``."""

    def is_array_of_tables(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(i, dict) for i in value)

    lines = [
        f"{_key_text(k)} = {_inline(v)}"
        for k, v in document.items()
        if not isinstance(v, dict) and not is_array_of_tables(v)
    ]
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"\n[{_key_text(key)}]")
            lines += [f"{_key_text(k)} = {_inline(v)}" for k, v in value.items()]
        elif is_array_of_tables(value):
            for item in value:
                lines.append(f"\n[[{_key_text(key)}]]")
                lines += [f"{_key_text(k)} = {_inline(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _config_inputs(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    generated = gateway_toml.map(toml_text).map(lambda text: text.encode())
    return st.one_of(
        generated, mutated([*seeds, b"[gateway]\nid = 'gw-1'\n"]), mutated_text(generated)
    )


def mutated_text(documents: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Generated documents damaged as text (the same edits as :func:`mutated`)."""
    return documents.flatmap(lambda doc: mutated([doc]))


def inputs(target: str, seeds: Sequence[bytes], max_len: int) -> st.SearchStrategy[bytes]:
    """What a target is fed: random bytes, mutated seeds and (config) generated TOML."""
    strategies = [st.binary(max_size=max_len)]
    if seeds:
        strategies.append(mutated(seeds))
    if target == "config":
        strategies.append(_config_inputs(seeds))
    return st.one_of(strategies)
