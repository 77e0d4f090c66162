"""The wireless M-Bus simulator: HCI framing and CRC, telegrams decrypted with
``cryptography`` (not the simulator's own AES) and read by hand from EN 13757-4/-3,
the stick's configuration, damaged frames, the pty and ``citygate-sim wmbus``.

Nothing here goes through citygate's wmbus driver: the simulator is its oracle.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import itertools
import json
import os
import re
import tomllib
import tty
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from citygate_sim.wmbus import (
    DEMO_METERS,
    Air,
    HeatValues,
    MeterSpec,
    StickConfig,
    Transmission,
    WaterValues,
    WmbusSimulator,
    hci,
)
from tests.sim import command

TIMEOUT = 10.0
START = 1_764_000_000.0  # 2025-11-24, a Monday
WATER_ENC, WATER_PLAIN, HEAT_ENC = DEMO_METERS
T1, C1B, S2 = 0x03, 0x07, 0x02


def x25(data: bytes) -> int:
    """CRC-16/X-25 computed another way: the unreflected CCITT CRC on bit-reversed bytes."""

    def reverse(value: int, bits: int) -> int:
        return int(f"{value:0{bits}b}"[::-1], 2)

    crc = binascii.crc_hqx(bytes(reverse(b, 8) for b in data), 0xFFFF)
    return reverse(crc, 16) ^ 0xFFFF


def frame(endpoint: int, msg_id: int, payload: bytes = b"", crc: bool = True) -> bytes:
    """An HCI request built by hand (``A5 CE ID LEN payload [CRC]``)."""
    body = bytes(((0x80 if crc else 0) | endpoint, msg_id, len(payload))) + payload
    return b"\xa5" + body + (x25(body).to_bytes(2, "little") if crc else b"")


def split_hci(data: bytes) -> tuple[list[bytes], bytes]:
    """Whole HCI messages at the start of ``data`` (checked here), and the rest."""
    frames = []
    while len(data) >= 4:
        assert data[0] == 0xA5, data.hex()
        control = data[1] & 0xF0
        size = (
            4 + data[3] + 4 * bool(control & 0x20) + bool(control & 0x40) + 2 * bool(control & 0x80)
        )
        if len(data) < size:
            break
        frames.append(data[:size])
        data = data[size:]
    return frames, data


def bcd(text: str) -> bytes:
    return bytes.fromhex(text)[::-1]


def int_le(value: int, size: int) -> bytes:
    return value.to_bytes(size, "little", signed=True)


def type_f(m: datetime) -> bytes:
    y = m.year % 100
    return bytes((m.minute, m.hour, m.day | (y & 7) << 5, m.month | (y >> 3) << 4))


def type_g(d: date) -> bytes:
    y = d.year % 100
    return bytes((d.day | (y & 7) << 5, d.month | (y >> 3) << 4))


def expected_records(v: WaterValues | HeatValues) -> bytes:
    """The records the meter model says, written from EN 13757-3 by hand."""
    if isinstance(v, WaterValues):
        return (
            b"\x0c\x13" + bcd(f"{round(v.volume_m3 * 1000):08d}")
            + b"\x02\x3b" + int_le(round(v.flow_m3h * 1000), 2)
            + b"\x02\x5a" + int_le(round(v.flow_temperature_c * 10), 2)
            + b"\x04\x6d" + type_f(v.datetime)
            + b"\x02\xfd\x17" + int_le(v.error_flags, 2)
            + b"\x42\x6c" + type_g(v.due_date)
            + b"\x4c\x13" + bcd(f"{round(v.volume_due_m3 * 1000):08d}")
        )  # fmt: skip
    return (
        b"\x0c\x06" + bcd(f"{v.energy_kwh:08d}")
        + b"\x0c\x14" + bcd(f"{round(v.volume_m3 * 100):08d}")
        + b"\x03\x2b" + int_le(round(v.power_kw * 1000), 3)
        + b"\x03\x3b" + int_le(round(v.flow_m3h * 1000), 3)
        + b"\x02\x5a" + int_le(round(v.flow_temperature_c * 10), 2)
        + b"\x02\x5e" + int_le(round(v.return_temperature_c * 10), 2)
        + b"\x02\x61" + int_le(round(v.temperature_difference_k * 100), 2)
        + b"\x04\x6d" + type_f(v.datetime)
        + b"\x02\xfd\x17" + int_le(v.error_flags, 2)
        + b"\x42\x6c" + type_g(v.due_date)
        + b"\x4c\x06" + bcd(f"{v.energy_due_kwh:08d}")
    )  # fmt: skip


def open_telegram(tx: Transmission) -> bytes:
    """Check the link layer and short transport header of ``tx``; its records, decrypted."""
    data, spec = tx.telegram, tx.spec
    assert data[0] == len(data) - 1  # L counts the bytes after it: no block CRCs
    assert data[1] == 0x44  # SND_NR
    letters = spec.manufacturer
    code = sum((ord(c) - 64) << shift for c, shift in zip(letters, (10, 5, 0), strict=True))
    assert data[2:4] == code.to_bytes(2, "little")
    assert data[4:8] == bcd(f"{spec.ident:08d}")
    assert data[8] == spec.version
    assert data[9] == {"water": 0x07, "heat": 0x04}[spec.kind]
    assert data[10] == 0x7A
    assert data[11] == tx.access_number
    assert data[12] == tx.values.status
    config = int.from_bytes(data[13:15], "little")
    payload = data[15:]
    if spec.key is None:
        assert config == 0
        return payload
    assert (config >> 8) & 0x1F == 5  # security mode 5
    blocks = (config >> 4) & 0x0F
    assert len(payload) == 16 * blocks  # everything encrypted
    iv = data[2:10] + bytes((tx.access_number,)) * 8
    decryptor = Cipher(algorithms.AES(spec.key), modes.CBC(iv)).decryptor()
    plain = decryptor.update(payload) + decryptor.finalize()
    assert plain[:2] == b"\x2f\x2f"
    return plain[2:].rstrip(b"\x2f")


# --------------------------------------------------------------------------- HCI


def test_hci_crc_and_framing_by_hand() -> None:
    assert hci.crc16(b"123456789") == 0x906E == x25(b"123456789")  # CRC-16/X-25 check value
    for data in (b"", b"\x01\x02\x00", bytes(range(200))):
        assert hci.crc16(data) == x25(data)
    assert hci.encode_frame(hci.DEVMGMT, 0x02, crc=False) == bytes.fromhex("A5 01 02 00")
    assert hci.encode_frame(hci.DEVMGMT, 0x02) == frame(1, 0x02)
    ind = hci.encode_frame(hci.RADIOLINK, 0x03, b"\x44\x01", rssi=105, timestamp=0x01020304)
    body = bytes.fromhex("E2 03 02 44 01 04 03 02 01 69")  # CRC, RSSI, time stamp; endpoint 2
    assert ind == b"\xa5" + body + x25(body).to_bytes(2, "little")
    assert hci.rssi_byte(-70) == 105 and hci.rssi_dbm(105) == -70


def test_hci_decoder_resynchronises_and_drops_bad_crc() -> None:
    decoder = hci.HciDecoder()
    good = frame(1, 0x01)
    bad = bytearray(frame(1, 0x05))
    bad[-1] ^= 0xFF
    frames = decoder.feed(b"\x00\x13" + bytes(bad) + good[:3])
    assert frames == [] and decoder.bad_crc == 1
    frames = decoder.feed(good[3:] + frame(1, 0x0F, crc=False))
    assert [(f.endpoint, f.msg_id, f.crc) for f in frames] == [(1, 0x01, True), (1, 0x0F, False)]


# --------------------------------------------------------------------------- meters


def first_of_each(seconds: float = 600) -> dict[int, Transmission]:
    air = Air(seed=7, start=START)
    out: dict[int, Transmission] = {}
    for tx in air.until(START + seconds):
        out.setdefault(tx.spec.ident, tx)
    return out


@pytest.mark.parametrize("spec", DEMO_METERS, ids=lambda s: f"{s.kind}-{s.ident}")
def test_telegram_decrypts_and_carries_the_models_values(spec: MeterSpec) -> None:
    tx = first_of_each()[spec.ident]
    assert open_telegram(tx) == expected_records(tx.values)
    assert tx.values.datetime == datetime.fromtimestamp(tx.t).replace(second=0, microsecond=0)
    assert -120 <= tx.rssi_dbm <= -20


def test_a_wrong_key_gives_no_check_bytes() -> None:
    tx = first_of_each()[WATER_ENC.ident]
    wrong = MeterSpec(WATER_ENC.ident, key=bytes(16))
    with pytest.raises(AssertionError):
        open_telegram(
            Transmission(tx.t, wrong, tx.telegram, tx.rssi_dbm, tx.access_number, tx.values)
        )


def test_a_day_of_consumption_is_plausible() -> None:
    air = Air([replace(s, key=None) for s in DEMO_METERS], seed=3, start=START)  # AES is slow
    seen: dict[int, list[Transmission]] = {}
    for tx in air.until(START + 86_400):
        seen.setdefault(tx.spec.ident, []).append(tx)
    water = seen[WATER_ENC.ident]
    assert 86_400 / 16 * 0.95 < len(water) < 86_400 / 16 * 1.05  # every 16 s, with jitter
    assert 86_400 / 120 * 0.95 < len(seen[HEAT_ENC.ident]) < 86_400 / 120 * 1.05
    volumes = [tx.values.volume_m3 for tx in water if isinstance(tx.values, WaterValues)]
    assert volumes == sorted(volumes)
    assert 0.5 < volumes[-1] - volumes[0] < 5  # m³ a day: a few flats
    assert all((b.access_number - a.access_number) % 256 == 1 for a, b in itertools.pairwise(water))
    heat = [tx.values for tx in seen[HEAT_ENC.ident] if isinstance(tx.values, HeatValues)]
    assert 20 < heat[-1].energy_kwh - heat[0].energy_kwh < 400  # a building in November
    assert all(v.flow_temperature_c > v.return_temperature_c for v in heat)


# --------------------------------------------------------------------------- the stick


def set_config(link_mode: int, rssi: bool = True, save: bool = False) -> bytes:
    """NVM flag, IIFlag1 (link mode), IIFlag2 (auto RSSI, auto time stamp)."""
    return bytes((int(save), 0x02, link_mode, 0x30, int(rssi), 0))


def test_stick_hears_only_its_link_mode() -> None:
    sim = WmbusSimulator(seed=1, start=START)
    tx = first_of_each()[WATER_ENC.ident]
    assert sim.config == StickConfig() and sim.indication(tx) is None  # S2 out of the box
    reply = sim.answer(hci.HciFrame(1, 0x03, set_config(C1B)))
    assert reply == frame(1, 0x04, b"\x00")
    assert sim.indication(tx) is None and sim.not_heard == 2
    assert sim.answer(hci.HciFrame(1, 0x03, set_config(T1))) == frame(1, 0x04, b"\x00")
    ind = sim.indication(tx)
    assert ind is not None
    body = (
        bytes((0xC2, 0x03, tx.telegram[0])) + tx.telegram[1:] + bytes((hci.rssi_byte(tx.rssi_dbm),))
    )
    assert ind == b"\xa5" + body + x25(body).to_bytes(2, "little")
    # not saved: a reset brings the factory configuration back
    assert sim.answer(hci.HciFrame(1, 0x07, b"")) == frame(1, 0x08, b"\x00")
    assert sim.config.link_mode == S2


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00",
        bytes((0, 0x02, 0x55, 0x30, 1, 0)),
        bytes((0, 0x02, T1, 0x30, 1)),
        set_config(T1) + b"\x00",
    ],
    ids=["empty", "no-iiflag1", "unknown-link-mode", "truncated", "trailing-byte"],
)
def test_bad_set_config_is_refused(payload: bytes) -> None:
    sim = WmbusSimulator(seed=1, start=START)
    assert sim.answer(hci.HciFrame(1, 0x03, payload)) == frame(1, 0x04, b"\x01")
    assert sim.config == StickConfig()


def test_corruption_rate_is_honoured() -> None:
    sim = WmbusSimulator(corrupt_rate=0.2, seed=11, start=START, config=StickConfig(link_mode=T1))
    txs = list(first_of_each().values())
    damaged = 0
    runs = 3000
    for i in range(runs):
        tx = txs[i % len(txs)]
        ind = sim.indication(tx)
        assert ind is not None
        ok = x25(ind[1:-2]) == int.from_bytes(ind[-2:], "little")
        clean = hci.encode_frame(2, 3, tx.telegram[1:])
        assert len(ind) == len(clean)
        assert sum(a != b for a, b in zip(ind, clean, strict=True)) == (0 if ok else 1)
        damaged += not ok
    assert damaged == sim.corrupted
    assert abs(damaged - 0.2 * runs) < 4 * (runs * 0.2 * 0.8) ** 0.5  # 4 σ of a binomial


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_any_bytes_from_the_host_get_a_well_formed_answer_or_none(chunks: list[bytes]) -> None:
    sim = WmbusSimulator(seed=1, start=START)
    decoder = hci.HciDecoder()
    for chunk in chunks + [frame(1, 0x03, chunk[:20]) for chunk in chunks]:
        for request in decoder.feed(chunk):
            reply = sim.answer(request)
            if reply is not None:
                (got,), rest = split_hci(reply)
                assert rest == b"" and x25(got[1:-2]) == int.from_bytes(got[-2:], "little")
        assert decoder.buffered < 4 + 255 + 7  # bounded
    assert sim.config.link_mode in hci.LINK_MODES


# --------------------------------------------------------------------------- on the pty


class PtyClient:
    """The host's end: raw bytes in and out of the pty."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.received = bytearray()
        self.arrived = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self.received.extend(os.read(self.fd, 4096))
        self.arrived.set()

    async def frames(self, count: int) -> list[bytes]:
        """The next ``count`` HCI messages (well formed: checked by :func:`split_hci`)."""
        out: list[bytes] = []
        async with asyncio.timeout(TIMEOUT):
            while len(out) < count:
                got, rest = split_hci(bytes(self.received))
                self.received[:] = rest
                out += got
                if len(out) < count:
                    self.arrived.clear()
                    await self.arrived.wait()
        return out

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


