"""``citygate scan ble``: the live list, the table, snippets, --record, --json."""

from __future__ import annotations

import io
import json
from pathlib import Path

from citygate.drivers.ble.advert import from_line
from citygate.drivers.ble.replay import CaptureWriter, ReplaySource
from citygate.drivers.ble.scan import report_text, scan
from citygate.drivers.ble.scanner import ScannerHub
from citygate_sim.ble import DEMO_BINDKEY, DEMO_SENSORS, BleSimulator
from tests.support.processes import run_cli

from .radio import FakeClock

ENCRYPTED = next(s for s in DEMO_SENSORS if s.bindkey is not None)


def simulated_capture(path: Path, seconds: float, flatten: bool = False) -> None:
    stream = io.StringIO()
    BleSimulator(seed=2, start=1_764_000_000.0).write_capture(stream, seconds)
    lines = stream.getvalue().splitlines()
    if flatten:  # every advert at the same moment: replay without waiting
        lines = [
            line.replace(f'"t": {json.loads(line)["t"]}', '"t": 1764000000.0') for line in lines
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def test_scan_lists_every_sensor_with_values(tmp_path: Path) -> None:
    path = tmp_path / "site.jsonl"
    simulated_capture(path, 30)
    clock = FakeClock()
    hub = ScannerHub(lambda: ReplaySource(path, sleep=clock.sleep), clock=clock, sleep=clock.sleep)
    first_seen: list[str] = []
    recorded = io.StringIO()
    writer = CaptureWriter(recorded)
    heard = await scan(hub, 3600, {ENCRYPTED.address: DEMO_BINDKEY},
                       lambda h: first_seen.append(h.address), writer)  # fmt: skip
    assert sorted(first_seen) == sorted(s.address for s in DEMO_SENSORS)
    assert writer.written == sum(h.adverts for h in heard.values())
    replayed = [from_line(line) for line in recorded.getvalue().splitlines()]
    assert {a.address for a in replayed} == set(first_seen)
    for spec in DEMO_SENSORS:
        h = heard[spec.address]
        assert h.formats[0] == ("bthome" if spec.kind == "bthome" else spec.kind)
        assert "temperature" in h.values, spec
    assert heard[ENCRYPTED.address].encrypted
    out = io.StringIO()
    report_text(heard, 30, out)
    text = out.getvalue()
    assert "5 address(es) heard in 30 s, 5 in a known format" in text
    assert f'address = "{ENCRYPTED.address}"' in text and "bindkey_file" in text
    assert 'format = "ruuvi"' in text and 'format = "atc"' in text


def test_cli_scan_ble_from_a_replayed_capture(tmp_path: Path) -> None:
    capture = tmp_path / "site.jsonl"
    simulated_capture(capture, 20, flatten=True)
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "gw-test"\n\n[ble]\nreplay = "site.jsonl"\n\n'
        f'[[device]]\nid = "env-enc"\ndriver = "ble"\naddress = "{ENCRYPTED.address}"\n'
        f'bindkey = "{DEMO_BINDKEY.hex()}"\n',
        encoding="utf-8",
    )
    record = tmp_path / "recorded.jsonl"
    result = run_cli("scan", "ble", "-c", str(config), "--seconds", "30", "--record", str(record))
    assert result.returncode == 0, result.stderr
    assert "listening on capture" in result.stderr
    for spec in DEMO_SENSORS:
        assert spec.address in result.stdout
    assert "temperature=" in result.stdout and "[[device]]" in result.stdout
    assert "encrypted (" not in result.stdout  # the configured bindkey decrypts it
    assert len(record.read_text().splitlines()) == len(capture.read_text().splitlines())

    as_json = run_cli("scan", "ble", "-c", str(config), "--seconds", "30", "--json")
    assert as_json.returncode == 0, as_json.stderr
    items = json.loads(as_json.stdout)
    assert {i["address"] for i in items} == {s.address for s in DEMO_SENSORS}
    assert all(i["snippet"].startswith("[[device]]") for i in items)


def test_cli_scan_ble_without_a_radio_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("scan", "ble", "-c", str(tmp_path / "none.toml"), "--seconds", "1",
                     "--adapter", "hci9")  # fmt: skip
    assert result.returncode == 1
    assert "BLE adapter hci9 (passive): scanner failed:" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_scan_ble_usage(tmp_path: Path) -> None:
    result = run_cli("scan", "ble", "-c", str(tmp_path / "none.toml"), "--seconds", "0")
    assert result.returncode == 2 and "--seconds" in result.stderr
