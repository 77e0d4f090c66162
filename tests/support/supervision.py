"""Fakes that drive a :class:`~citygate.supervise.DeviceSupervisor` on a test's own clock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from citygate.drivers.api import Measurement


class FakeClock:
    """A monotonic clock that moves only when the supervisor sleeps or a poll works."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
        await asyncio.sleep(0)


class ScriptedDriver:
    """A poll driver whose polls take ``cost(n)`` clock seconds and fail as told."""

    def __init__(self, clock: FakeClock, script: Any, stop_after: int) -> None:
        self.clock = clock
        self.script = script
        self.stop_after = stop_after
        self.polls: list[float] = []
        self.done = asyncio.Event()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def poll(self) -> Sequence[Measurement]:
        self.polls.append(self.clock.now)
        if len(self.polls) >= self.stop_after:
            self.done.set()
        cost, error = self.script(len(self.polls))
        self.clock.now += cost
        await asyncio.sleep(0)
        if error is not None:
            raise error
        return [Measurement("power", 1.0, "W")]
