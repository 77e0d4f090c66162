"""Issue 3.5 and 3.10: a full buffer drops by ``when_full``, counts every drop, logs once.

`citygate run` with two counting devices (each takes exactly ``LIMIT`` samples) and the broker
down fills a 64 KiB buffer; then the broker comes up and the agent, its devices disabled,
drains the buffer. What the subscriber received must be exactly the newest samples
(``drop_oldest``) or the oldest (``drop_newest``), and the samples that never arrived must be
what ``dropped_samples`` says in the metrics and in ``citygate status --json``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.store_harness import (
    Ledger,
    counting_devices,
    last_metrics,
    plugin_env,
    status,
    write_config,
)
from tests.support.broker import Mosquitto, Subscriber, free_port
from tests.support.processes import AgentProcess

LIMIT = 400  # samples per device
DEVICES = 2
MAX_SIZE = 64 * 1024


@pytest.mark.parametrize("when_full", ["drop_oldest", "drop_newest"])
def test_full_buffer_drops_by_when_full_and_counts_every_drop(
    tmp_path: Path, when_full: str
) -> None:
    env = plugin_env(tmp_path)
    port = free_port()  # nothing listens there yet: the broker is down
    settings = {"max_size": "64KiB", "when_full": when_full}
    config = write_config(
        tmp_path / "gateway.toml",
        broker_port=port,
        data_dir=tmp_path / "var",
        devices=counting_devices(DEVICES, interval="5ms", limit=LIMIT, values=20),
        buffer=settings,
    )
    taken = DEVICES * LIMIT

    agent = AgentProcess(config, env, metrics_interval=0.2)
    try:
        agent.wait_for_log("running")
        agent.wait_for_log("buffer full", timeout=60)
        # Every sample taken is either buffered or counted as dropped; status works meanwhile.
        deadline_report: dict[str, object] = {}
        for _ in range(600):
            report = status(config, env)
            deadline_report = report
            if report["backlog_samples"] + report["dropped_samples"] == taken:
                break
        else:
            raise AssertionError(f"samples unaccounted for: {deadline_report}")
        assert 0 < report["backlog_bytes"] <= MAX_SIZE
        assert report["dropped_samples"] > taken / 2  # the buffer holds well under half of them
        assert report["oldest_unsent_age_s"] is not None
        assert report["oldest_unsent_age_s"] >= 0
        for device in ("meter-1", "meter-2"):
            assert report["devices"][device]["state"] == "online"
            assert report["devices"][device]["last_sample"] is not None
    finally:
        assert agent.stop() == 0, agent.log
    assert "Traceback" not in agent.log
    episode_lines = [line for line in agent.lines if "buffer full" in line]
    assert len(episode_lines) == 1, agent.log  # once per episode, not per sample
    backlog = report["backlog_samples"]
    dropped = report["dropped_samples"]

    # The broker comes up; the agent only drains (devices disabled: nothing new is taken).
    broker = Mosquitto(tmp_path / "mosquitto", port=port)
    broker.start()
    sub = Subscriber(port).start()
    write_config(
        config,
        broker_port=port,
        data_dir=tmp_path / "var",
        devices=counting_devices(DEVICES, interval="5ms", limit=LIMIT, values=20, enabled=False),
        buffer=settings,
    )
    drainer = AgentProcess(config, env, metrics_interval=0.2)
    try:
        sub.wait_for(lambda: len(Ledger(sub).by_seq) >= backlog, timeout=60)
        sub.wait_for(
            lambda: any(b'"backlog_samples":0,' in m.payload for m in sub.snapshot("/metrics")),
            timeout=30,
        )
    finally:
        assert drainer.stop() == 0, drainer.log
        sub.stop()
        broker.stop()
    assert "Traceback" not in drainer.log

    ledger = Ledger(sub)
    assert ledger.conflicts == []
    seqs = ledger.seqs
    assert len(seqs) == backlog
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # drops never leave holes
    kept_by_device = {d: ledger.counts(d) for d in ("meter-1", "meter-2")}
    for device, counts in kept_by_device.items():
        k = len(counts)
        if when_full == "drop_oldest":
            assert counts == [float(c) for c in range(LIMIT - k + 1, LIMIT + 1)], device
        else:
            assert counts == [float(c) for c in range(1, k + 1)], device
    if when_full == "drop_newest":
        assert seqs[0] == 1  # the oldest were kept: refused samples never got a seq
    else:
        assert seqs[-1] == taken  # every sample got a seq; the newest are the ones kept
    missing = taken - len(seqs)
    assert missing == dropped
    assert last_metrics(sub)["dropped_samples"] == dropped
    after = status(config, env)
    assert after["dropped_samples"] == dropped
    assert after["backlog_samples"] == 0
    assert after["backlog_bytes"] == 0
    assert after["oldest_unsent_age_s"] is None
