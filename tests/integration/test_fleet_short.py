"""The short variant of ``make fleet`` (issue 18): 50 emulated gateways and a real agent through a
3-node RabbitMQ cluster into PostgreSQL for 20 s, the node with the most gateways killed in the
middle; every sample offered must be in the table exactly once, and every gateway connected
again. The figures are printed (``pytest -s``); none is asserted but loss and reconnection."""

from __future__ import annotations

import asyncio

import pytest

from tests.fleet.__main__ import run_fleet
from tests.support.postgres import postgres_bindir
from tests.support.rabbitmq import INSTALL_HINT, rabbitmq_installed


def _postgres_installed() -> bool:
    try:
        postgres_bindir()
    except RuntimeError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(not rabbitmq_installed(), reason=INSTALL_HINT),
    pytest.mark.skipif(not _postgres_installed(), reason="needs PostgreSQL (make postgresql)"),
    pytest.mark.timeout(240),
]


def test_short_fleet_loses_nothing_through_a_node_kill() -> None:
    report = asyncio.run(
        run_fleet(broker="rabbitmq", gateways=50, seconds=20, agents=1, sinks=2, down=3, log=False)
    )
    print("\n".join(report.lines()))
    assert report.samples_lost == 0, report.notes
    assert report.agent_seq_gaps == 0, report.notes
    assert report.notes == []
    assert report.readings_offered > 0
    assert report.rows_committed >= report.readings_offered
    assert report.gateways_on_killed_node > 0
    assert report.reconnected_all_s is not None
