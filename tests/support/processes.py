"""Real processes for end-to-end tests: `citygate run` and `citygate-sim`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def citygate_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "citygate.cli", *args]


def run_cli(
    *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one `citygate` command to completion."""
    return subprocess.run(
        citygate_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


class SimProcess:
    """`citygate-sim modbus-tcp` in its own process."""

    def __init__(self, units: dict[int, str], *extra: str) -> None:
        args = [str(BIN / "citygate-sim"), "modbus-tcp", "--port", "0"]
        for unit, model in units.items():
            args += ["--unit", f"{unit}={model}"]
        args += list(extra)
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            err = self.process.stderr.read() if self.process.stderr else ""
            raise RuntimeError(f"simulator did not start: {line!r} {err}")
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def seamed_agent_command(
    config: Path,
    *,
    wedge_file: Path | None = None,
    clock_offset_file: Path | None = None,
    metrics_interval: float | None = None,
) -> list[str]:
    """`citygate run -c CONFIG`, or tests/support/seamed_agent.py when a seam is asked for."""
    seams: list[str] = []
    if wedge_file is not None:
        seams += ["--wedge-file", str(wedge_file)]
    if clock_offset_file is not None:
        seams += ["--clock-offset-file", str(clock_offset_file)]
    if metrics_interval is not None:
        seams += ["--metrics-interval", str(metrics_interval)]
    if not seams:
        return citygate_command("run", "-c", str(config))
    return [sys.executable, "-m", "tests.support.seamed_agent", "-c", str(config), *seams]


class AgentProcess:
    """`citygate run -c CONFIG` as a subprocess; its stderr is collected.

    ``wedge_file``, ``clock_offset_file`` and ``metrics_interval`` run it through
    tests/support/seamed_agent.py, which gives the agent those seams."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str] | None = None,
        *,
        wedge_file: Path | None = None,
        clock_offset_file: Path | None = None,
        metrics_interval: float | None = None,
    ) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            seamed_agent_command(
                config,
                wedge_file=wedge_file,
                clock_offset_file=clock_offset_file,
                metrics_interval=metrics_interval,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._reader.join(5)

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"log line {text!r} not seen; log:\n{self.log}")


def modbus_config(
    path: Path,
    *,
    broker_port: int,
    devices: list[dict[str, object]],
    data_dir: Path,
    extra: str = "",
) -> Path:
    """Write a gateway.toml with Modbus TCP devices on the loopback simulator."""
    lines = [
        "[gateway]",
        'id = "gw-e2e"',
        f'data_dir = "{data_dir}"',
        'log_level = "info"',
        "",
        "[mqtt]",
        f'url = "mqtt://127.0.0.1:{broker_port}"',
        'linger = "50ms"',
        "",
        extra,
    ]
    for device in devices:
        lines.append("[[device]]")
        for key, value in device.items():
            if isinstance(value, str):
                lines.append(f'{key} = "{value}"')
            elif isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            else:
                lines.append(f"{key} = {value}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path
