"""``citygate demo`` shows the simulated M-Bus water meter's readings."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.support.processes import ROOT

pytest.importorskip("hwsim.mbus")
pytest.importorskip("amqtt")


def test_demo_shows_the_water_meter() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    seen: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("water-main seq"):
                break
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=20)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = "".join(seen)
    assert demo.returncode == 0, err
    assert "M-Bus water meter on /dev/" in text
    water = next(line for line in seen if line.startswith("water-main seq"))
    assert "meter_status=0" in water and "volume=" in water and " m3" in water
    assert "Traceback" not in err
