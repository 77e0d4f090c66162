"""Validate the real wireless M-Bus telegrams in ``telegrams/`` (schema, hex, CRCs, names).

Run ``python -m tests.drivers.wmbus.check_telegrams`` (exit status 1 on any problem).
:func:`load_telegrams` gives the checked vectors to the decoder's comparison test.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TELEGRAMS = Path(__file__).parent / "telegrams"
QUANTITIES = Path("/work/shared/spec/quantities.md")

FILE_NAME = re.compile(r"[a-z]{3}-[a-z0-9]+-[1-9][0-9]*\.json")
KEYS = {
    "hex",
    "key",
    "format",
    "crc_present",
    "mode",
    "manufacturer",
    "meter_id",
    "security_mode",
    "source",
    "expected",
    "notes",
}
EXPECTED_KEYS = {"name", "value", "unit", "reference"}
SUFFIXES = r"(_forward|_backward)?(_max|_min|_err)?(_t\d+)?(_s\d+)?(_u\d+)?(_\d+)?"
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")

# The M-Bus table of quantities.md, used when the spec file is not there.
DEFAULT_UNITS: dict[str, str | None] = {
    "energy": "kWh",
    "volume": "m3",
    "mass": "kg",
    "on_time": "s",
    "operating_time": "s",
    "power": "W",
    "volume_flow": "m3/h",
    "mass_flow": "kg/h",
    "flow_temperature": "Cel",
    "return_temperature": "Cel",
    "temperature_difference": "K",
    "external_temperature": "Cel",
    "pressure": "hPa",
    "date": None,
    "datetime": None,
    "hca": "count",
    "fabrication_number": None,
    "error_flags": "count",
}


@dataclass(frozen=True, slots=True)
class Telegram:
    """One checked vector: the file's fields, the hex as bytes."""

    path: Path
    data: bytes
    key: bytes | None
    crc_present: bool
    frame_format: str
    mode: str
    manufacturer: str
    meter_id: str
    security_mode: int
    expected: tuple[dict[str, Any], ...]


def quantity_units(spec: Path = QUANTITIES) -> dict[str, str | None]:
    """Base name → canonical unit from quantities.md's M-Bus table (else the built-in copy)."""
    try:
        text = spec.read_text(encoding="utf-8")
    except OSError:
        return dict(DEFAULT_UNITS)
    section = text.split("## M-Bus meters", 1)[-1].split("\n## ", 1)[0]
    units: dict[str, str | None] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3:
            continue
        names = re.findall(r"`([a-z_]+)`", cells[1])
        unit = re.findall(r"`([^`]+)`", cells[2])
        for name in names:
            units[name] = None if not unit or "string" in cells[2] else unit[0]
    return units or dict(DEFAULT_UNITS)


