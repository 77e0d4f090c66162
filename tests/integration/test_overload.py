"""An agent offered far more than it can publish skips polls (counted) instead of
letting its backlog grow without end while the broker is there."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.integration.test_pipeline import make_config, running
from tests.support.broker import Mosquitto
from tests.support.wait import until


async def test_overload_skips_polls_and_keeps_publishing(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    # 100 devices × 100 values every 10 ms: 1,000,000 readings/s offered.
    devices = [{"id": f"d{i:03}", "values": 100, "interval": 0.01} for i in range(100)]
    config = make_config(tmp_path, broker, devices, linger=0.2)

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "overloaded" in r.getMessage()]

    with caplog.at_level(logging.WARNING):
        async with running(config) as agent:
            await until(lambda: agent.counters.polls_skipped > 1000, 60, "polls skipped")
            await until(warnings, what="the 'overloaded' warning")
            published = agent.counters.readings_published
            # still publishing: more readings reach the broker while it stays overloaded
            await until(
                lambda: agent.counters.readings_published > published,
                what=f"readings published beyond {published} while overloaded",
            )
            # On purpose: 2 s more of overload, in which the warning must not come again.
            await asyncio.sleep(2)
    # Each cause is said once, however long it lasts. Which causes show depends on the CPU:
    # the buffer writer falls behind first; on a loaded machine the publisher may too.
    overloaded = [r.getMessage() for r in warnings()]
    assert overloaded, "no 'overloaded' warning"
    assert len(overloaded) == len(set(overloaded)), overloaded
