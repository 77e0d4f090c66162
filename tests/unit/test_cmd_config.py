"""The sans-I/O parts of the ``config`` command (citygate.cmd_config): its arguments, the
problems placed in the real file, the restart-only settings and the health predicate."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from citygate import registry
from citygate.cmd_config import (
    health_problem,
    located,
    online_before,
    parse_args,
    restart_only_change,
)
from citygate.commands import CommandError, reply_payload
from citygate.config import CONFIG_MAX_BYTES, Problem, load
from citygate.status import DeviceStatus


def _args(text: str, digest: str | None = None) -> dict[str, Any]:
    return {"toml": text, "sha256": digest or hashlib.sha256(text.encode()).hexdigest()}


def test_arguments() -> None:
    push = parse_args(_args("[gateway]\nid = 'gw-é'\n"))
    assert push.data == "[gateway]\nid = 'gw-é'\n".encode()
    upper = parse_args(_args("x", hashlib.sha256(b"x").hexdigest().upper()))
    assert upper.sha256 == hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"toml": "x"}, "expected"),
        ({**_args("x"), "more": 1}, "expected"),
        ({"toml": 1, "sha256": "0" * 64}, "expected"),
        ({"toml": "x", "sha256": "zz"}, "64 hex digits"),
        (_args("x", hashlib.sha256(b"y").hexdigest()), "does not match"),
        ({"toml": "\ud800", "sha256": "0" * 64}, "not valid Unicode"),
        (_args("#" * (CONFIG_MAX_BYTES + 1)), "larger than"),
    ],
)
def test_bad_arguments(args: dict[str, Any], words: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_args(args)
    assert caught.value.code == "bad_request"
    assert words in caught.value.message


def test_problems_name_the_real_file() -> None:
    temporary, real = Path("/etc/cg/.gateway.toml.ab12.tmp"), Path("/etc/cg/gateway.toml")
    problems = [
        Problem(temporary, 3, 7, "unknown key"),
        Problem(Path("/etc/cg/site.toml"), 1, 1, f"included from {temporary}"),
    ]
    assert located(problems, temporary, real) == [
        "/etc/cg/gateway.toml:3:7: unknown key",
        "/etc/cg/site.toml:1:1: included from /etc/cg/gateway.toml",
    ]


def test_a_new_gateway_id_or_data_dir_needs_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\nid = "gw-1"\ndata_dir = "{tmp_path / "var"}"\n')
    running = load(path, registry.factories())
    assert restart_only_change(running, running) is None
    other = dataclasses.replace(running.gateway, id="gw-2", data_dir=tmp_path / "elsewhere")
    why = restart_only_change(running, dataclasses.replace(running, gateway=other))
    assert why is not None
    assert why.startswith("changing gateway.id/data_dir needs a restart on site")
    assert "gw-1 → gw-2" in why and "elsewhere" in why


def _status(state: str, last: float | None = None, error: str | None = None) -> DeviceStatus:
    return DeviceStatus(state=state, last_sample=last, error=error)


def test_health() -> None:
    statuses = {"a": _status("online", 10.0), "b": _status("online", 10.0), "c": _status("offline")}
    before = online_before(statuses)
    assert before == {"a": 10.0, "b": 10.0}  # c was not online: not asked of the new config

    def problem(**changes: Any) -> str | None:
        kwargs: dict[str, Any] = {
            "connected": True,
            "broker": "mqtt://b:1883",
            "configured": {"a", "b", "c"},
            "statuses": statuses,
            "started": (),
        }
        return health_problem(before, **{**kwargs, **changes})

    assert problem() is None
    assert problem(connected=False) == "the broker mqtt://b:1883 is not connected"
    # A device removed on purpose is not missed.
    assert problem(configured={"a"}) is None
    # A restarted device must have been read since.
    assert problem(started={"b"}) == "device b (online before) has not been read since its restart"
    assert problem(started={"b"}, statuses={**statuses, "b": _status("online", 11.0)}) is None
    failing = _status("online", 11.0, error="timeout")  # not offline yet: one failed poll
    assert problem(statuses={**statuses, "b": failing}) == (
        "device b (online before) is not online again: timeout"
    )
    assert problem(statuses={"a": statuses["a"]}) == "device b (online before) is not online again"


def test_a_rolled_back_reply_says_so() -> None:
    error = CommandError("rolled_back", "not healthy", {"rolled_back": True})
    assert json.loads(reply_payload("r1", error=error)) == {
        "id": "r1",
        "ok": False,
        "rolled_back": True,
        "error": {"code": "rolled_back", "message": "not healthy"},
    }
