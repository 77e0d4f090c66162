"""The record of the gateway's retained topics (agent/mqtt/retained.py): what a new topic prefix
must clear, kept across restarts, and a hostile or foreign record ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citygate.mqtt import retained
from citygate.mqtt.retained import MAX_FILE_BYTES, MAX_TOPICS, RETAINED_FILE, RetainedRecord


def record(tmp_path: Path, base: str, gateway: str = "gw-1") -> RetainedRecord:
    return RetainedRecord(tmp_path, base, gateway)


def saved(tmp_path: Path) -> dict[str, object]:
    document = json.loads((tmp_path / RETAINED_FILE).read_text())
    assert isinstance(document, dict)
    return document


def test_first_start_clears_nothing_and_remembers_the_base(tmp_path: Path) -> None:
    r = record(tmp_path, "city/gw-1")
    assert r.to_clear == []
    r.status_published("meter-a")
    r.status_published("meter-a")
    r.status_published("meter-b")
    assert saved(tmp_path) == {
        "gateway": "gw-1",
        "base": "city/gw-1",
        "devices": ["meter-a", "meter-b"],
        "clear": [],
    }
    assert record(tmp_path, "city/gw-1").to_clear == []  # same base again: nothing


def test_a_new_prefix_clears_status_info_and_each_device_status(tmp_path: Path) -> None:
    old = record(tmp_path, "city/gw-1")
    old.status_published("meter-a")
    old.status_published("meter-b")
    new = record(tmp_path, "town/north/gw-1")
    assert new.to_clear == [
        "city/gw-1/status",
        "city/gw-1/info",
        "city/gw-1/meter-a/status",
        "city/gw-1/meter-b/status",
    ]
    assert saved(tmp_path)["base"] == "town/north/gw-1"
    assert saved(tmp_path)["devices"] == []


def test_a_clear_cut_short_goes_on_after_a_restart(tmp_path: Path) -> None:
    old = record(tmp_path, "city/gw-1")
    old.status_published("meter-a")
    new = record(tmp_path, "town/gw-1")
    new.cleared("city/gw-1/status")
    new.cleared("not/a/topic/it/had")  # ignored
    assert record(tmp_path, "town/gw-1").to_clear == ["city/gw-1/info", "city/gw-1/meter-a/status"]


def test_back_to_a_prefix_before_its_clear_finished(tmp_path: Path) -> None:
    """city → town (nothing cleared yet) → city: city's topics are in use again, town's go."""
    a = record(tmp_path, "city/gw-1")
    a.status_published("meter-a")
    b = record(tmp_path, "town/gw-1")
    b.status_published("meter-a")
    assert record(tmp_path, "city/gw-1").to_clear == [
        "town/gw-1/status",
        "town/gw-1/info",
        "town/gw-1/meter-a/status",
    ]


def test_another_gateways_record_is_left_alone(tmp_path: Path) -> None:
    """A data_dir copied with an SD-card image: the original gateway's topics are not ours."""
    other = record(tmp_path, "city/gw-original", gateway="gw-original")
    other.status_published("meter-a")
    mine = record(tmp_path, "city/gw-copy", gateway="gw-copy")
    assert mine.to_clear == []
    assert saved(tmp_path)["gateway"] == "gw-copy"


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"gw-1"',
        json.dumps({"gateway": "gw-1", "base": 5, "devices": "x", "clear": {}}).encode(),
        json.dumps({"gateway": "gw-1", "base": "city/+", "devices": ["a"]}).encode(),
        json.dumps({"gateway": "gw-1", "base": "#", "devices": ["a"]}).encode(),
        b" " * (MAX_FILE_BYTES + 1),
    ],
)
def test_a_damaged_record_clears_nothing(tmp_path: Path, content: bytes) -> None:
    (tmp_path / RETAINED_FILE).write_bytes(content)
    r = record(tmp_path, "city/gw-1")
    assert r.to_clear == []
    assert saved(tmp_path)["base"] == "city/gw-1"  # started afresh


def test_a_hostile_record_cannot_clear_other_topics(tmp_path: Path) -> None:
    """Only this gateway's status, info and device statuses; no wildcard, no other gateway."""
    (tmp_path / RETAINED_FILE).write_text(
        json.dumps(
            {
                "gateway": "gw-1",
                "base": "old/gw-1",
                "devices": ["ok", "a/b", "+", "#", "", 5, "x\u0000"],
                "clear": [
                    "city/gw-2/status",
                    "city/#",
                    "city/gw-1/+/status",
                    "gw-1/status",
                    "city/gw-1/data",
                    "city/gw-1/meter/status",
                    7,
                ],
            }
        )
    )
    r = record(tmp_path, "new/gw-1")
    assert r.to_clear == [
        "city/gw-1/meter/status",
        "old/gw-1/status",
        "old/gw-1/info",
        "old/gw-1/ok/status",
    ]


def test_the_record_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [f"m{i}" for i in range(MAX_TOPICS + 50)]
    (tmp_path / RETAINED_FILE).write_text(
        json.dumps({"gateway": "gw-1", "base": "old/gw-1", "devices": devices, "clear": []})
    )
    assert len(record(tmp_path, "new/gw-1").to_clear) == MAX_TOPICS
    monkeypatch.setattr(retained, "MAX_TOPICS", 30)  # the same bound, fewer writes to wait for
    same = record(tmp_path, "new/gw-1")
    for device_id in devices[:100]:
        same.status_published(device_id)
    assert len(saved(tmp_path)["devices"]) == 30  # type: ignore[arg-type]


def test_an_unwritable_data_dir_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = record(tmp_path / "missing", "city/gw-1")
    r.status_published("meter-a")
    assert r.to_clear == []
    assert "cannot write" in caplog.text
