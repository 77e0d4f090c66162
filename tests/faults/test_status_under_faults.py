"""Issue 3.10: `citygate status` (cli.md) while the agent runs through faults, and after.

The broker is down and one of two devices cannot be opened: status must show the growing
backlog (samples, bytes, oldest unsent age), no drops, the healthy device online with its
last sample, the broken one offline with its error; the same after the agent stopped.
"""

from __future__ import annotations

from pathlib import Path

from tests.faults.store_harness import plugin_env, status, write_config
from tests.support.broker import free_port
from tests.support.processes import AgentProcess, run_cli


def test_status_reports_backlog_and_device_states_while_running_and_after(
    tmp_path: Path,
) -> None:
    env = plugin_env(tmp_path)
    devices: list[dict[str, object]] = [
        {"id": "meter-ok", "driver": "counting", "interval": "10ms"},
        {"id": "meter-broken", "driver": "synthetic", "interval": "10ms", "fail": "open"},
    ]
    config = write_config(
        tmp_path / "gateway.toml",
        broker_port=free_port(),  # the broker is down
        data_dir=tmp_path / "var",
        devices=devices,
    )
    agent = AgentProcess(config, env)
    try:
        agent.wait_for_log("meter-broken: offline after 3 failed polls")
        seen: list[dict[str, object]] = []
        for _ in range(300):
            report = status(config, env)
            seen.append(report)
            if (
                report["backlog_samples"] >= 20
                and report["devices"]["meter-broken"]["state"] == "offline"
            ):
                break
        else:
            raise AssertionError(f"{seen[-1]}\n{agent.log}")
        human = run_cli("status", "-c", str(config), env=env)
    finally:
        assert agent.stop() == 0, agent.log
    assert "Traceback" not in agent.log
    assert sum("meter-broken: offline" in line for line in agent.lines) == 1  # once per event

    backlogs = [int(r["backlog_samples"]) for r in seen]  # type: ignore[call-overload]
    assert backlogs == sorted(backlogs)  # nothing leaves while the broker is down
    assert report["backlog_bytes"] > 0
    age = report["oldest_unsent_age_s"]
    assert isinstance(age, float)
    assert age >= 0
    assert report["dropped_samples"] == 0
    ok, broken = report["devices"]["meter-ok"], report["devices"]["meter-broken"]
    assert ok["state"] == "online"
    assert ok["error"] is None
    assert isinstance(ok["last_sample"], float)
    assert broken == {"state": "offline", "error": "synthetic: cannot open", "last_sample": None}
    assert human.returncode == 0, human.stderr
    assert "backlog" in human.stdout
    assert "meter-broken" in human.stdout
    assert "synthetic: cannot open" in human.stdout

    after = status(config, env)  # the agent has stopped: the buffer and states stay
    assert after["backlog_samples"] >= report["backlog_samples"]
    assert after["devices"]["meter-broken"]["state"] == "offline"
    assert after["devices"]["meter-ok"]["state"] == "online"
