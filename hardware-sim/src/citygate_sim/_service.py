"""The lifecycle every simulator shares: ``start``/``close``, and ``async with`` around them."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Service:
    """A simulator that serves between :meth:`start` and :meth:`close`; ``async with`` it."""

    async def start(self) -> None:
        """Start serving."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop serving."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
