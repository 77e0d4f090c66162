"""The buffer for the event loop: :class:`AsyncBuffer` runs every call of a :class:`Buffer` on
one dedicated thread, so the event loop never waits on SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import ParamSpec, Self, TypeVar

from citygate.buffer.errors import BufferError
from citygate.buffer.store import AppendResult, Buffer, BufferStats, NewSample, StoredSample
from citygate.clock import SYSTEM, Timebase
from citygate.config import BufferSettings

__all__ = ["AsyncBuffer"]

_T = TypeVar("_T")
_P = ParamSpec("_P")


class AsyncBuffer:
    """:class:`Buffer` for the event loop: every call runs on one dedicated thread.

    ``call_timeout`` bounds each call, ``open_timeout`` the opening (its quick_check reads the
    whole file: seconds on an SD card); a call that takes longer raises BufferError (the thread
    may still finish it: an append that timed out may have been stored). ``async with`` opens
    and closes the buffer and the thread.
    """

    def __init__(
        self,
        path: Path,
        settings: BufferSettings,
        *,
        timebase: Timebase = SYSTEM,
        call_timeout: float = 30.0,
        open_timeout: float = 300.0,
    ) -> None:
        self.buffer = Buffer(path, settings, timebase=timebase)
        self.call_timeout = call_timeout
        self.open_timeout = open_timeout
        self._executor: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def apply_settings(self, settings: BufferSettings) -> None:
        """See :meth:`Buffer.apply_settings`; takes effect at once (the limits are read at each
        call on the buffer's thread, and replacing them is one atomic assignment)."""
        self.buffer.apply_settings(settings)

    async def _call(
        self, limit_s: float, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        if self._executor is None:
            raise BufferError(f"buffer {self.buffer.path} is not open")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit_s):
                return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))
        except TimeoutError as e:
            name = getattr(function, "__name__", "call")
            raise BufferError(f"buffer {name} did not finish within {limit_s:g} s") from e

    async def open(self) -> None:
        """Start the thread and open the buffer on it."""
        if self._executor is not None:
            raise BufferError(f"buffer {self.buffer.path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="citygate-buffer")
        try:
            await self._call(self.open_timeout, self.buffer.open)
        except BaseException:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise

    async def close(self) -> None:
        """Close the buffer on its thread, then stop the thread (idempotent)."""
        if self._executor is None:
            return
        try:
            await self._call(self.call_timeout, self.buffer.close)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def append(self, samples: Sequence[NewSample]) -> AppendResult:
        """See :meth:`Buffer.append`."""
        return await self._call(self.call_timeout, self.buffer.append, samples)

    async def fetch(
        self, after_seq: int, max_readings: int, max_samples: int = 10_000
    ) -> list[StoredSample]:
        """See :meth:`Buffer.fetch`."""
        return await self._call(
            self.call_timeout, self.buffer.fetch, after_seq, max_readings, max_samples
        )

    async def ack(self, seqs: Iterable[int], *, fold: bool = False) -> None:
        """See :meth:`Buffer.ack`."""
        await self._call(self.call_timeout, self.buffer.ack, list(seqs), fold=fold)

    async def flush_acks(self) -> None:
        """See :meth:`Buffer.flush_acks`."""
        await self._call(self.call_timeout, self.buffer.flush_acks)

    async def expire(self) -> int:
        """See :meth:`Buffer.expire`."""
        return await self._call(self.call_timeout, self.buffer.expire)

    async def stats(self) -> BufferStats:
        """See :meth:`Buffer.stats`."""
        return await self._call(self.call_timeout, self.buffer.stats)

    async def save_device_status(self, device_id: str, status_json: str) -> None:
        """See :meth:`Buffer.save_device_status`."""
        await self._call(self.call_timeout, self.buffer.save_device_status, device_id, status_json)

    async def device_statuses(self) -> dict[str, str]:
        """See :meth:`Buffer.device_statuses`."""
        return await self._call(self.call_timeout, self.buffer.device_statuses)

    async def add_dropped(self, n: int) -> None:
        """See :meth:`Buffer.add_dropped`."""
        await self._call(self.call_timeout, self.buffer.add_dropped, n)
