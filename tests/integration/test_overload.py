"""An agent offered far more than it can publish skips polls (counted) instead of
letting its backlog grow without end while the broker is there."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.integration.test_pipeline import make_config, running, wait_until
from tests.support.broker import Mosquitto


async def test_overload_skips_polls_and_keeps_publishing(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    # 100 devices × 100 values every 10 ms: 1,000,000 readings/s offered.
    devices = [{"id": f"d{i:03}", "values": 100, "interval": 0.01} for i in range(100)]
    config = make_config(tmp_path, broker, devices, linger=0.2)
    with caplog.at_level(logging.WARNING):
        async with running(config) as agent:
            await wait_until(lambda: agent.counters.polls_skipped > 1000, timeout=60)
            published = agent.counters.readings_published
            await asyncio.sleep(2)
            assert agent.counters.readings_published > published  # still publishing
    overloaded = [r for r in caplog.records if "overloaded" in r.message]
    assert len(overloaded) == 1, [r.message for r in overloaded]
