"""Regenerate tests/fuzz/corpus/<target>/ from the test vectors: ``python -m tests.fuzz.seed``.

Sources: the M-Bus telegrams of tests/drivers/mbus/vectors (and ../shared/vectors/mbus
when present: the same libmbus frames and error frames), the BLE and Modbus vectors of
../shared/vectors/{ble,modbus}/README.md as the driver tests use them, the sample configs
(config/, drivers/*/sample.toml) and the golden config cases of tests/cases/config.
Every seed is a file of the raw input its target takes (see tests/fuzz/targets.py).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

from citygate.drivers.ble.advert import Advert, to_line
from citygate.drivers.ble.bthome import BTHOME_UUID
from citygate.drivers.ble.pvvx import ENVIRONMENT_UUID
from citygate.drivers.ble.ruuvi import RUUVI_COMPANY_ID
from citygate.drivers.modbus.rtu import rtu_frame
from tests.drivers.wmbus.vectors import HOMEGEAR_MODE7, VECTORS
from tests.fuzz.targets import TARGETS, WMBUS_KEYS, rtu_input, tcp_input, wmbus_input

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
MBUS_VECTORS = (
    ROOT / "tests" / "drivers" / "mbus" / "vectors",
    ROOT.parent / "shared" / "vectors" / "mbus",
)

# ../shared/vectors/ble/README.md B.1.2 and B.1.3 (payload after the UUID)
BTHOME = """
40 02 CA 09 03 BF 13 | 40 00 09 01 5D 02 5D 09 03 B7 18 | 40 05 13 8A 14 | 40 12 E2 04 | 40 13 33 01
40 08 CA 06 | 40 14 02 0C | 40 0C 02 0C | 40 45 11 01 | 40 57 EA | 40 58 EA | 40 02 CA 09 02 CF 09
40 02 CA 09 02 CF 09 02 CF 08 03 B7 18 03 B7 17 01 5D | 44 04 13 8A 01 | 44 50 5D 39 61 64
40 0B 02 1B 00 | 40 0A 13 8A 14 | 40 2D 01 | 40 3A 04 | 40 01 5D FE 5D 09 03 B7 18 | 40 FE CA 09
40 02 CA 09 03 BF | E1 02 00 0C 04 04 13 8A 01 | 00 | 42 B2 18 8D 38 C1 A4 04 13 8A 01
40 53 0C 48 65 6C 6C 6F 20 57 6F 72 6C 64 21 | 40 54 0C 48 65 6C 6C 6F 20 57 6F 72 6C 64 21
40 3C 01 03 | 40 F1 00 01 02 04 | 40 F2 00 01 06 | 40 5C 02 FB FF FF | 40 62 40 99 DF FF
41 E4 45 F3 C9 96 2B 33 22 11 00 6C 7C 45 19 | 41 3E 93 2C C7 17 5F 34 22 11 00 55 38 76 AF
43 A5 80 8F E6 48 54 F1 96 C0 6F FB 49 00 11 22 33 F0 8E CB DE | 41 BA 0D B0 7A EE F6 00
41 D2 FC EF E5 2E B2 12 D6 00 11 22 33 BC 38 C9 66
"""
# B.2 (after the company id) and B.3 (0x181A service data after the UUID)
RUUVI = """
05 12FC 5394 C37C 0004 FFFC 040C AC36 42 00CD CBB8334C884F
05 8000 FFFF FFFF 8000 8000 8000 FFFF FF FFFF FFFFFFFFFFFF
05 138A 5F61 C4F0 FFE4 FFDC 0414 C5B6 EC 29B3 F27A52FAD4CD
03 29 1A 1E CE 1E FC 18 F9 42 02 CA 0B 53
"""
PVVX = """
A4C1380283F4 00A2 2F 5F 0BF8 19
F4830238C1A4 A906 6911 B60B 58 F7 0D
8B376338C1A4 CE09 1310 7F0B 52 12 04
B2188D38C1A4 2B08 9011 F70A 43 20 0F
11D603FBFA7B6DFB1E26FD
"""
# ../shared/vectors/modbus/README.md C.0: (unit, function, count, reply)
RTU = [
    (1, 4, 2, "01 04 04 43 66 33 34 1B 38"),
    (1, 4, 2, "01 04 04 00 00 6E 8C D6 41"),
    (1, 4, 2, "01 04 04 FF FF FC 18 D6 41"),
    (1, 3, 2, "01 03 04 01 11 02 72 2A 8F"),
    (1, 4, 2, "01 84 02 C2 C1"),
]


def _plain_text_record(text: str) -> bytes:
    """An 8-bit record whose VIF is plain text (sent last character first)."""
    return bytes((0x01, 0x7C, len(text))) + text.encode()[::-1] + b"\x05"


def _long_frame(ci: int, data: bytes) -> bytes:
    body = bytes((0x08, 0x01, ci)) + data
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))


_SAME_NAMES = _plain_text_record("x") * 2 + _plain_text_record("x 2")
_ADDRESS = b'"address": "A4:C1:38:5B:0F:21"'

EDGES: dict[str, dict[str, bytes]] = {
    # Inputs worth keeping: past findings (each says where it was fixed) and edge cases
    # the fuzzers reach only by luck (big numbers, deep nesting, odd Unicode).
    "mbus_app": {
        # _named gave two records "text_x_2" (fixed in drivers/mbus/decode.py)
        "finding-same-names": bytes((0x78,)) + _SAME_NAMES,
    },
    "mbus_link": {"finding-same-names": _long_frame(0x78, _SAME_NAMES)},
    "capture": {
        # OverflowError from math.isfinite on a 400-digit "t" (drivers/ble/advert.py)
        "finding-t-400-digits": b'{"t": 1' + b"0" * 400 + b", " + _ADDRESS + b"}\n",
        "edge-int-5000-digits": b'{"t": 1, ' + _ADDRESS + b', "rssi": 1' + b"0" * 5000 + b"}\n",
        "edge-nested": b"[" * 5000 + b"\n" + b'{"a":' * 3000 + b"\n",
        "edge-nan-t": b'{"t": NaN, ' + _ADDRESS + b"}\n",
        "edge-arabic-digits": b'{"t": 1, '
        + _ADDRESS
        + ', "manufacturer_data": {"\u0661\u0661": "05"}}\n'.encode(),
        "edge-invalid-utf8": b'{"t": 1, ' + _ADDRESS + b', "name": "\xff\xfe"}\r\n\x00',
    },
    "config": {
        "edge-nested-arrays": b"a = " + b"[" * 3000,
        "edge-nested-tables": b"a = " + b"{b = " * 3000,
        "edge-huge-numbers": b'[gateway]\nid = "gw-1"\n[buffer]\nmax_size = 1e400\n'
        b"max_age = 99999999999999999999\n",
        "edge-not-utf8": b'[gateway]\nid = "gw-\xff"\n',
        "edge-bom-crlf": b'\xef\xbb\xbf[gateway]\r\nid = "gw-1"\r\n',
    },
}


def _hex_items(text: str) -> list[bytes]:
    return [
        bytes.fromhex(item)
        for line in text.splitlines()
        for item in line.split("|")
        if item.strip()
    ]


def _mbus_frames() -> dict[str, bytes]:
    frames: dict[str, bytes] = {}
    seen: set[bytes] = set()
    for base in MBUS_VECTORS:
        for path in sorted(base.glob("*/*.hex")):
            raw = bytes.fromhex(re.sub(r"[^0-9A-Fa-f]", "", path.read_text()))
            if raw not in seen:
                seen.add(raw)
                frames[f"{path.parent.name}-{path.stem}"] = raw
    return frames


def _mbus_app(frames: dict[str, bytes]) -> dict[str, bytes]:
    """CI + user data of each long frame (its bytes after C and A, without CS and stop)."""
    return {name: raw[6:-2] for name, raw in frames.items() if len(raw) > 9 and raw[0] == 0x68}


def _adverts(bthome: list[bytes], ruuvi: list[bytes], pvvx: list[bytes]) -> list[Advert]:
    address = "54:48:E6:8F:80:A5"
    adverts = [
        Advert(address, 1764079200.5 + i, -60, "DIY", {BTHOME_UUID: p})
        for i, p in enumerate(bthome)
    ]
    adverts += [Advert(address, 1764079300.0, -70, None, {}, {RUUVI_COMPANY_ID: p}) for p in ruuvi]
    adverts += [Advert(address, 1764079400.0, None, "ATC", {ENVIRONMENT_UUID: p}) for p in pvvx]
    return adverts


def _capture(adverts: list[Advert]) -> dict[str, bytes]:
    lines = [to_line(a) for a in adverts]
    seeds = {f"line-{i:02d}": (line + "\n").encode() for i, line in enumerate(lines)}
    seeds["file-all"] = "".join(line + "\n" for line in lines).encode()
    seeds["file-mixed"] = (lines[0] + "\nnot json\n\n[1]\n" + lines[-1] + "\r\n").encode()
    seeds["spec-line"] = (
        b'{"t": 1764079200.512, "address": "A4:C1:38:5B:0F:21", "rssi": -67, "name": "ATC_5B0F21", '
        b'"service_data": {"0000181a-0000-1000-8000-00805f9b34fb": "a4c1385b0f2100a22f5f0bf819"}, '
        b'"manufacturer_data": {"1177": "0512fc"}}\n'
    )
    return seeds


def _mbap(transaction: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


def _modbus() -> tuple[dict[str, bytes], dict[str, bytes]]:
    rtu: dict[str, bytes] = {}
    tcp: dict[str, bytes] = {}
    for index, (unit, function, count, reply_hex) in enumerate(RTU):
        reply = bytes.fromhex(reply_hex)
        rtu[f"c0-m{index}"] = rtu_input(unit, function, count, 63, reply)
        rtu[f"c0-m{index}-bytewise"] = rtu_input(unit, function, count, 0, reply)
        rtu[f"c0-m{index}-stray"] = rtu_input(unit, function, count, 3, b"\x00\xff" + reply)
        tcp[f"c0-m{index}"] = tcp_input(function, count, 31, _mbap(7, unit, reply[1:-2]))
    other_unit = rtu_frame(9, bytes.fromhex("04 04 43 66 33 34"))
    rtu["late-other-unit"] = rtu_input(1, 4, 2, 5, other_unit + bytes.fromhex(RTU[0][3]))
    rtu["coils"] = rtu_input(1, 1, 19, 63, rtu_frame(1, bytes.fromhex("01 03 CD 6B 05")))
    tcp["two-frames"] = tcp_input(3, 2, 4, _mbap(1, 3, bytes.fromhex("03 04 43663334")) * 2)
    tcp["coils"] = tcp_input(1, 19, 31, _mbap(1, 1, bytes.fromhex("01 03 CD 6B 05")))
    tcp["bad-protocol"] = tcp_input(3, 2, 2, bytes.fromhex("0007 0001 0007 03 04 04 43663334"))
    tcp["bad-length"] = tcp_input(3, 2, 2, bytes.fromhex("0007 0000 0100 03"))
    return rtu, tcp


def _wmbus() -> dict[str, bytes]:
    """The real telegrams of tests/drivers/wmbus/vectors.py with their key, if it is one of
    the target's, else without a key (and flipped to the other CRC setting once)."""
    seeds: dict[str, bytes] = {}
    for vector in VECTORS:
        key = WMBUS_KEYS.index(vector.key_bytes) if vector.key_bytes in WMBUS_KEYS else 0
        seeds[vector.name] = wmbus_input(key, vector.crc, 0, vector.predecrypted, vector.data)
        seeds[f"{vector.name}-nokey"] = wmbus_input(0, not vector.crc, 0, False, vector.data)
    seeds["homegear-mode7"] = wmbus_input(3, False, 0, False, HOMEGEAR_MODE7)
    return seeds


