"""`citygate run` with a replayed wireless M-Bus receiver → a real Mosquitto; `scan wmbus`."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import BIN, AgentProcess, run_cli

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

    # The technician's first tool: `read` listens on the device's receiver for its telegram.
    read = run_cli("read", "water", "-c", str(config), "--json")
    assert read.returncode == 0, read.stderr
    assert "water: waiting up to 11 s for it to send" in read.stderr
    document = json.loads(read.stdout)
    values = {r["name"]: r["value"] for r in document["readings"]}
    assert values["volume"] == 81.0976
    assert document["meter"]["id"] == "19228217"
    wrong = run_cli("read", "wrong", "-c", str(config))
    assert wrong.returncode != 0
    assert "Traceback" not in wrong.stderr

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


class WmbusSim:
    """`citygate-sim wmbus` in its own process: an iM871A on a pty with three meters."""

    def __init__(self, *extra: str) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "citygate-sim"), "wmbus", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("serial port "):
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.port = line.removeprefix("serial port ").strip()
        self.keys: dict[str, str] = {}
        for _ in range(3):  # "meter 31415926 water T1 every 16 s CGS version 1 key 0123…"
            words = self.process.stdout.readline().split()
            self.keys[words[1]] = words[-1] if words[-2] == "key" else ""

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def test_agent_on_the_im871a_simulator_over_a_pty(tmp_path: Path, broker: Mosquitto) -> None:
    """The driver configures the simulated stick (link mode T1), decrypts the mode 5 water
    meter with its key, reads the plain one, counts the heat meter's telegrams as decode
    errors under a wrong key, and counts the frames the noisy line damaged."""
    sim = WmbusSim("--fast", "16", "--corrupt-rate", "0.2", "--seed", "3")
    encrypted, plain, heat = "31415926", "27182818", "16180339"
    assert sim.keys[encrypted] and not sim.keys[plain] and sim.keys[heat]
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
id = "stick"
port = "{sim.port}"
dongle = "im871a"
mode = "T1"

[[device]]
id = "water-encrypted"
driver = "wmbus"
receiver = "stick"
meter_id = "{encrypted}"
key = "{sim.keys[encrypted]}"
interval = "1s"

[[device]]
id = "water-plain"
driver = "wmbus"
receiver = "stick"
meter_id = "{plain}"
interval = "1s"

[[device]]
id = "heat-wrong-key"
driver = "wmbus"
receiver = "stick"
meter_id = "{heat}"
key = "00112233445566778899AABBCCDDEEFF"
interval = "1s"
"""
    )
    quick = WmbusSim("--fast", "64")  # every meter heard within a short scan
    try:
        text = config.read_text().replace(sim.port, quick.port)
        scan_config = tmp_path / "scan.toml"
        scan_config.write_text(text)
        scanned = run_cli(
            "scan", "wmbus", "--receiver", "stick", "-c", str(scan_config), "--seconds", "6"
        )
    finally:
        quick.stop()
    assert scanned.returncode == 0, scanned.stderr
    assert "3 meter(s) heard" in scanned.stdout, scanned.stdout
    rows = {line.split()[0]: line for line in scanned.stdout.splitlines() if line[:2] == "  "}
    assert "mode 5" in rows[encrypted] and "volume=" in rows[encrypted], scanned.stdout
    assert "plain" in rows[plain] and "heat" in rows[heat], scanned.stdout
    assert f'meter_id = "{heat}"' in scanned.stdout  # a snippet to paste

    sub = Subscriber(broker.port).start()
    agent = AgentProcess(config)
    try:

        def published(device: str) -> list[dict[str, object]]:
            topic = f"city/gw-wm/{device}/data"
            return [r for r in sub.data_records() if r["topic"] == topic]

        sub.wait_for(lambda: published("water-encrypted") and published("water-plain"), timeout=40)
        sub.wait_for(
            lambda: any(
                json.loads(m.payload).get("wmbus", {}).get("decode_errors", 0) >= 1
                and json.loads(m.payload)["wmbus"]["receiver"].get("crc_errors", 0) >= 1
                for m in sub.snapshot("/heat-wrong-key/status")
            ),
            timeout=40,
        )
    finally:
        code = agent.stop()
        sim.stop()
    sub.stop()
    assert code == 0, agent.log
    assert "Traceback" not in agent.log
    for device in ("water-encrypted", "water-plain"):
        names = {r["n"]: r for r in published(device)}
        assert names["volume"]["u"] == "m3" and float(names["volume"]["v"]) > 0, names
        assert -120 < float(names["rssi"]["v"]) < 0
        statuses = [json.loads(m.payload) for m in sub.snapshot(f"/{device}/status")]
        online = [s for s in statuses if s["state"] == "online"]
        assert online and online[-1]["meter"]["medium"] == "water", statuses
    assert not published("heat-wrong-key")
