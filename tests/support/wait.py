"""Waiting for something to happen: poll a condition on the world until a deadline.

A test that sleeps "long enough" for something (a process to start, a message to
arrive, a log line, a file) is slow when the machine is idle and flaky when it is
loaded. These helpers wait for the thing itself and fail with a message naming it.

* :func:`wait_until` — blocking, for plain tests and threads;
* :func:`until` — the same for async tests: it yields to the event loop between polls.

Both return the predicate's (truthy) result, so a predicate can hand back what it
found (``report = wait_until(online, 30, "meter online")``).

The deadlines are generous on purpose: they only bound how long a *broken* test
takes to fail, never how long a passing one takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
"""Seconds: far above what anything awaited in the suite takes on a busy 2-core machine."""


def _timed_out(timeout: float, what: str, explain: Callable[[], str] | None) -> AssertionError:
    message = f"timed out after {timeout:g} s waiting for {what or 'a condition'}"
    if explain is not None:
        message += f"\n{explain()}"
    return AssertionError(message)


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
    *,
    explain: Callable[[], str] | None = None,
    interval: float = 0.02,
) -> T:
    """Poll ``predicate`` every ``interval`` s until it returns something truthy; return that.

    After ``timeout`` s raise :class:`AssertionError` naming ``what`` (followed by
    ``explain()``, e.g. a log, when given). The predicate is always tried once more
    after the deadline, so a slow last poll cannot fail a condition that now holds.
    """
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() > deadline
        result = predicate()
        if result:
            return result
        if expired:
            raise _timed_out(timeout, what, explain)
        time.sleep(interval)


async def until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
    *,
    explain: Callable[[], str] | None = None,
    interval: float = 0.02,
) -> T:
    """:func:`wait_until` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        expired = time.monotonic() > deadline
        result = predicate()
        if result:
            return result
        if expired:
            raise _timed_out(timeout, what, explain)
        await asyncio.sleep(interval)
