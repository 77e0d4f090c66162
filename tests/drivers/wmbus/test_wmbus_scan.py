"""`citygate scan wmbus` on a replayed capture of real telegrams; the sample config is valid."""

from __future__ import annotations

import io
import json
from pathlib import Path

from citygate.config import load
from citygate.drivers.api import WmbusSettings
from citygate.drivers.wmbus.receiver import from_line
from citygate.drivers.wmbus.scan import scan_wmbus
from citygate.registry import factories

TELEGRAMS = Path(__file__).parent / "telegrams"


def vector(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((TELEGRAMS / name).read_text())
    return loaded


async def test_scan_lists_meters_and_records_a_replayable_capture(tmp_path: Path) -> None:
    names = ["kdn-kadenwater-1.json", "apa-elf-1.json", "kdn-kadenwater-1.json", "sen-iperl-1.json"]
    capture = tmp_path / "in.jsonl"
    capture.write_text(
        "".join(json.dumps({"t": 5.0, "hex": vector(n)["hex"], "rssi": -60}) + "\n" for n in names)
        + '{"t": 5, "hex": "0102"}\n'  # unreadable: counted
    )
    out, err = io.StringIO(), io.StringIO()
    record = tmp_path / "out.jsonl"
    status = await scan_wmbus(
        WmbusSettings(id="air", replay=capture),
        seconds=10,
        keys={},
        record=record,
        as_json=True,
        out=out,
        err=err,
    )
    assert status == 0, err.getvalue()
    meters = {m["id"]: m for m in json.loads(out.getvalue())}
    assert set(meters) == {"19228217", "01885619", "12345699"}
    kaden = meters["19228217"]
    assert (kaden["manufacturer"], kaden["medium"], kaden["encrypted"]) == ("KDN", "water", True)
    assert kaden["security_mode"] == 5 and kaden["telegrams"] == 2 and kaden["rssi"] == -60
    assert kaden["values"] == {}  # no key: nothing decrypted
    assert 'key_file = "/etc/citygate/wmbus-keys/19228217.key"' in kaden["snippet"]
    plain = meters["01885619"]
    assert not plain["encrypted"] and plain["values"]  # plain: decoded without a key
    assert "key_file" not in plain["snippet"]
    # The recording is a capture the receiver replays.
    lines = record.read_text().splitlines()
    assert len(lines) == 5
    assert from_line(lines[0]).telegram.data.hex().upper() == vector(names[0])["hex"]


async def test_scan_of_a_missing_port_fails_clearly() -> None:
    out, err = io.StringIO(), io.StringIO()
    settings = WmbusSettings(id="stick", port="/dev/nonexistent-wmbus", dongle="im871a")
    status = await scan_wmbus(
        settings, seconds=5, keys={}, record=None, as_json=False, out=out, err=err
    )
    assert status == 1
    assert "cannot open /dev/nonexistent-wmbus: no such port" in err.getvalue()


def test_sample_toml_is_a_valid_config(tmp_path: Path) -> None:
    sample = Path(__file__).parents[3] / "drivers" / "wmbus" / "sample.toml"
    key = tmp_path / "19228217.key"
    key.write_text(str(vector("kdn-kadenwater-1.json")["key"]))
    key.chmod(0o600)
    text = sample.read_text().replace("/etc/citygate/wmbus-keys/19228217.key", str(key))
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "gw"\ndata_dir = "{tmp_path}"\n[mqtt]\nurl = "mqtt://127.0.0.1"\n' + text
    )
    loaded = load(config, factories())
    assert loaded.wmbus["radio1"].dongle == "im871a"
    assert [d.driver for d in loaded.devices] == ["wmbus", "wmbus"]