async def test_stick_on_the_pty_answers_and_forwards_telegrams(tmp_path: Path) -> None:
    record = tmp_path / "air.jsonl"
    async with WmbusSimulator(fast=100.0, seed=2, record=record) as sim:
        client = PtyClient(sim.port)
        try:
            os.write(client.fd, frame(1, 0x01, crc=False) + frame(1, 0x0F))
            ping, info = await client.frames(2)
            assert ping[:4] == bytes.fromhex("A5 81 02 00")
            assert info[1:4] == bytes.fromhex("81 10 08") and info[4] == 0x33  # iM871A
            os.write(client.fd, frame(1, 0x03, set_config(T1)))
            (reply,) = await client.frames(1)
            assert reply == frame(1, 0x04, b"\x00")
            indications = [f for f in await client.frames(6) if f[1] & 0x0F == 2]
        finally:
            client.close()
    assert len(indications) >= 4
    for ind in indications:
        assert ind[1] == 0xC2  # CRC and RSSI attached, radio link endpoint
        assert x25(ind[1:-2]) == int.from_bytes(ind[-2:], "little")
        telegram = bytes((ind[3],)) + ind[4 : 4 + ind[3]]
        tx = next(t for t in sim.sent if t.telegram == telegram)
        assert ind[-3] == hci.rssi_byte(tx.rssi_dbm)
        assert open_telegram(tx) == expected_records(tx.values)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert {tx.telegram.hex() for tx in sim.sent} <= {line["hex"] for line in lines}
    assert all(set(line) == {"t", "hex", "rssi"} for line in lines)


