"""Samples from the device supervisors → SenML bodies → the buffer, in batches.

Supervisors ``await submit(sample)`` into a bounded queue: when the buffer
cannot keep up, polls wait (back-pressure) instead of piling up in memory. One
writer task drains the queue into one buffer transaction per batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from citygate.buffer import AsyncBuffer, NewSample
from citygate.model import Sample
from citygate.senml import encode_body

log = logging.getLogger(__name__)

QUEUE_SAMPLES = 2000
BATCH_SAMPLES = 500
BATCH_READINGS = 5000


class BufferWriter:
    """Owns the queue between the supervisors and the buffer."""

    def __init__(self, buffer: AsyncBuffer, on_buffered: Callable[[int], None]) -> None:
        self._buffer = buffer
        self._on_buffered = on_buffered
        self._queue: asyncio.Queue[Sample | None] = asyncio.Queue(maxsize=QUEUE_SAMPLES)
        self._dropping = False
        self._congested = False
        self._congested_episodes = 0  # logged once; skipped polls are counted in metrics
        self._dropped_in_episode = 0

    def congested(self) -> bool:
        """True from when the queue is three quarters full until it is down to a
        quarter: the agent is overloaded (more offered than it can encode and
        store), and polls should be skipped rather than pile up."""
        size = self._queue.qsize()
        if not self._congested and size > QUEUE_SAMPLES * 3 // 4:
            self._congested = True
            self._congested_episodes += 1
            if self._congested_episodes == 1:
                log.warning("overloaded: skipping polls while the buffer writer catches up")
        elif self._congested and size < QUEUE_SAMPLES // 4:
            self._congested = False
        return self._congested

    async def submit(self, sample: Sample) -> None:
        """Queue a sample for the buffer; waits while the queue is full."""
        await self._queue.put(sample)

    async def close(self) -> None:
        """Let :meth:`run` write what is queued, then end."""
        await self._queue.put(None)

    async def run(self) -> None:
        while True:
            first = await self._queue.get()
            batch: list[Sample] = []
            readings = 0
            closing = first is None
            if first is not None:
                batch.append(first)
                readings = len(first.readings)
            # Bounded by readings too: one huge transaction would hold the buffer's
            # thread while the publisher waits to fetch and acknowledge.
            while (
                len(batch) < BATCH_SAMPLES and readings < BATCH_READINGS and not self._queue.empty()
            ):
                item = self._queue.get_nowait()
                if item is None:
                    closing = True
                    break
                batch.append(item)
                readings += len(item.readings)
            if batch:
                await self._write(batch)
            if closing:
                return

    async def _write(self, batch: list[Sample]) -> None:
        new = [
            NewSample(s.device_id, s.time, s.clock_synced, len(s.readings), encode_body(s.readings))
            for s in batch
        ]
        result = await self._buffer.append(new)
        if result.disk_full:
            pass  # the buffer logs disk-full episodes itself; they are not when_full's doing
        elif result.dropped:
            self._dropped_in_episode += result.dropped
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "buffer full: dropping samples (buffer.when_full); see metrics.dropped_samples"
                )
        elif self._dropping:
            self._dropping = False
            log.warning("buffer no longer full; %d samples were dropped", self._dropped_in_episode)
            self._dropped_in_episode = 0
        stored = sum(n.readings for n, seq in zip(new, result.seqs, strict=True) if seq is not None)
        if stored:
            self._on_buffered(stored)
