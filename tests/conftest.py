"""Shared fixtures: a real Mosquitto per test that asks for one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto

# Samples taken in tests are stamped as if NTP had synced, unless a test says otherwise.
os.environ.setdefault("CITYGATE_CLOCK", "synced")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()
