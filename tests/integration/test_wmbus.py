"""`citygate run` with a replayed wireless M-Bus receiver → a real Mosquitto; `scan wmbus`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import AgentProcess, run_cli

TELEGRAMS = Path(__file__).parents[1] / "drivers" / "wmbus" / "telegrams"


def vector(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((TELEGRAMS / name).read_text())
    return loaded


def test_encrypted_meter_to_senml_wrong_key_counted_unknown_counted(
    tmp_path: Path, broker: Mosquitto
) -> None:
    kaden, other, stranger = (
        vector("kdn-kadenwater-1.json"),
        vector("kdn-kadenwater-2.json"),
        vector("apa-elf-1.json"),
    )
    capture = tmp_path / "air.jsonl"
    capture.write_text(
        "".join(
            json.dumps({"t": 1000.0 + i, "hex": v["hex"], "rssi": -71}) + "\n"
            for i, v in enumerate([kaden, other, stranger])
        )
    )
    key_file = tmp_path / "water.key"
    key_file.write_text(str(kaden["key"]) + "\n")
    key_file.chmod(0o600)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
id = "gw-wm"
data_dir = "{tmp_path / "var"}"

[mqtt]
url = "mqtt://127.0.0.1:{broker.port}"
linger = "50ms"

[[wmbus]]
id = "air"
replay = "{capture}"
replay_loop = true

[[device]]
id = "water"
driver = "wmbus"
receiver = "air"
meter_id = "19228217"
key_file = "{key_file}"
interval = "1s"

[[device]]
id = "wrong"
driver = "wmbus"
receiver = "air"
meter_id = "19227961"
key = "00112233445566778899AABBCCDDEEFF"
interval = "1s"
"""
    )
    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 0, checked.stderr

    scanned = run_cli("scan", "wmbus", "--receiver", "air", "-c", str(config), "--seconds", "5")
    assert scanned.returncode == 0, scanned.stderr
    assert "3 meter(s) heard" in scanned.stdout
    assert 'meter_id = "01885619"' in scanned.stdout  # a snippet for the stranger
    assert "volume=81.0976 m3" in scanned.stdout  # the key of the config decrypts it
    row = next(line for line in scanned.stdout.splitlines() if line.startswith("  19228217"))
    assert "KDN" in row and "water" in row and "mode 5" in row and "-71 dBm" in row

    sub = Subscriber(broker.port).start()
    agent = AgentProcess(config)
    try:
        sub.wait_for(lambda: any(r["topic"] == "city/gw-wm/water/data" for r in sub.data_records()))
        sub.wait_for(
            lambda: any(b'"decode_errors"' in m.payload for m in sub.snapshot("/wrong/status"))
        )
    finally:
        code = agent.stop()
    sub.stop()
    assert code == 0, agent.log
    assert "Traceback" not in agent.log
    assert "wrong key or corrupt telegram" in agent.log
    records = {r["n"]: r for r in sub.data_records() if r["topic"] == "city/gw-wm/water/data"}
    for expected in kaden["expected"]:  # type: ignore[attr-defined]
        name = expected["name"]
        value = records[name].get("v", records[name].get("vs"))
        assert value == expected["value"], name
    assert records["volume"]["u"] == "m3"
    assert records["rssi"]["v"] == -71
    assert not [r for r in sub.data_records() if r["topic"] == "city/gw-wm/wrong/data"]
    water = json.loads(sub.snapshot("/water/status")[-1].payload)
    assert water["meter"] == {
        "id": "19228217",
        "manufacturer": "KDN",
        "version": 1,
        "medium": "water",
    }
    wrong = json.loads(sub.snapshot("/wrong/status")[-1].payload)
    assert wrong["wmbus"]["decode_errors"] >= 1
    assert wrong["wmbus"]["receiver"]["unknown_telegrams"] >= 1  # the stranger: counted
