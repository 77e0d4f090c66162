"""The ``config`` remote command end to end (mqtt.md "Commands" → ``config``): `citygate run`
as a subprocess with ``[commands] config = true`` and ``rollback_after = "3s"``, a real
Mosquitto, the Modbus TCP simulator; requests from `citygate cmd` or a paho client.

One agent goes through, in order: refused pushes (bad sha256, a file that does not parse, a new
gateway.id: nothing changes on disk), a valid push (applied, healthy), a push to a broker that
is not there (rolled back, back on the original broker) and a push that turns ``config`` off
(the next push is forbidden). The buffer's seqs stay gapless throughout."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.faults.helpers import buffer_stats
from tests.integration.test_commands import Requester, subscribed
from tests.support.broker import Mosquitto, Subscriber, free_port
from tests.support.processes import AgentProcess, SimProcess, modbus_config, run_cli
from tests.support.wait import wait_until as until

GW = "gw-e2e"
COMMANDS = '[commands]\nenabled = true\nconfig = true\nrollback_after = "3s"\n'


@dataclass
class Rig:
    broker: Mosquitto
    sim: SimProcess
    config: Path
    drafts: Path
    data_dir: Path
    agent: AgentProcess
    data: Subscriber


def meter(device_id: str, port: int, unit: int, interval: str) -> dict[str, object]:
    return {
        "id": device_id,
        "driver": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "unit": unit,
        "profile": "eastron-sdm630" if unit == 1 else "eastron-sdm120",
        "interval": interval,
    }


def draft(
    rig: Rig,
    devices: list[dict[str, object]],
    *,
    broker_port: int | None = None,
    commands: str = COMMANDS,
) -> str:
    """A gateway.toml text (written aside, never over the running config)."""
    path = modbus_config(
        rig.drafts / "draft.toml",
        broker_port=rig.broker.port if broker_port is None else broker_port,
        data_dir=rig.data_dir,
        devices=devices,
        extra=commands,
    )
    return path.read_text()


def push_args(text: str) -> dict[str, Any]:
    return {"toml": text, "sha256": hashlib.sha256(text.encode()).hexdigest()}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("cmd-config")
    (tmp / "drafts").mkdir()
    broker = Mosquitto(tmp / "mosquitto")
    broker.start()
    sim = SimProcess({1: "sdm630", 2: "sdm120"})
    config = modbus_config(
        tmp / "gateway.toml",
        broker_port=broker.port,
        data_dir=tmp / "var",
        devices=[meter("meter-a", sim.port, 1, "500ms")],
        extra=COMMANDS,
    )
    data = Subscriber(broker.port).start()
    agent = AgentProcess(config)
    rig = Rig(broker, sim, config, tmp / "drafts", tmp / "var", agent, data)
    try:
        data.wait_for(lambda: len(_samples(rig, "meter-a")) >= 2, timeout=20)
        until(lambda: subscribed(broker.port), 10, "the agent's subscription")
        yield rig
        assert agent.stop() == 0, agent.log
        # Every seq the buffer gave out reached the broker, through every swap and rollback.
        expected = set(range(1, buffer_stats(rig.data_dir).next_seq))
        with contextlib.suppress(AssertionError):  # the last PUBACKed messages may still travel
            data.wait_for(lambda: expected <= set(data.seqs()), 10)
        missing = sorted(expected - set(data.seqs()))
        assert not missing, f"{len(missing)} samples missing, first {missing[:10]}"
        assert "Traceback" not in agent.log, agent.log
    finally:
        agent.stop()
        data.stop()
        sim.stop()
        broker.stop()


def _samples(rig: Rig, device: str) -> set[int]:
    return {
        int(r["seq"]) for r in rig.data.data_records() if r["topic"].endswith(f"/{device}/data")
    }


def _no_gap(rig: Rig) -> bool:
    seqs = set(rig.data.seqs())
    return seqs == set(range(min(seqs), max(seqs) + 1))


def _send(rig: Rig, request_id: str, args: dict[str, Any], wait: float = 10) -> dict[str, Any]:
    requester = Requester(rig.broker.port)
    try:
        requester.send("config", {"id": request_id, "args": args})
        until(
            lambda: requester.replies_to(request_id),
            wait,
            f"reply to {request_id}",
            explain=lambda: rig.agent.log[-6000:],
        )
        return requester.replies_to(request_id)[0]
    finally:
        requester.stop()


def _leftovers(rig: Rig) -> list[str]:
    return sorted(p.name for p in rig.config.parent.iterdir() if p.name.endswith(".tmp"))


def test_refused_pushes_change_nothing(rig: Rig) -> None:
    before = rig.config.read_bytes()
    good = draft(rig, [meter("meter-a", rig.sim.port, 1, "500ms")])

    # (d) The sha256 of another text.
    args = push_args(good)
    args["sha256"] = hashlib.sha256(b"something else").hexdigest()
    reply = _send(rig, "bad-sha", args)
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
    assert "sha256" in reply["error"]["message"]

    # (b) A file that does not parse, and one with an unknown key: FILE:LINE:COL lines.
    broken = good.replace('interval = "500ms"', 'interval = "soon"').replace(
        "[mqtt]\n", "[mqtt]\ncolour = 1\n"
    )
    reply = _send(rig, "bad-toml", push_args(broken))
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_config", reply
    lines = reply["error"]["message"].splitlines()
    assert len(lines) == 2, lines
    for line in lines:  # the real config file is named, never the temporary
        assert re.match(re.escape(str(rig.config)) + r":\d+:\d+: ", line), line
    reply = _send(rig, "not-toml", push_args("[gateway\nid = 1\n"))
    assert reply["error"]["code"] == "invalid_config", reply
    assert reply["error"]["message"].startswith(f"{rig.config}:1:"), reply

    # A new gateway.id: a reload cannot change it.
    renamed = good.replace(f'id = "{GW}"', 'id = "gw-other"')
    reply = _send(rig, "new-id", push_args(renamed))
    assert reply["error"]["code"] == "invalid_config", reply
    assert "gateway.id/data_dir needs a restart on site" in reply["error"]["message"]

    assert rig.config.read_bytes() == before
    assert not rig.config.with_name("gateway.toml.previous").exists()
    assert _leftovers(rig) == []
    assert not any("reloading" in line for line in rig.agent.lines)


def test_valid_push_is_applied_and_reported_healthy(rig: Rig) -> None:
    """(a) Via `citygate cmd`: meter-a faster, meter-b added; the data flows without a gap."""
    before = rig.config.read_bytes()
    text = draft(
        rig, [meter("meter-a", rig.sim.port, 1, "250ms"), meter("meter-b", rig.sim.port, 2, "1s")]
    )
    args = push_args(text)
    result = run_cli(
        "cmd",
        GW,
        "config",
        "--arg",
        f"toml={text}",
        "--arg",
        f"sha256={args['sha256']}",
        "--broker",
        f"mqtt://127.0.0.1:{rig.broker.port}",
        "--timeout",
        "20",
    )
    assert result.returncode == 0, result.stderr + rig.agent.log
    reply = json.loads(result.stdout)
    assert reply["ok"] is True, reply
    assert reply["result"]["applied"] is True
    assert reply["result"]["rolled_back"] is False
    assert reply["result"]["sha256"] == args["sha256"]
    assert reply["result"]["healthy_after_s"] >= 0

    assert rig.config.read_text() == text
    assert rig.config.with_name("gateway.toml.previous").read_bytes() == before
    assert rig.config.stat().st_mode & 0o777 == 0o600
    assert _leftovers(rig) == []
    rig.agent.wait_for_log("config command: healthy after")
    b_now = len(_samples(rig, "meter-b"))
    a_now = len(_samples(rig, "meter-a"))
    rig.data.wait_for(
        lambda: (
            len(_samples(rig, "meter-b")) >= b_now + 2
            and len(_samples(rig, "meter-a")) >= a_now + 4
        ),
        timeout=15,
    )
    rig.data.wait_for(lambda: _no_gap(rig), 10, "gapless seqs")


def test_push_to_an_unreachable_broker_is_rolled_back(rig: Rig) -> None:
    """(c) The pushed [mqtt] url is a closed port: after rollback_after (3 s) the previous file
    is back and the agent publishes to the original broker again."""
    before = rig.config.read_bytes()
    devices = [meter("meter-a", rig.sim.port, 1, "250ms"), meter("meter-b", rig.sim.port, 2, "1s")]
    closed = free_port()
    lines_before = len(rig.agent.lines)
    reply = _send(rig, "unreachable", push_args(draft(rig, devices, broker_port=closed)), wait=30)
    assert reply["ok"] is False, reply
    assert reply["rolled_back"] is True
    assert reply["error"]["code"] == "rolled_back"
    message = reply["error"]["message"]
    assert "not healthy within 3 s" in message, message
    assert f"mqtt://127.0.0.1:{closed} is not connected" in message, message

    assert rig.config.read_bytes() == before
    assert _leftovers(rig) == []
    reloads = [s for s in rig.agent.lines[lines_before:] if "config command: reloading" in s]
    assert len(reloads) == 2  # this push, its rollback
    seen = len(rig.data.seqs())
    rig.data.wait_for(lambda: len(rig.data.seqs()) >= seen + 5, 15, "data again after rollback")
    rig.data.wait_for(lambda: _no_gap(rig), 10, "gapless seqs")


def test_config_off_then_forbidden(rig: Rig) -> None:
    """(e) A push that sets ``config = false`` is applied; the next push is forbidden."""
    devices = [meter("meter-a", rig.sim.port, 1, "500ms")]
    off = draft(rig, devices, commands=COMMANDS.replace("config = true", "config = false"))
    reply = _send(rig, "turn-off", push_args(off), wait=20)
    assert reply["ok"] is True, reply
    assert rig.config.read_text() == off

    again = draft(rig, devices)
    reply = _send(rig, "after-off", push_args(again))
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden", reply
    assert rig.config.read_text() == off
