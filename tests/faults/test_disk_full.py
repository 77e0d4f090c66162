"""Issue 3.6, disk full: `citygate run` with its data_dir on a small tmpfs that fills up.

Something else fills the disk (the test writes a ballast file until ENOSPC) while the agent
buffers with the broker down. The agent keeps polling (devices stay online), drops and counts
what does not fit, logs the episode once, and writes again by itself when space returns (the
test deletes the ballast).
Afterwards every sample taken is either received by the broker or counted in
``dropped_samples``: exactly, and the seqs have no gap (a refused sample never gets one).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.store_harness import (
    Ledger,
    counting_devices,
    is_root,
    plugin_env,
    run,
    status,
    write_config,
)
from tests.support.broker import Mosquitto, Subscriber, free_port
from tests.support.processes import AgentProcess

LIMIT = 1500  # samples per device
DEVICES = 2


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, mounted for this test."""
    if not is_root():
        pytest.skip("mounting a small tmpfs needs root (CI runs the suite as root)")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "citygate-test", str(mount_point))
    try:
        yield mount_point
    finally:
        run("umount", "-l", str(mount_point))


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    with path.open("wb", buffering=0) as f:
        for size in (65536, 512):  # then the last few bytes
            with pytest.raises(OSError, match="No space left") as raised:  # noqa: PT012
                while True:
                    f.write(b"\xa5" * size)
            assert raised.value.errno == errno.ENOSPC


def test_full_disk_drops_and_counts_then_recovers_by_itself(
    tmp_path: Path, small_disk: Path
) -> None:
    env = plugin_env(tmp_path)
    data_dir = small_disk / "var"
    ballast = small_disk / "ballast"
    port = free_port()  # the broker is down: everything goes to the buffer
    devices = counting_devices(DEVICES, interval="4ms", limit=LIMIT, values=40)
    config = write_config(
        tmp_path / "gateway.toml", broker_port=port, data_dir=data_dir, devices=devices
    )
    taken = DEVICES * LIMIT

    agent = AgentProcess(config, env)
    try:
        agent.wait_for_log("running")
        for _ in range(100):
            if status(config, env)["backlog_samples"] > 100:
                break
        fill(ballast)
        agent.wait_for_log("disk full", timeout=30)
        during = status(config, env)  # works on a full disk
        assert during["devices"]["meter-1"]["state"] == "online"
        ballast.unlink()  # space returns
        agent.wait_for_log("writing again", timeout=30)
        for _ in range(600):
            report = status(config, env)
            if report["backlog_samples"] + report["dropped_samples"] == taken:
                break
        else:
            raise AssertionError(f"samples unaccounted for: {report}\n{agent.log}")
    finally:
        assert agent.stop() == 0, agent.log
    assert "Traceback" not in agent.log
    assert sum("disk full" in line for line in agent.lines) == 1, agent.log
    assert "buffer full" not in agent.log  # not when_full's doing: one episode, one line
    assert "writing again (disk space is back); " in agent.log
    assert "offline" not in agent.log  # polling went on
    assert 0 < report["dropped_samples"] < taken
    for device in ("meter-1", "meter-2"):
        assert report["devices"][device]["state"] == "online"

    # Everything that was buffered reaches the broker; the rest was counted.
    broker = Mosquitto(tmp_path / "mosquitto", port=port)
    broker.start()
    sub = Subscriber(port).start()
    for entry in devices:
        entry["enabled"] = False
    write_config(config, broker_port=port, data_dir=data_dir, devices=devices)
    drainer = AgentProcess(config, env)
    try:
        sub.wait_for(lambda: len(Ledger(sub).by_seq) >= report["backlog_samples"], timeout=60)
    finally:
        assert drainer.stop() == 0, drainer.log
        sub.stop()
        broker.stop()
    ledger = Ledger(sub)
    assert ledger.conflicts == []
    assert ledger.seqs == list(range(1, len(ledger.seqs) + 1))
    assert len(ledger.seqs) + report["dropped_samples"] == taken
    after = status(config, env)
    assert after["backlog_samples"] == 0
    assert after["dropped_samples"] == report["dropped_samples"]