async def test_citygate_sim_wmbus_prints_port_and_meters(tmp_path: Path) -> None:
    record = tmp_path / "capture.jsonl"
    args = ("wmbus", "--fast", "200", "--corrupt-rate", "0.1", "--record", str(record))
    async with command.serving(*args) as (process, line):
        assert re.fullmatch(r"serial port (/dev/\S+)\n", line), line
        assert process.stdout is not None
        meters = [(await process.stdout.readline()).decode() for _ in DEMO_METERS]
        assert meters[0].startswith("meter 31415926 water T1 every 16 s")
        assert meters[0].split()[-1] == "0123456789ABCDEF0123456789ABCDEF"
        assert "no key" in meters[1]
        async with asyncio.timeout(TIMEOUT):
            while len(record.read_text().splitlines()) < 3:
                await asyncio.sleep(0.05)
        assert await command.stop(process) == (0, b"")
    for entry in map(json.loads, record.read_text().splitlines()):
        telegram = bytes.fromhex(entry["hex"])
        assert telegram[0] == len(telegram) - 1 and telegram[1] == 0x44


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--fast", "0"], b"--fast"), (["--corrupt-rate", "1.5"], b"--corrupt-rate")],
)
async def test_citygate_sim_wmbus_usage_errors(args: list[str], message: bytes) -> None:
    returncode, _, err = await command.finish("wmbus", *args)
    assert returncode == 2 and message in err


def test_demo_config_has_the_wireless_water_meter(tmp_path: Path) -> None:
    from citygate.demo import demo_config

    text = demo_config(
        5020, "mqtt://127.0.0.1:1883", "5", tmp_path / "var", wmbus_port="/dev/pts/9"
    )
    config = tomllib.loads(text)
    (receiver,) = config["wmbus"]
    assert receiver == {"id": "radio", "port": "/dev/pts/9", "dongle": "im871a", "mode": "T1"}
    device = next(d for d in config["device"] if d["driver"] == "wmbus")
    assert device["receiver"] == "radio" and device["meter_id"] == f"{WATER_ENC.ident:08d}"
    assert WATER_ENC.key is not None
    assert Path(device["key_file"]).read_text().strip() == WATER_ENC.key.hex()
