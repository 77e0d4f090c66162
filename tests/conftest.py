"""Shared fixtures: a real Mosquitto per test that asks for one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.broker import Mosquitto

# Hypothesis fails an example that takes over 200 ms by default: a timing assertion, which a
# loaded machine breaks (the suite runs beside another). Speed is for `make bench`; a test's
# own @settings may still set a deadline where slowness is the bug.
settings.register_profile("citygate", deadline=None)
settings.load_profile("citygate")

# Samples taken in tests are stamped as if NTP had synced, unless a test says otherwise.
os.environ.setdefault("CITYGATE_CLOCK", "synced")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()
