"""`citygate run` with username + password_file against a Mosquitto password file,
and `citygate check`'s warnings about how the password is kept."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto, Subscriber
from tests.support.processes import AgentProcess, SimProcess, modbus_config, run_cli
from tests.support.wait import wait_until

pytestmark = pytest.mark.broker

AGENT_USER, AGENT_PASSWORD = "gw-auth", "Tr0ub4dor&3-agent"
READER_USER, READER_PASSWORD = "reader", "correct-horse-reader"
WRONG_PASSWORD = "hunter2-not-it"
RETRYING = "(retrying with backoff)"


def mosquitto_hash(password: str) -> str:
    """Mosquitto 2's ``$7$`` form: PBKDF2-HMAC-SHA512, 101 rounds, 12-byte salt, base64."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file, by ``mosquitto_passwd -b`` when installed."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        path.write_text("".join(f"{user}:{mosquitto_hash(pw)}\n" for user, pw in users.items()))
        return path
    path.write_text("")
    for user, password in users.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True, timeout=10)
    return path


def secret_file(path: Path, secret: str, mode: int = 0o600) -> Path:
    path.write_text(secret + "\n")
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    process = SimProcess({1: "sdm120"})
    yield process
    process.stop()


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    passwords = write_password_file(
        tmp_path / "mosquitto.passwd", {AGENT_USER: AGENT_PASSWORD, READER_USER: READER_PASSWORD}
    )
    broker = Mosquitto(
        tmp_path / "mosquitto", anonymous=False, extra_conf=f"password_file {passwords}\n"
    )
    broker.start()
    yield broker
    broker.stop()


def reader(broker: Mosquitto) -> Subscriber:
    return Subscriber(broker.port, username=READER_USER, password=READER_PASSWORD).start()


def auth_config(tmp_path: Path, broker_port: int, sim_port: int, mqtt: str) -> Path:
    """A gateway.toml with one simulated meter; ``mqtt`` is added to [mqtt]."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return modbus_config(
        tmp_path / "gateway.toml",
        broker_port=broker_port,
        data_dir=tmp_path / "var",
        devices=[
            {
                "id": "meter-auth",
                "driver": "modbus",
                "host": "127.0.0.1",
                "port": sim_port,
                "unit": 1,
                "profile": "eastron-sdm120",
                "interval": "250ms",
            }
        ],
        extra=mqtt,
    )


def debug_logging(config: Path) -> Path:
    """The most talkative log level: a secret must not show even there."""
    text = config.read_text()
    assert 'log_level = "info"' in text
    config.write_text(text.replace('log_level = "info"', 'log_level = "debug"', 1))
    return config


def connections(broker: Mosquitto) -> int:
    pattern = re.compile(rf"New connection from 127\.0\.0\.1:\d+ on port {broker.port}\.")
    return len(pattern.findall(broker.log_text()))


def data_seqs(sub: Subscriber) -> set[int]:
    return {r["seq"] for r in sub.data_records() if "bt" in r}


def assert_no_secret(text: str) -> None:
    for secret in (AGENT_PASSWORD, READER_PASSWORD, WRONG_PASSWORD):
        assert secret not in text


def test_username_and_password_file(
    tmp_path: Path, sim: SimProcess, auth_broker: Mosquitto
) -> None:
    password_file = secret_file(tmp_path / "mqtt-password", AGENT_PASSWORD)
    config = debug_logging(
        auth_config(
            tmp_path,
            auth_broker.port,
            sim.port,
            f'username = "{AGENT_USER}"\npassword_file = "{password_file}"',
        )
    )
    sub = reader(auth_broker)
    agent = AgentProcess(config)
    try:
        sub.wait_for(lambda: len(data_seqs(sub)) >= 5)
        code = agent.stop()
    finally:
        if agent.process.poll() is None:
            agent.kill()
        sub.stop()
    assert code == 0, agent.log
    assert f"broker {auth_broker.url}: connected" in agent.log
    assert RETRYING not in agent.log
    assert f"u'{AGENT_USER}'" in auth_broker.log_text()
    assert_no_secret(agent.log)


def test_wrong_password_is_refused_once_and_readings_kept(
    tmp_path: Path, sim: SimProcess, auth_broker: Mosquitto
) -> None:
    password_file = secret_file(tmp_path / "mqtt-password", WRONG_PASSWORD)
    config = debug_logging(
        auth_config(
            tmp_path,
            auth_broker.port,
            sim.port,
            f'username = "{AGENT_USER}"\npassword_file = "{password_file}"',
        )
    )
    sub = reader(auth_broker)
    before = connections(auth_broker)
    agent = AgentProcess(config)
    try:
        agent.wait_for_log(RETRYING)
        wait_until(
            lambda: connections(auth_broker) >= before + 3,
            what="3 more connection attempts",
            explain=lambda: agent.log,
        )
        shown = run_cli("status", "-c", str(config), "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["backlog_samples"] >= 1
        code = agent.stop()
    finally:
        if agent.process.poll() is None:
            agent.kill()
        sub.stop()
    assert code == 0, agent.log
    refusals = [line for line in agent.lines if RETRYING in line]
    assert len(refusals) == 1, agent.log  # said once, not at every attempt
    assert "not authori" in refusals[0].lower()
    assert data_seqs(sub) == set()
    assert_no_secret(agent.log)


def warnings_of(checked: subprocess.CompletedProcess[str]) -> list[str]:
    assert checked.returncode == 0, checked.stderr  # warnings do not fail the check
    assert_no_secret(checked.stdout + checked.stderr)
    return [line for line in checked.stderr.splitlines() if ": warning: " in line]


def position(config: Path, starts: str, of: str) -> str:
    """``FILE:LINE:COL`` of the text ``of`` on the line that starts with ``starts``."""
    for number, line in enumerate(config.read_text().splitlines(), start=1):
        if line.startswith(starts):
            return f"{config}:{number}:{line.index(of) + 1}"
    raise AssertionError(f"no line starts with {starts!r}")


def test_check_warns_about_how_the_password_is_kept(tmp_path: Path) -> None:
    port = 1883  # `check` connects to nothing
    inline = auth_config(
        tmp_path / "inline", port, 5020, f'username = "{AGENT_USER}"\npassword = "{AGENT_PASSWORD}"'
    )
    (warning,) = warnings_of(run_cli("check", "-c", str(inline)))
    assert warning.startswith(position(inline, "password =", "password") + ": warning: ")
    assert '"password" is written in the config' in warning
    assert '"password_file"' in warning

    shared = secret_file(tmp_path / "shared-password", AGENT_PASSWORD, 0o644)
    open_file = auth_config(
        tmp_path / "open", port, 5020, f'username = "{AGENT_USER}"\npassword_file = "{shared}"'
    )
    (warning,) = warnings_of(run_cli("check", "-c", str(open_file)))
    assert warning.startswith(position(open_file, "password_file =", '"') + ": warning: ")
    assert "open to group or others (mode 0644)" in warning

    private = secret_file(tmp_path / "private-password", AGENT_PASSWORD, 0o600)
    closed = auth_config(
        tmp_path / "closed", port, 5020, f'username = "{AGENT_USER}"\npassword_file = "{private}"'
    )
    assert warnings_of(run_cli("check", "-c", str(closed))) == []
