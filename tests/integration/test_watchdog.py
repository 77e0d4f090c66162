"""sd_notify from `citygate run` to a real datagram socket: READY, WATCHDOG only while healthy,
RELOADING then READY on SIGHUP, STOPPING on SIGTERM; a wedged publisher stops the pings, a
broker outage does not.

The wedge is real from the agent's side: the publisher's data loop hangs for good (through the
Agent's ``before_fetch`` seam, given by tests/support/seamed_agent.py ``--wedge-file``, as a lost
wake-up would) while the meter keeps producing, and only the health check can tell.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from citygate.app import HOUSEKEEPING_S, watchdog_period
from tests.support.broker import Mosquitto
from tests.support.processes import AgentProcess, SimProcess, modbus_config

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s


class NotifySocket:
    """A datagram socket standing in for systemd's; records every message in order."""

    def __init__(self) -> None:
        # A short path: AF_UNIX paths are limited to 108 bytes.
        self._dir = tempfile.TemporaryDirectory(prefix="cg-notify-")
        self.path = Path(self._dir.name) / "notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)
        self.messages: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.messages.append(data.decode())
                self._changed.notify_all()

    def wait_for(
        self, predicate: Callable[[list[str]], bool], timeout: float, what: str
    ) -> list[str]:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.messages), timeout):
                raise AssertionError(f"not received: {what}; got {self.messages[-20:]}")
            return list(self.messages)

    def count(self, prefix: str, since: int = 0) -> int:
        with self._changed:
            return sum(1 for m in self.messages[since:] if m.startswith(prefix))

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self._sock.close()
        self._dir.cleanup()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def sim() -> Iterator[SimProcess]:
    process = SimProcess({1: "sdm630"})
    yield process
    process.stop()


def index_of(messages: list[str], prefix: str, after: int = -1) -> int:
    return next(i for i, m in enumerate(messages) if i > after and m.startswith(prefix))


def one_meter(tmp_path: Path, broker: Mosquitto, sim: SimProcess) -> Path:
    return modbus_config(
        tmp_path / "gateway.toml",
        broker_port=broker.port,
        data_dir=tmp_path / "var",
        devices=[
            {
                "id": "meter-1",
                "driver": "modbus",
                "host": "127.0.0.1",
                "port": sim.port,
                "unit": 1,
                "profile": "eastron-sdm630",
                "interval": "200ms",
            }
        ],
        extra='keepalive = "5s"\n',  # ack_timeout = 10 s: the publisher's own standard
    )


def test_notify_protocol_and_a_wedged_publisher(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess, notify: NotifySocket
) -> None:
    config = one_meter(tmp_path, broker, sim)
    wedge = tmp_path / "wedge"
    agent = AgentProcess(
        config,
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)},
        wedge_file=wedge,
    )
    try:
        # READY once running, then pings with a one-line STATUS.
        got = notify.wait_for(
            lambda ms: sum("broker connected" in m for m in ms) >= 3, 20, "pings, connected"
        )
        ready = index_of(got, "READY=1")
        assert index_of(got, "WATCHDOG=1") > ready
        status = next(m for m in got if "broker connected" in m)
        assert status.startswith("WATCHDOG=1\nSTATUS=1 online, 0 offline, backlog ")

        # SIGHUP: RELOADING=1 (with the monotonic time systemd asks for), then READY=1.
        mark = len(got)
        agent.signal(signal.SIGHUP)
        got = notify.wait_for(
            lambda ms: any(m.startswith("READY=1") for m in ms[mark:]), 20, "READY after reload"
        )
        reloading = index_of(got, "RELOADING=1", mark - 1)
        assert "\nMONOTONIC_USEC=" in got[reloading]
        assert index_of(got, "READY=1", mark - 1) > reloading
        agent.wait_for_log("reload: no device, line or broker setting changed")

        # The publisher's data loop hangs while the meter keeps producing: health is lost
        # (logged once, with the reason), STATUS goes on, WATCHDOG=1 stops.
        wedge.touch()
        got = notify.wait_for(
            lambda ms: any(m.startswith("STATUS=unhealthy") for m in ms), 30, "unhealthy"
        )
        first_unhealthy = index_of(got, "STATUS=unhealthy")
        assert "publisher: connected, data waiting" in got[first_unhealthy]
        notify.wait_for(
            lambda ms: sum(m.startswith("STATUS=unhealthy") for m in ms) >= 4,
            10,
            "statuses while unhealthy",
        )
        assert notify.count("WATCHDOG=1", first_unhealthy) == 0
        agent.wait_for_log("unhealthy: publisher: connected, data waiting")
        assert sum("unhealthy:" in line for line in agent.lines) == 1

        # SIGTERM: STOPPING=1, and a clean exit even with the publisher wedged.
        mark = len(notify.messages)
        code = agent.stop(30)
        notify.wait_for(
            lambda ms: any(m == "STOPPING=1" for m in ms[mark:]), 5, "STOPPING after SIGTERM"
        )
    finally:
        agent.kill()
    assert code == 0, agent.log


def test_a_broker_outage_is_not_unhealthy(
    tmp_path: Path, broker: Mosquitto, sim: SimProcess, notify: NotifySocket
) -> None:
    config = one_meter(tmp_path, broker, sim)
    agent = AgentProcess(
        config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    )
    try:
        notify.wait_for(lambda ms: any("broker connected" in m for m in ms), 20, "connected")
        # Pings go on, with data waiting, for longer than the publisher's connected standard
        # (ack_timeout + linger + slack) would allow: the disconnected standard applies.
        broker.stop()
        got = notify.wait_for(
            lambda ms: any("broker disconnected" in m for m in ms), 20, "outage noticed"
        )
        mark = len(got)
        notify.wait_for(
            lambda ms: sum("broker disconnected" in m for m in ms[mark:]) >= 26,
            30,
            "statuses during the outage",
        )
        assert notify.count("STATUS=unhealthy", mark) == 0
        assert notify.count("WATCHDOG=1", mark) >= 26
        assert "unhealthy" not in agent.log
        code = agent.stop(30)
    finally:
        agent.kill()
    assert code == 0, agent.log


def test_watchdog_period_follows_systemd() -> None:
    assert watchdog_period({}) == HOUSEKEEPING_S
    assert watchdog_period({"WATCHDOG_USEC": "60000000"}) == 30.0
    ours = str(os.getpid())
    assert watchdog_period({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": ours}) == 30.0
    other = str(os.getpid() + 1)
    assert watchdog_period({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": other}) == HOUSEKEEPING_S
    assert watchdog_period({"WATCHDOG_USEC": "soon"}) == HOUSEKEEPING_S
    assert watchdog_period({"WATCHDOG_USEC": "0"}) == HOUSEKEEPING_S
