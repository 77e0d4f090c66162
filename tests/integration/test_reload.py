"""SIGHUP reload end to end: `citygate run`, the Modbus TCP simulator, a real Mosquitto.

One run goes through a reload that adds, removes and changes devices and changes [mqtt] (the
publisher restarts), then an invalid config (logged with its position, the running config
stays). At the end every seq the buffer gave out reached the broker, in order per device, and
the untouched device's samples kept their cadence through the reloads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citygate import registry
from citygate.config import load
from citygate.reload import device_differs as _differs
from tests.faults.helpers import buffer_stats
from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import AgentProcess, SimProcess, modbus_config

UNTOUCHED_INTERVAL_S = 0.5


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    process = SimProcess({1: "sdm630", 2: "sdm120"})
    yield process
    process.stop()


def meter(device_id: str, sim_port: int, unit: int, interval: str) -> dict[str, object]:
    return {
        "id": device_id,
        "driver": "modbus",
        "host": "127.0.0.1",
        "port": sim_port,
        "unit": unit,
        "profile": "eastron-sdm630" if unit == 1 else "eastron-sdm120",
        "interval": interval,
    }


def samples_of(sub: Subscriber, device: str) -> dict[int, float]:
    """seq → sample time (bt) of the device's samples received so far."""
    return {
        int(r["seq"]): float(r["bt"])
        for r in sub.data_records()
        if r["topic"] == f"city/gw-e2e/{device}/data"
    }


def first_arrivals(sub: Subscriber) -> dict[str, list[int]]:
    """Per device, the seqs in the order they first arrived."""
    seen: set[int] = set()
    out: dict[str, list[int]] = {}
    for m in sub.snapshot("/data"):
        device = m.topic.split("/")[2]
        for record in json.loads(m.payload):
            seq = record.get("seq")
            if seq is not None and seq not in seen:
                seen.add(seq)
                out.setdefault(device, []).append(seq)
    return out


def latest_json(sub: Subscriber, suffix: str) -> Any:
    messages = sub.snapshot(suffix)
    assert messages, f"nothing received on *{suffix}"
    return json.loads(messages[-1].payload)


