"""The byte-order assistant of ``citygate scan modbus``.

Given the raw words of consecutive registers, show them in hex and decoded as
every numeric type under every order at every start address where the value
fits, and all of them as one ``string`` under every order, so a technician can
spot the plausible reading and write the register table. Floats a meter would
never report are marked, in parentheses: NaN, ±inf, |x| > 1e12, and non-zero
|x| < 1e-12 (denormals and the tiny values a wrong order typically gives); so is
a text that is not printable ASCII, shown with its bytes escaped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final

from citygate.drivers.modbus.decode import (
    BYTE_ORDERS,
    FLOAT_TYPES,
    REGISTER_WIDTH,
    ByteOrder,
    DataType,
    decode_text,
    decode_value,
    string_bytes,
)

__all__ = ["ASSISTANT_TYPES", "assistant_json", "format_assistant", "is_plausible"]

ASSISTANT_TYPES: Final[tuple[DataType, ...]] = (
    "int16", "uint16", "int32", "uint32", "int48", "uint48", "int64", "uint64",
    "float32", "float64",
)  # fmt: skip
"""The numeric types shown at every start address; ``string`` is shown once, over
all the registers read."""

_IMPLAUSIBLE_NOTE: Final = (
    "(…) implausible for a meter: NaN, infinite, |x| > 1e12 or non-zero |x| < 1e-12"
)


def is_plausible(value: float) -> bool:
    """False for a float a meter never reports (see the module docstring)."""
    if not math.isfinite(value):
        return False
    magnitude = abs(value)
    return magnitude == 0.0 or 1e-12 <= magnitude <= 1e12


def _text(value: int | float, data_type: DataType) -> str:
    if data_type not in FLOAT_TYPES:
        return str(value)
    digits = 7 if data_type == "float32" else 15
    return format(value, f".{digits}g")


def _check(words: Sequence[int], address: int) -> None:
    if not 0 <= address <= 0xFFFF or address + len(words) > 0x10000:
        raise ValueError("registers must lie within addresses 0x0000–0xFFFF")
    if any(not 0 <= word <= 0xFFFF for word in words):
        raise ValueError("register values must be 0–0xFFFF")


def assistant_json(words: Sequence[int], address: int) -> dict[str, Any]:
    """The assistant's findings as plain JSON-able data.

    ``decodings`` holds one entry per type and start address; each order maps
    to ``{"value": number or None (NaN, inf), "text": str, "plausible": bool}``.
    The last entry is type ``string`` over all the registers: ``value`` is the
    text, or None when it is not printable ASCII (``text`` then escapes it).
    """
    _check(words, address)
    registers = [
        {"address": address + index, "hex": f"0x{word:04X}", "value": word}
        for index, word in enumerate(words)
    ]
    decodings: list[dict[str, Any]] = []
    for data_type in ASSISTANT_TYPES:
        width = REGISTER_WIDTH[data_type]
        for start in range(len(words) - width + 1):
            values: dict[str, dict[str, Any]] = {}
            for order in BYTE_ORDERS:
                value = decode_value(words[start : start + width], data_type, order)
                assert not isinstance(value, bool | str)
                finite = not isinstance(value, float) or math.isfinite(value)
                plausible = data_type not in FLOAT_TYPES or is_plausible(float(value))
                values[order] = {
                    "value": value if finite else None,
                    "text": _text(value, data_type),
                    "plausible": plausible,
                }
            decodings.append({"type": data_type, "address": address + start, "orders": values})
    if words:
        decodings.append(
            {
                "type": "string",
                "address": address,
                "count": len(words),
                "orders": {order: _string(words, order) for order in BYTE_ORDERS},
            }
        )
    return {"address": address, "count": len(words), "registers": registers, "decodings": decodings}


def _string(words: Sequence[int], order: ByteOrder) -> dict[str, Any]:
    data = string_bytes(words, order)
    text = decode_text(data)
    if text is None:
        shown = "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in data)
        return {"value": None, "text": f'"{shown}"', "plausible": False}
    return {"value": text, "text": json.dumps(text), "plausible": True}


def format_assistant(words: Sequence[int], address: int) -> str:
    """The assistant's findings as text for a terminal: the raw registers, then
    one section per type with a row per start address and a column per order."""
    report = assistant_json(words, address)
    lines = [f"{len(words)} register(s) from 0x{address:04X}", "", "address  hex     decimal"]
    lines += [
        f"0x{entry['address']:04X}   {entry['hex']}  {entry['value']:>7}"
        for entry in report["registers"]
    ]
    for data_type in (*ASSISTANT_TYPES, "string"):
        rows: list[list[str]] = [[data_type, *BYTE_ORDERS]]
        for decoding in report["decodings"]:
            if decoding["type"] != data_type:
                continue
            cells = [f"0x{decoding['address']:04X}"]
            for order in BYTE_ORDERS:
                found = decoding["orders"][order]
                cells.append(found["text"] if found["plausible"] else f"({found['text']})")
            rows.append(cells)
        if len(rows) == 1:
            continue
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines.append("")
        lines += [
            "  ".join(
                cell.ljust(width) if column == 0 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
    if len(words) >= 2:
        lines += ["", _IMPLAUSIBLE_NOTE]
    return "\n".join(lines) + "\n"
