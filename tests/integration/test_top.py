"""`citygate top` (and `citygate demo`'s view) in a real 80×24 pseudo-terminal, rendered by pyte,
against a running agent, the Modbus simulators and a real Mosquitto."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pyte
import pytest

from tests.support.broker import Mosquitto
from tests.support.processes import ROOT, AgentProcess, SimProcess, citygate_command, modbus_config
from tests.support.wait import wait_until

COLUMNS, ROWS = 80, 24
ALT_SCREEN_ON, ALT_SCREEN_OFF, CURSOR_SHOWN = b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b[?25h"
UP, DOWN, RIGHT, ENTER, ESC = b"\x1b[A", b"\x1b[B", b"\x1b[C", b"\r", b"\x1b"


class Terminal:
    """A command on a pseudo-terminal of COLUMNS × ROWS; what it draws is kept by pyte."""

    def __init__(self, args: list[str]) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.modes = termios.tcgetattr(self.slave)
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env["TERM"] = "xterm-256color"
        self.process = subprocess.Popen(
            args,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.raw += data
                self.stream.feed(data)

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.screen.display)

    def line_of(self, device: str) -> str | None:
        return next((line for line in self.text().splitlines() if f" {device} " in line), None)

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait_for(self, predicate: object, timeout: float, what: str) -> None:
        assert callable(predicate)
        wait_until(predicate, timeout, what, explain=self.text)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        os.close(self.slave)
        os.close(self.master)
        self._reader.join(5)


@pytest.fixture
def sims() -> Iterator[tuple[SimProcess, SimProcess]]:
    a = SimProcess({1: "sdm630", 2: "sdm120"})
    b = SimProcess({1: "sdm120"})
    yield a, b
    a.stop()
    b.stop()


def _device(device_id: str, port: int, unit: int, profile: str) -> dict[str, object]:
    return {
        "id": device_id,
        "driver": "modbus",
        "host": "127.0.0.1",
        "port": port,
        "unit": unit,
        "profile": profile,
        "interval": "300ms",
    }


def _restored(term: Terminal) -> bool:
    """The alternate screen was left and the cursor shown after it was last entered."""
    tail = bytes(term.raw)[bytes(term.raw).rfind(ALT_SCREEN_ON) :]
    return ALT_SCREEN_OFF in tail and CURSOR_SHOWN in tail


def test_top_shows_every_device_follows_an_outage_and_quits_cleanly(
    tmp_path: Path, broker: Mosquitto, sims: tuple[SimProcess, SimProcess]
) -> None:
    a, b = sims
    config = modbus_config(
        tmp_path / "gateway.toml",
        broker_port=broker.port,
        data_dir=tmp_path / "var",
        devices=[
            _device("meter-townhall", a.port, 1, "eastron-sdm630"),
            _device("meter-library", a.port, 2, "eastron-sdm120"),
            _device("meter-school", b.port, 1, "eastron-sdm120"),
        ],
    )
    agent = AgentProcess(config)
    term: Terminal | None = None
    try:
        agent.wait_for_log("running: gateway gw-e2e")
        term = Terminal(citygate_command("top", "-c", str(config)))
        t = term
        t.wait_for(lambda: "agent running" in t.text(), 20, "the live view")
        t.wait_for(
            lambda: all(
                (line := t.line_of(d)) is not None and "online" in line and " W " in line
                for d in ("meter-townhall", "meter-library", "meter-school")
            ),
            20,
            "every device online with its key readings",
        )
        screen = t.text()
        assert "connected" in screen and f"127.0.0.1:{broker.port}" in screen
        assert re.search(r"backlog +\d+ samples?", screen)
        assert all(len(line) <= COLUMNS for line in screen.splitlines())

        # A device goes offline: the view shows it within 2 s of the agent saying so.
        b.stop()
        agent.wait_for_log("meter-school: offline after")
        t.wait_for(
            lambda: "offline" in (t.line_of("meter-school") or ""), 2.0, "meter-school offline"
        )
        assert "online" in (t.line_of("meter-townhall") or "")

        # ↓ then Enter: the library meter's readings, with human units; Esc: the list again.
        t.send(DOWN)
        t.wait_for(lambda: "meter-library" in t.text(), 5, "the selection")
        t.send(ENTER)
        t.wait_for(lambda: "meter-library (modbus)" in t.text(), 5, "the readings of one device")
        details = t.text()
        assert "power_factor" in details and "energy_import" in details
        assert "phase_angle" in details and "°" in details
        assert not re.search(r"power_factor +[-\d.]+ /", details)  # no "0.925 /"
        t.send(ESC)
        t.wait_for(lambda: "KEY READINGS" in t.text(), 5, "the list again")

        t.send(b"q")
        assert t.process.wait(10) == 0
        t.wait_for(lambda: _restored(t), 5, "the terminal restored")
        assert termios.tcgetattr(t.slave) == t.modes  # cbreak undone
    finally:
        if term is not None:
            term.close()
        agent.stop()


def test_top_without_an_agent_says_so_and_shows_the_buffer(tmp_path: Path) -> None:
    config = modbus_config(
        tmp_path / "gateway.toml",
        broker_port=1,
        data_dir=tmp_path / "var",
        devices=[_device("meter-x", 1, 1, "eastron-sdm120")],
    )
    (tmp_path / "var").mkdir(mode=0o700)
    (tmp_path / "var" / "top.json").write_bytes(b"\x00garbage{")
    term = Terminal(citygate_command("top", "-c", str(config)))
    try:
        term.wait_for(lambda: "no live data" in term.text(), 20, "no live data")
        assert term.line_of("meter-x") is not None
        (tmp_path / "var" / "top.json").unlink()
        term.wait_for(lambda: "agent not running" in term.text(), 10, "agent not running")
        term.process.send_signal(signal.SIGTERM)  # as a closed SSH session's
        assert term.process.wait(10) == 0
        assert _restored(term)
    finally:
        term.close()


def test_demo_on_a_terminal_shows_the_top_view_and_q_stops_it() -> None:
    term = Terminal(citygate_command("demo"))
    try:
        term.wait_for(lambda: "citygate demo" in term.text(), 30, "the demo's view")
        term.wait_for(
            lambda: (
                all(
                    term.line_of(d) is not None
                    for d in ("meter-townhall", "meter-library", "water-main")
                )
                and "agent running" in term.text()
            ),
            30,
            "the demo's devices",
        )
        term.send(b"q")
        assert term.process.wait(30) == 0
        assert _restored(term)
    finally:
        term.close()