def crc16(data: bytes) -> int:
    """EN 13757-4 block CRC (polynomial 0x3D65, complemented)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x3D65) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc ^ 0xFFFF


def _check_crcs(data: bytes, frame_format: str) -> str | None:
    """Why the block CRCs of a frame still holding them fail, or None."""
    if frame_format == "A":
        blocks = [data[:12]] + [data[i : i + 18] for i in range(12, len(data), 18)]
        expected_l = len(data) - 1 - 2 * len(blocks)
    elif frame_format == "B":
        blocks = [data[:128], data[128:]] if len(data) > 128 else [data]
        expected_l = len(data) - 1
    else:
        return "crc_present needs format A or B"
    for block in blocks:
        if len(block) < 3 or crc16(block[:-2]) != int.from_bytes(block[-2:], "big"):
            return f"block CRC mismatch in format {frame_format}"
    if data[0] != expected_l:
        return f"L-field {data[0]} does not match {expected_l} for format {frame_format}"
    return None


def _manufacturer(data: bytes) -> str:
    code = int.from_bytes(data[2:4], "little")
    return "".join(chr(((code >> shift) & 0x1F) + 64) for shift in (10, 5, 0))


def check_file(path: Path, units: dict[str, str | None]) -> tuple[Telegram | None, list[str]]:
    """Check one vector file; return the telegram (None if unusable) and its problems."""
    problems: list[str] = []
    if not FILE_NAME.fullmatch(path.name):
        problems.append("file name is not <manufacturer>-<model>-<n>.json")
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [*problems, f"unreadable JSON: {exc}"]
    if not isinstance(entry, dict):
        return None, [*problems, "not a JSON object"]
    if set(entry) != KEYS:
        missing, extra = KEYS - set(entry), set(entry) - KEYS
        return None, [*problems, f"keys: missing {sorted(missing)}, unexpected {sorted(extra)}"]
    hex_text, key = entry["hex"], entry["key"]
    if not isinstance(hex_text, str) or not re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", hex_text):
        return None, [*problems, "hex is not an even-length hex string"]
    data = bytes.fromhex(hex_text)
    if len(data) < 12:
        problems.append("telegram shorter than L, C, M, A and CI")
    if key is not None and (not isinstance(key, str) or not re.fullmatch(r"[0-9A-Fa-f]{32}", key)):
        problems.append("key is neither null nor 32 hex digits")
    if entry["security_mode"] not in (0, 5, 7):
        problems.append("security_mode is not 0, 5 or 7")
    elif entry["security_mode"] and key is None:
        problems.append("an encrypted telegram needs its key")
    if entry["format"] not in ("A", "B", "unknown"):
        problems.append("format is not A, B or unknown")
    if entry["mode"] not in ("T1", "C1", "S1", "unknown"):
        problems.append("mode is not T1, C1, S1 or unknown")
    if not isinstance(entry["crc_present"], bool):
        problems.append("crc_present is not a boolean")
    elif len(data) >= 12:
        if entry["crc_present"]:
            why = _check_crcs(data, entry["format"])
            if why:
                problems.append(why)
        elif data[0] != len(data) - 1:
            problems.append(f"L-field {data[0]} but {len(data) - 1} bytes follow it")
    if not isinstance(entry["manufacturer"], str) or not re.fullmatch(
        r"[A-Z]{3}", entry["manufacturer"]
    ):
        problems.append("manufacturer is not three capital letters")
    elif len(data) >= 4 and _manufacturer(data) != entry["manufacturer"]:
        problems.append(
            f"manufacturer {entry['manufacturer']} but the link layer says {_manufacturer(data)}"
        )
    if not isinstance(entry["meter_id"], str) or not re.fullmatch(
        r"[0-9A-Fa-f]{8}", entry["meter_id"]
    ):
        problems.append("meter_id is not 8 digits")
    for field in ("source", "notes"):
        if not isinstance(entry[field], str) or (field == "source" and not entry[field]):
            problems.append(f"{field} is not a (non-empty) string")
    expected = entry["expected"]
    if not isinstance(expected, list):
        return None, [*problems, "expected is not a list"]
    names: set[str] = set()
    for i, item in enumerate(expected):
        problems += [f"expected[{i}]: {p}" for p in _check_expected(item, units, names)]
    if problems:
        return None, problems
    return Telegram(
        path=path,
        data=data,
        key=bytes.fromhex(key) if key else None,
        crc_present=entry["crc_present"],
        frame_format=entry["format"],
        mode=entry["mode"],
        manufacturer=entry["manufacturer"],
        meter_id=entry["meter_id"],
        security_mode=entry["security_mode"],
        expected=tuple(expected),
    ), []


def _check_expected(item: object, units: dict[str, str | None], names: set[str]) -> list[str]:
    if not isinstance(item, dict) or set(item) != EXPECTED_KEYS:
        return [f"needs exactly the keys {sorted(EXPECTED_KEYS)}"]
    name, value, unit = item["name"], item["value"], item["unit"]
    if not isinstance(item["reference"], str) or not item["reference"]:
        return ["reference is empty"]
    if not isinstance(name, str):
        return ["name is not a string"]
    if name in names:
        return [f"name {name} repeated"]
    names.add(name)
    match = re.fullmatch(r"([a-z_]+?)" + SUFFIXES, name)
    base = match.group(1) if match else None
    if base not in units:
        return [f"{name}: {base} is not a quantity of quantities.md's M-Bus table"]
    if unit != units[base]:
        return [f"{name}: unit {unit!r}, quantities.md says {units[base]!r}"]
    if base in ("date", "datetime"):
        pattern = ISO_DATE if base == "date" else ISO_DATETIME
        if not isinstance(value, str) or not pattern.fullmatch(value):
            return [f"{name}: {value!r} is not an ISO 8601 {base}"]
    elif isinstance(value, bool) or not isinstance(value, int | float | str):
        return [f"{name}: value is not a number or string"]
    return []


def load_telegrams(directory: Path = TELEGRAMS) -> list[Telegram]:
    """Every vector of ``directory``, checked; raise ValueError listing the problems."""
    units = quantity_units()
    telegrams: list[Telegram] = []
    problems: list[str] = []
    for path in sorted(directory.glob("*.json")):
        telegram, found = check_file(path, units)
        problems += [f"{path.name}: {p}" for p in found]
        if telegram is not None:
            telegrams.append(telegram)
    if problems:
        raise ValueError("\n".join(problems))
    return telegrams


def main(argv: list[str] | None = None) -> int:
    """Check the directory (argument or ``telegrams/``), print a tally; 1 on problems."""
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else TELEGRAMS
    try:
        telegrams = load_telegrams(directory)
    except ValueError as exc:
        print(exc)
        return 1
    tally = Counter(t.manufacturer for t in telegrams)
    kinds = Counter((t.mode, t.security_mode, t.crc_present) for t in telegrams)
    print(
        f"{len(telegrams)} telegrams, {len(tally)} manufacturers,",
        f"{sum(len(t.expected) for t in telegrams)} reference values",
    )
    print(" ".join(f"{m}:{n}" for m, n in sorted(tally.items())))
    for (mode, security, crc), n in sorted(kinds.items()):
        print(f"  mode {mode:7} security {security} crc {'kept' if crc else 'stripped'}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
