"""`citygate top`'s pieces: human units, key readings, keys, frames, the live snapshot."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygate import registry
from citygate.config import load
from citygate.livesnap import (
    MAX_READINGS_PER_DEVICE,
    MAX_SNAPSHOT_BYTES,
    SNAPSHOT_FILE,
    WATCH_FILE,
    LiveSnapshot,
    parse_snapshot,
    read_snapshot,
    touch_watch,
)
from citygate.model import Reading, Sample
from citygate.status import StatusBoard
from citygate.top import (
    DeviceRow,
    TopModel,
    TopSource,
    TopState,
    decode_keys,
    format_value,
    human_unit,
    key_readings,
    render_lines,
)

# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (21.5, "Cel", "21.5 °C"),
        (290.372, "m3", "290.372 m³"),
        (0.071, "m3/h", "0.071 m³/h"),
        (52.72, "%RH", "52.72 %"),
        (0.924904, "/", "0.924904"),  # a power factor: a plain number, not "0.924904 /"
        (12.0, "ug/m3", "12 µg/m³"),
        (9.81, "m/s2", "9.81 m/s²"),
        (-22.36, "deg", "-22.36 °"),
        (3, "count", "3"),
        (230.1, "V", "230.1 V"),
        (1.5, "K", "1.5 K"),  # a temperature difference stays kelvin
        (True, None, "true"),
        ("2026-12-03", None, "2026-12-03"),
        (27911.234567, "kWh", "27911.2 kWh"),
    ],
)
def test_values_are_shown_with_human_units(value: Any, unit: str | None, shown: str) -> None:
    assert format_value(value, unit) == shown


def test_unknown_units_are_shown_as_they_are() -> None:
    assert human_unit("lx") == "lx"
    assert human_unit(None) == ""


def _readings(*names: str) -> list[tuple[str, Any, str | None]]:
    return [(n, float(i), "W") for i, n in enumerate(names)]


def test_key_readings_per_driver() -> None:
    meter = _readings("voltage_l1", "current_l1", "active_power", "voltage_avg", "energy_import")
    assert [r[0] for r in key_readings("modbus", meter)] == [
        "active_power",
        "energy_import",
        "voltage_avg",
    ]
    water = _readings("meter_status", "volume", "volume_flow", "flow_temperature")
    assert [r[0] for r in key_readings("mbus", water)][:2] == ["volume", "volume_flow"]
    sensor = _readings("battery", "temperature", "humidity", "rssi")
    assert [r[0] for r in key_readings("ble", sensor)] == ["temperature", "humidity", "battery"]
    # An unknown driver, or too few known names: the first readings fill in.
    assert [r[0] for r in key_readings("plugin", sensor)] == ["battery", "temperature", "humidity"]
    assert [r[0] for r in key_readings("modbus", _readings("a", "energy"))] == ["energy", "a"]
    assert key_readings("ble", []) == []


# ---------------------------------------------------------------------------- keys


def test_keys_from_the_terminal() -> None:
    assert decode_keys(b"\x1b[A\x1b[B\x1b[C\x1b[D") == ["up", "down", "right", "left"]
    assert decode_keys(b"\x1bOA\x1bOB") == ["up", "down"]  # application cursor mode
    assert decode_keys(b"\x1b[5~\x1b[6~\r\nq") == ["pgup", "pgdn", "enter", "enter", "q"]
    assert decode_keys(b"\x1b") == ["esc"]
    assert decode_keys(b"\x1b\x1b[A") == ["esc", "up"]
    # Unknown sequences and bytes are ignored, whole: nothing of them leaks as keys.
    assert decode_keys(b"\x1b[1;5A\x1b[200~x\x00\xff") == []
    assert decode_keys(b"\x1b[") == []  # cut short
    assert decode_keys(bytes(range(256)) * 4)  # anything: no exception


# ---------------------------------------------------------------------------- frames


def _model(devices: int, *, live: bool = True) -> TopModel:
    rows = tuple(
        DeviceRow(
            f"meter-{i:03d}-with-a-long-name",
            "modbus",
            "offline" if i == 3 else "online",
            "timed out" if i == 3 else None,
            i,
            time.time() - i,
            tuple(
                (name, 100.0 + j, unit)
                for j, (name, unit) in enumerate(
                    [("active_power", "W"), ("energy_import", "kWh"), ("power_factor", "/")] * 30
                )
            ),
        )
        for i in range(devices)
    )
    return TopModel(
        "gw-1",
        "running" if live else "agent not running (no live data)",
        live,
        True if live else None,
        "mqtt://broker:1883",
        5,
        6000,
        12.0,
        0,
        0,
        rows,
    )


def test_a_frame_fits_80_by_24_and_scrolls_to_the_selection() -> None:
    model = _model(40)
    state = TopState()
    lines = render_lines(model, state, 80, 24, time.time())
    assert len(lines) == 24
    assert all(len(line.plain) <= 80 for line in lines)
    text = "\n".join(line.plain for line in lines)
    assert "gw-1" in text and "connected" in text and "5 samples" in text
    assert "meter-000" in text and "meter-039" not in text
    assert "1-19 of 40" in text
    for key in ["pgdn", "pgdn", "end"]:
        assert state.key(key, model)
    text = "\n".join(line.plain for line in render_lines(model, state, 80, 24, time.time()))
    assert "meter-039" in text and "meter-000" not in text
    assert not state.key("q", model)


def test_enter_shows_every_reading_and_esc_goes_back() -> None:
    model = _model(5)
    state = TopState()
    state.key("down", model)
    state.key("enter", model)
    lines = render_lines(model, state, 80, 24, time.time())
    text = "\n".join(line.plain for line in lines)
    assert "meter-001-with-a-long-name (modbus)" in text
    assert "energy_import" in text and "kWh" in text
    assert " /" not in text  # the power factor has no unit shown
    assert len(lines) == 24 and all(len(line.plain) <= 80 for line in lines)
    state.key("pgdn", model)
    assert state.detail_offset > 0
    state.key("esc", model)
    text = "\n".join(line.plain for line in render_lines(model, state, 80, 24, time.time()))
    assert "KEY READINGS" in text


def test_without_live_data_the_header_says_so() -> None:
    model = _model(2, live=False)
    text = "\n".join(line.plain for line in render_lines(model, TopState(), 80, 24, time.time()))
    assert "agent not running" in text
    assert "100 W" not in text  # no readings shown from a dead agent


# ---------------------------------------------------------------------------- snapshot


def _snapshotter(data_dir: Path, board: StatusBoard) -> LiveSnapshot:
    async def facts() -> dict[str, Any]:
        return {
            "gateway": "gw-1",
            "connected": True,
            "broker": "mqtt://b",
            "backlog": {"samples": 1, "bytes": 2, "oldest_unsent_age_s": 0.5, "dropped": 0},
            "refused": 0,
        }

    return LiveSnapshot(data_dir, board, facts, lambda: dict.fromkeys(board.devices, "modbus"))


async def test_the_agent_writes_only_while_someone_watches(tmp_path: Path) -> None:
    board = StatusBoard(["m1"])
    live = _snapshotter(tmp_path, board)
    live.note(Sample("m1", time.time(), (Reading("active_power", "W", 12.5),)))
    assert not await live.write_once()
    assert sorted(os.listdir(tmp_path)) == []  # nobody watches: no file at all

    touch_watch(tmp_path)
    assert await live.write_once()
    snapshot, why = read_snapshot(tmp_path)
    assert why is None and snapshot is not None
    assert snapshot.gateway == "gw-1" and snapshot.connected
    assert snapshot.devices[0].readings == (("active_power", 12.5, "W"),)

    old = time.time() - 60  # the viewer left a minute ago
    os.utime(tmp_path / WATCH_FILE, (old, old))
    before = (tmp_path / SNAPSHOT_FILE).stat().st_mtime_ns
    assert not await live.write_once()
    assert (tmp_path / SNAPSHOT_FILE).stat().st_mtime_ns == before
    assert live.written == 1


async def test_the_snapshot_is_bounded(tmp_path: Path) -> None:
    ids = [f"d{i}" for i in range(300)]
    board = StatusBoard(ids)
    live = _snapshotter(tmp_path, board)
    for device_id in ids:
        readings = tuple(Reading(f"r{j}", None, "x" * 500) for j in range(400))
        live.note(Sample(device_id, time.time(), readings))
    touch_watch(tmp_path)
    assert await live.write_once()
    assert (tmp_path / SNAPSHOT_FILE).stat().st_size <= MAX_SNAPSHOT_BYTES
    snapshot, _ = read_snapshot(tmp_path)
    assert snapshot is not None
    first = snapshot.devices[0]
    assert len(first.readings) <= MAX_READINGS_PER_DEVICE
    assert first.more == 400 - len(first.readings)
    assert all(len(str(value)) <= 80 for _, value, _ in first.readings)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff garbage",
        b"[]",
        b'{"format": "citygate-top/1"}',
        b"[" * 100_000,
        b'{"format": "citygate-top/1", "written": NaN}',
        json.dumps({"format": "other"}).encode(),
        b" " * (MAX_SNAPSHOT_BYTES + 1),
    ],
)
def test_a_garbled_snapshot_reads_as_none(data: bytes) -> None:
    assert parse_snapshot(data) is None


def _valid_doc() -> dict[str, Any]:
    return {
        "format": "citygate-top/1",
        "written": 1.0,
        "pid": 1,
        "gateway": "g",
        "connected": False,
        "broker": "b",
        "backlog": None,
        "refused": 0,
        "devices": [
            {
                "id": "d",
                "driver": "ble",
                "state": "online",
                "error": None,
                "errors_total": 0,
                "last_sample": None,
                "readings": [["t", 1.5, "Cel"]],
                "more": 0,
            }
        ],
    }


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from(
        ["written", "pid", "gateway", "connected", "devices", "backlog", "readings", "reading"]
    ),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=8,
    ),
)
def test_any_field_garbled_reads_as_none_or_a_snapshot(path: str, value: Any) -> None:
    doc = _valid_doc()
    device = doc["devices"][0]
    if path == "readings":
        device["readings"] = value
    elif path == "reading":
        device["readings"] = [value]
    else:
        doc[path] = value
    try:
        data = json.dumps(doc).encode()
    except ValueError:
        return
    parse_snapshot(data)  # never raises


def test_a_symlinked_snapshot_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(_valid_doc()))
    (tmp_path / SNAPSHOT_FILE).symlink_to(target)
    assert read_snapshot(tmp_path) == (None, "unreadable")
    (tmp_path / WATCH_FILE).symlink_to(tmp_path / "victim")
    touch_watch(tmp_path)  # the link's own time, never its target created or touched
    assert not (tmp_path / "victim").exists()


# ---------------------------------------------------------------------------- source


def _config(tmp_path: Path) -> Any:
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
id = "gw-t"
data_dir = "{tmp_path / "var"}"

[[device]]
id = "m1"
driver = "modbus"
host = "127.0.0.1"
port = 5020
unit = 1
profile = "eastron-sdm120"
"""
    )
    (tmp_path / "var").mkdir(mode=0o700)
    return load(path, registry.factories())


def test_top_keeps_running_on_a_garbled_or_stale_snapshot(tmp_path: Path) -> None:
    config = _config(tmp_path)
    now = [1000.0]
    source = TopSource(config, clock=lambda: now[0])
    (tmp_path / "var" / SNAPSHOT_FILE).write_bytes(b'{"format": "citygate-top/1", "devi')
    model = source.gather()
    assert model is not None and not model.live
    assert "no live data" in model.agent
    assert [d.id for d in model.devices] == ["m1"]  # from the config, state unknown (no buffer)
    assert (tmp_path / "var" / WATCH_FILE).exists()

    doc = _valid_doc()
    doc["written"] = now[0] - 60
    (tmp_path / "var" / SNAPSHOT_FILE).write_text(json.dumps(doc))
    now[0] += 10
    model = source.gather()
    assert model is not None and model.agent.startswith("agent not running")

    doc["written"] = now[0] - 0.5
    (tmp_path / "var" / SNAPSHOT_FILE).write_text(json.dumps(doc))
    model = source.gather()
    assert model is not None and model.live and model.devices[0].readings == (("t", 1.5, "Cel"),)