def _configs() -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    paths = [ROOT / "config" / "gateway.example.toml", *sorted(ROOT.glob("drivers/*/sample.toml"))]
    paths += sorted((ROOT / "tests" / "cases" / "config").glob("*/**/*.toml"))
    for path in paths:
        name = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", "-")
        seeds[name] = path.read_bytes()
    return seeds


def seeds() -> dict[str, dict[str, bytes]]:
    """Target name → seed name → input."""
    bthome, ruuvi, pvvx = _hex_items(BTHOME), _hex_items(RUUVI), _hex_items(PVVX)
    frames = _mbus_frames()
    rtu, tcp = _modbus()
    corpus = {
        "mbus_link": {
            **frames,
            "stream-ack-frame-garbage": b"\xe5"
            + next(iter(frames.values()))
            + b"\x68\xff\xff\x68\x10",
        },
        "mbus_app": _mbus_app(frames),
        "bthome": {f"v{i:02d}": p for i, p in enumerate(bthome)},
        "ruuvi": {f"v{i:02d}": p for i, p in enumerate(ruuvi)},
        "pvvx": {f"v{i:02d}": p for i, p in enumerate(pvvx)},
        "capture": _capture(_adverts(bthome, ruuvi, pvvx)),
        "modbus_rtu": rtu,
        "modbus_tcp": tcp,
        "config": _configs(),
        "wmbus": _wmbus(),
    }
    assert set(corpus) == set(TARGETS), set(corpus) ^ set(TARGETS)
    for target, edges in EDGES.items():
        corpus[target].update(edges)
    return corpus


def read_corpus(target: str, directories: Iterable[Path] = ()) -> list[bytes]:
    """The seeds of ``target`` in tests/fuzz/corpus (and ``directories``), in name order."""
    found: list[bytes] = []
    for directory in (CORPUS / target, *directories):
        if directory.is_dir():
            found += [p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()]
    return found


def main() -> int:
    total = 0
    for target, items in seeds().items():
        directory = CORPUS / target
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for name, data in items.items():
            digest = hashlib.sha1(data).hexdigest()[:8]
            (directory / f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', name)}-{digest}").write_bytes(data)
            total += len(data)
        print(f"{target:12} {len(items):4} seeds")
    print(f"{total / 1024:.0f} KiB in {CORPUS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
