"""Issue 13 point 4: bytes per reading on the wire, SenML JSON and CBOR.

`citygate run` polls simulated meters (float32 registers with 4-character quantity names and a
meter's mix of units, as in the peers' comparison) into a real Mosquitto through a loopback
proxy that records every PUBLISH packet the agent sends: its whole size on the wire (fixed
header, topic or topic alias, packet id, properties, payload), divided by the readings it
carries.

"Before" is the same data in the format the agent sent until issue 13: every record with its
``u``, values as the float64 expansion of the float32 (``196.60000610351562``), the full topic
in every message, no properties.
It is rebuilt from the received readings, so both figures describe the very same samples.

Two configs: baseline (2 meters × 20 values every 0.1 s: 400 readings/s, the light-load run)
and load (20 meters × 100 values every 0.1 s: 20,000 readings/s); each with three kinds of
register values: *one decimal* (``generic<N>d1``: registers hold the float32 of 196.6, as a
meter of 0.1 resolution or a simulator set by hand — the issue's example and the peers' data),
*two decimals* (``generic<N>d2``: 230.47) and *full precision* (``generic<N>``: a random walk's
every float32 bit, the worst case for a text encoding).

The verdict is the issue's, on the issue's data (one decimal): JSON at least 30 %, CBOR at least
60 % fewer bytes per reading than the format before issue 13 on the same samples. The other two
are printed without a target, for sizing a metered link: a value's digits are what it costs,
and a full-precision float32 needs up to nine of them in JSON and a decimal fraction of eight
bytes in CBOR (a CBOR single float would take five, but it would not give back the double the
JSON text gives, which RFC 8428 §6 asks of a CBOR pack). How the figures compare with the
37.5 B the peers' harness measured, and with ThingsBoard's 20.7 B, is in each line's note.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import cbor2

from citygate.mqtt.data import CONTENT_TYPES
from citygate.senml import resolve
from tests.bench import rig
from tests.bench.procs import scratch
from tests.bench.report import PartResult
from tests.support.broker import Mosquitto
from tests.support.mqtt_wire import resolve_topics
from tests.support.processes import SimProcess
from tests.support.proxy import Proxy

BEFORE_JSON_B = 37.5  # issue 13: what the peers' comparison measured for citygate
THINGSBOARD_B = 20.7  # and for ThingsBoard's gateway
FEWER_TARGET_PCT = {"json": 30.0, "cbor": 60.0}
# (label, simulator model suffix, judged against the targets)
DATA_SETS = (
    ("one-decimal", "d1", True),
    ("two-decimal", "d2", False),
    ("full-precision", "", False),
)
UNITS = ("V", "A", "W", "var", "VA", "Hz", "Wh", "/")  # a three-phase meter's mix


def profile(path: Path, values: int) -> Path:
    """``values`` float32 input registers from 0, named ``q000``…, in groups of three of one
    unit (L1, L2, L3 as a three-phase meter lists them: V, A, W, var, VA, Hz, Wh, power factor)."""
    lines = [
        "[profile]",
        f'name = "bench-wire{values}"',
        'manufacturer = "citygate-sim"',
        f'model = "generic{values}"',
        f'description = "{values} float32 input registers, 4-character names"',
        'source = "citygate_sim GenericMeter"',
        "",
    ]
    for i in range(values):
        lines += [
            "[[registers]]",
            f'name = "q{i:03d}"',
            f"address = {2 * i}",
            'table = "input"',
            'type = "float32"',
            f'unit = "{UNITS[(i // 3) % len(UNITS)]}"',  # per phase: L1, L2, L3
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def publish_size(topic: str, payload_len: int, content_type: str | None) -> int:
    """Bytes of a QoS 1 MQTT 5 PUBLISH (a content type, or no property)."""
    properties = 0 if content_type is None else 1 + 2 + len(content_type.encode())
    variable = 2 + len(topic.encode()) + 2 + _varint_len(properties) + properties
    remaining = variable + payload_len
    return 1 + _varint_len(remaining) + remaining


def _old_pack(records: list[dict[str, object]], base_name: str) -> bytes:
    """The pack as the agent wrote it before issue 13 (see the module docstring)."""
    out: list[str] = []
    for i, r in enumerate(records):
        head = ""
        if "bt" in r:
            head = ("" if i else f'"bn":{json.dumps(base_name)},') + (
                f'"bt":{r["bt"]:.3f},"seq":{r["seq"]},'
            )
        value = float(r["v"])  # type: ignore[arg-type]
        widened = struct.unpack("<f", struct.pack("<f", value))[0]
        name = str(r["n"]).rsplit("/", 1)[-1]
        out.append(f'{{{head}"n":{json.dumps(name)},"u":{json.dumps(r["u"])},"v":{widened!r}}}')
    return ("[" + ",".join(out) + "]").encode()


def wire_figures(packets: list[tuple[int, bytes]], skip: int = 0) -> tuple[float, float, int, int]:
    """Bytes per reading on the wire now and in the format before issue 13, the readings and
    the data messages, of the PUBLISH packets a proxy recorded (connection, packet) from index
    ``skip`` on (the packets before it only set topic aliases)."""
    now = before = readings = messages = 0
    for topic, publish in resolve_topics(packets)[skip:]:
        if publish.content_type not in CONTENT_TYPES.values():
            continue  # status, info, metrics
        raw = publish.payload
        cbor = publish.content_type == "application/senml+cbor"
        pack = cbor2.loads(raw) if cbor else json.loads(raw)
        records = resolve(pack)
        for i, r in enumerate(pack):
            if -3 in r or "bt" in r:
                records[i]["bt"] = records[i]["t"]
        base_name = str(records[0]["n"]).rsplit("/", 1)[0] + "/"
        readings += len(records)
        messages += 1
        now += publish.size
        before += publish_size(topic, len(_old_pack(records, base_name)), None)
    return now / max(1, readings), before / max(1, readings), readings, messages


def run(quick: bool) -> PartResult:
    result = PartResult("wire")
    window_s = 3.0 if quick else 8.0
    with scratch("wire") as workdir:
        broker = Mosquitto(workdir / "mosquitto")
        broker.start()
        proxy = Proxy(broker.port, record_publishes=True).start()
        sims: list[SimProcess] = []
        try:
            for data_label, suffix, judged in DATA_SETS:
                sim = SimProcess(
                    dict.fromkeys(range(1, rig.METERS + 1), f"generic{rig.VALUES}{suffix}")
                )
                sims.append(sim)
                for label, meters, values in (
                    ("baseline 400 readings/s", 2, 20),
                    ("load 20,000 readings/s", rig.METERS, rig.VALUES),
                ):
                    wire_profile = profile(workdir / f"wire{values}.toml", values)
                    for encoding in ("json", "cbor"):
                        name = f"{encoding}-{meters}x{values}{suffix}"
                        config = rig.gateway_config(
                            workdir / f"{name}.toml",
                            broker_port=proxy.port,
                            sim_port=sim.port,
                            data_dir=workdir / name,
                            profile=wire_profile,
                            meters=meters,
                        )
                        text = config.read_text().replace(
                            "[mqtt]\n", f'[mqtt]\nencoding = "{encoding}"\n', 1
                        )
                        config.write_text(text)
                        spawned = rig.spawn_agent(config)
                        try:
                            time.sleep(1.5)  # warm up: connected, polling
                            start = len(proxy.publishes)
                            time.sleep(window_s)
                            # each run's own connection: the aliases it set count in full
                            run_packets = proxy.publishes[start:]
                            first = proxy.publishes[:start]
                            connection = run_packets[0][0] if run_packets else 0
                            setup = [p for p in first if p[0] == connection]
                            per_reading, before, readings, messages = wire_figures(
                                setup + run_packets, skip=len(setup)
                            )
                        finally:
                            rig.stop_agent(spawned)
                        time.sleep(0.5)
                        fewer = 100 * (1 - per_reading / before) if before else 0.0
                        note = (
                            f"{per_reading:.1f} B per reading now, {before:.1f} B for the same "
                            f"samples in the format before issue 13; {readings:,} readings in "
                            f"{messages:,} messages (the peers' harness: {BEFORE_JSON_B} B "
                            f"before, ThingsBoard {THINGSBOARD_B} B)"
                        )
                        result.add(
                            f"fewer bytes per reading on the wire, {encoding.upper()}, {label}, "
                            f"{data_label} values",
                            round(fewer, 1),
                            "%",
                            at_least=FEWER_TARGET_PCT[encoding] if judged else None,
                            note=note if judged else "no target (not the issue's data); " + note,
                        )
                        result.details[name] = {
                            "bytes_per_reading": per_reading,
                            "before_bytes_per_reading": before,
                            "fewer_percent": fewer,
                            "readings": readings,
                            "messages": messages,
                        }
        finally:
            proxy.close()
            for sim in sims:
                sim.stop()
            broker.stop()
    return result
