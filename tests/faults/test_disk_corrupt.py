"""Issue 3.6, a corrupt or foreign buffer file at start, end to end with `citygate run`.

The file is moved aside with one clear log line, the agent starts with a fresh buffer (no
crash loop: it runs, publishes and stops cleanly), and seq continues above every seq the old
file handed out.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.faults.store_harness import Ledger, counting_devices, plugin_env, status, write_config
from tests.support.broker import Mosquitto, Subscriber, free_port
from tests.support.processes import AgentProcess

LIMIT = 50


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, it is what a failing SD card returned" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _foreign_database(path: Path) -> None:
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE readings (t REAL, v REAL)")
    db.commit()
    db.close()


def _torn_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(page, len(data), 2 * page):  # every other page after the header
        data[offset : offset + page] = b"\xff" * page
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_garbage, "not an SQLite database"),
        (_foreign_database, "not a citygate buffer"),
        (_torn_pages, ""),
    ],
)
def test_a_corrupt_buffer_is_moved_aside_and_the_agent_starts_fresh_above_the_old_seqs(
    tmp_path: Path, damage: object, reason: str
) -> None:
    env = plugin_env(tmp_path)
    port = free_port()
    data_dir = tmp_path / "var"
    devices = counting_devices(2, interval="5ms", limit=LIMIT)
    config = write_config(
        tmp_path / "gateway.toml", broker_port=port, data_dir=data_dir, devices=devices
    )
    first = AgentProcess(config, env)  # the broker is down: everything stays buffered
    try:
        first.wait_for_log("running")
        for _ in range(300):
            if status(config, env)["backlog_samples"] == 2 * LIMIT:
                break
        else:
            raise AssertionError(first.log)
    finally:
        assert first.stop() == 0, first.log
    db = data_dir / "buffer.sqlite3"
    assert callable(damage)
    damage(db)
    damaged = db.read_bytes()

    broker = Mosquitto(tmp_path / "mosquitto", port=port)
    broker.start()
    sub = Subscriber(port).start()
    agent = AgentProcess(config, env)
    try:
        agent.wait_for_log("running")
        sub.wait_for(lambda: len(Ledger(sub).by_seq) >= 2 * LIMIT, timeout=30)
    finally:
        code = agent.stop()
        sub.stop()
        broker.stop()
    assert code == 0, agent.log
    assert "Traceback" not in agent.log
    moved = [line for line in agent.lines if "moved it aside" in line]
    assert len(moved) == 1, agent.log
    assert reason in moved[0]
    (aside,) = data_dir.glob("buffer.sqlite3.corrupt-*[!lm]")  # not its -wal/-shm
    assert aside.name in moved[0]
    assert aside.read_bytes() == damaged
    ledger = Ledger(sub)
    assert ledger.conflicts == []
    # The old file handed out 1..2*LIMIT (then lost); the fresh buffer continues above them.
    assert ledger.seqs == list(range(2 * LIMIT + 1, 4 * LIMIT + 1))
    assert ledger.counts("meter-1") == [float(c) for c in range(1, LIMIT + 1)]