def test_reload_restarts_only_what_changed_and_loses_nothing(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    data_dir = tmp_path / "var"
    path = tmp_path / "gateway.toml"

    def write(devices: list[dict[str, object]], extra: str = "") -> None:
        modbus_config(
            path, broker_port=broker.port, data_dir=data_dir, devices=devices, extra=extra
        )

    untouched = meter("meter-a", sim.port, 1, f"{int(UNTOUCHED_INTERVAL_S * 1000)}ms")
    write(
        [
            untouched,
            meter("meter-b", sim.port, 2, "500ms"),
            meter("meter-c", sim.port, 1, "500ms"),
        ]
    )
    sub = Subscriber(broker.port).start()
    agent = AgentProcess(path)
    try:
        sub.wait_for(
            lambda: all(len(samples_of(sub, d)) >= 3 for d in ("meter-a", "meter-b", "meter-c")),
            timeout=20,
        )

        # 1. Valid: meter-b faster, meter-c gone, meter-d new, [mqtt] changed (max_batch).
        write(
            [
                untouched,
                meter("meter-b", sim.port, 2, "250ms"),
                meter("meter-d", sim.port, 2, "500ms"),
            ],
            extra="max_batch = 400\n",
        )
        a_before = len(samples_of(sub, "meter-a"))
        agent.signal(signal.SIGHUP)
        agent.wait_for_log("reload: 3 devices running", timeout=30)
        summary = next(line for line in agent.lines if "reload: 3 devices running" in line)
        assert "added meter-d" in summary
        assert "removed meter-c" in summary
        assert "restarted meter-b;" in summary  # and only meter-b
        assert "publisher restarted" in summary
        sub.wait_for(lambda: len(samples_of(sub, "meter-d")) >= 3, timeout=20)
        sub.wait_for(
            lambda: (
                [d["id"] for d in latest_json(sub, "/info")["devices"]]
                == ["meter-a", "meter-b", "meter-d"]
            ),
            timeout=30,
        )
        assert latest_json(sub, "/meter-c/status")["state"] == "disabled"
        sub.wait_for(lambda: len(samples_of(sub, "meter-a")) >= a_before + 2, timeout=30)

        # 2. Invalid: logged with its position; the running config stays.
        path.write_text(path.read_text().replace('interval = "250ms"', 'interval = "soon"'))
        agent.signal(signal.SIGHUP)
        agent.wait_for_log("still running the previous one", timeout=20)
        positioned = [
            line for line in agent.lines if re.search(re.escape(str(path)) + r":\d+:\d+: ", line)
        ]
        assert positioned, agent.log
        a_before = len(samples_of(sub, "meter-a"))
        b_before = len(samples_of(sub, "meter-b"))
        sub.wait_for(
            lambda: (
                len(samples_of(sub, "meter-b")) >= b_before + 3
                and len(samples_of(sub, "meter-a")) >= a_before + 2
            ),
            timeout=30,
        )
        assert agent.process.poll() is None
    finally:
        code = agent.stop()
    assert code == 0, agent.log
    assert "Traceback" not in agent.log, agent.log

    # Nothing lost: every seq the buffer gave out arrived, per device in order.
    stats = buffer_stats(data_dir)
    assert stats.backlog_samples == 0
    assert stats.dropped_samples == 0
    expected = set(range(1, stats.next_seq))
    with contextlib.suppress(AssertionError):  # the last PUBACKed messages may still travel
        sub.wait_for(
            lambda: expected <= {s for seqs in first_arrivals(sub).values() for s in seqs}, 10
        )
    sub.stop()
    arrivals = first_arrivals(sub)
    received = {seq for seqs in arrivals.values() for seq in seqs}
    missing = sorted(expected - received)
    assert not missing, f"{len(missing)} samples missing, first {missing[:10]}"
    for device, seqs in arrivals.items():
        assert seqs == sorted(seqs), f"{device}: seqs out of order"
    # meter-c stopped at the reload; meter-d only started then.
    assert max(arrivals["meter-c"]) < min(arrivals["meter-d"])

    # The untouched device ran through both reloads on its own grid: no gap beyond one interval.
    times = sorted(samples_of(sub, "meter-a").values())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 2 * UNTOUCHED_INTERVAL_S + 0.1, gaps


class _Compiled:
    """A driver-config part without ``__eq__``, as a plugin may hold (a compiled plan)."""

    __slots__ = ("steps",)

    def __init__(self, steps: tuple[int, ...]) -> None:
        self.steps = steps


def test_a_device_differs_only_when_its_settings_do(tmp_path: Path) -> None:
    path = modbus_config(
        tmp_path / "gateway.toml",
        broker_port=1883,
        data_dir=tmp_path / "var",
        devices=[meter("m", 502, 1, "1s"), meter("n", 502, 2, "1s")],
    )
    factories = registry.factories()
    first, again = load(path, factories), load(path, factories)
    for old, new in zip(first.devices, again.devices, strict=True):
        assert not _differs(old, new)  # compiled read plans are rebuilt, not different
    m = first.devices[0]
    assert _differs(m, dataclasses.replace(m, interval=2.0))
    assert _differs(m, dataclasses.replace(m, labels={"site": "b"}))
    unit_2 = dataclasses.replace(m.driver_config, unit=2)
    assert _differs(m, dataclasses.replace(m, driver_config=unit_2))
    assert _differs(m, first.devices[1])
    plugin = dataclasses.replace(m, driver_config=_Compiled((1, 2)))
    assert not _differs(plugin, dataclasses.replace(m, driver_config=_Compiled((1, 2))))
    assert _differs(plugin, dataclasses.replace(m, driver_config=_Compiled((1, 3))))


def test_a_reload_with_a_secret_that_never_ends_is_refused_and_the_agent_goes_on(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess
) -> None:
    """`password_file = "/dev/zero"` on SIGHUP: refused at once, logged in place, nothing grows.

    The reload used to read the secret in a thread no timeout could stop: the running agent
    grew until the 60 s load timeout gave up on it (and the thread went on reading)."""
    data_dir = tmp_path / "var"
    path = tmp_path / "gateway.toml"
    devices = [meter("meter-a", sim.port, 1, "200ms")]
    modbus_config(path, broker_port=broker.port, data_dir=data_dir, devices=devices)
    sub = Subscriber(broker.port).start()
    agent = AgentProcess(path)
    try:
        sub.wait_for(lambda: len(samples_of(sub, "meter-a")) >= 2, timeout=20)
        modbus_config(
            path,
            broker_port=broker.port,
            data_dir=data_dir,
            devices=devices,
            extra='username = "gw-e2e"\npassword_file = "/dev/zero"\n',
        )
        line = path.read_text().splitlines().index('password_file = "/dev/zero"') + 1
        agent.signal(signal.SIGHUP)
        agent.wait_for_log("still running the previous one", timeout=20)
        error = (
            f'{path}:{line}:17: "password_file": cannot read /dev/zero: it is not a regular file'
        )
        assert any(error in logged for logged in agent.lines), agent.log
        before = len(samples_of(sub, "meter-a"))
        sub.wait_for(lambda: len(samples_of(sub, "meter-a")) >= before + 3, timeout=20)
        assert agent.process.poll() is None
    finally:
        code = agent.stop()
        sub.stop()
    assert code == 0, agent.log
    assert "Traceback" not in agent.log, agent.log
