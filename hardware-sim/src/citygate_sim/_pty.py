"""A simulated serial line behind a pseudo-terminal, paced at its baud rate.

:class:`PtyLine` owns the master side of a pty (and a symlink to the slave, if
asked), reads what the client writes, and writes answers as the wire would
carry them: received bytes count as arrived once their characters would have
crossed the line, written bytes arrive one character time apart. A simulator
subclasses it and says what the received bytes mean (:meth:`PtyLine._received`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pty
import tty
from pathlib import Path
from typing import ClassVar

from ._service import Service

_CHUNK = 16  # bytes written at once while pacing an answer


class PtyLine(Service):
    """The pty, the link and the pacing of one simulated serial line.

    ``async with`` it to create the pty; :attr:`port` is the path a client opens
    (``link`` if given: a symlink to the pty, else the pty itself).
    """

    _logger: ClassVar[logging.Logger]

    def __init__(
        self, *, baudrate: int, character_bits: int, turnaround: float, link: Path | str | None
    ) -> None:
        self.baudrate = baudrate
        self.character_time = character_bits / baudrate
        self.turnaround = turnaround
        self.link = Path(link) if link is not None else None
        self.replies_sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._pty_path: str | None = None
        self._line_free = 0.0  # when the wire is idle again (loop time)
        self._timers: set[asyncio.TimerHandle] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> str:
        """What a client opens: the link, or the pty's slave path."""
        if self.link is not None:
            return str(self.link)
        if self._pty_path is None:
            raise RuntimeError("the simulator is not running")
        return self._pty_path

    async def start(self) -> None:
        """Create the pty (and the link) and start serving."""
        if self._master is not None:
            raise RuntimeError("already started")
        self._loop = asyncio.get_running_loop()
        self._open_pty()

    async def close(self) -> None:
        """Stop serving; the pty (and the link) go away."""
        self._close_pty()
        self._loop = None

    def _received(self, data: bytes, now: float) -> None:
        """Handle ``data`` the client wrote, read at loop time ``now``."""
        raise NotImplementedError

    def _arrived(self, data: bytes, now: float) -> float:
        """Count ``data`` in; when its last character has crossed the wire (loop time)."""
        self.bytes_received += len(data)
        # The bytes were written at once; on the wire they end len × char later.
        received_at = max(now, self._line_free) + len(data) * self.character_time
        self._line_free = received_at
        return received_at

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _open_pty(self) -> None:
        assert self._loop is not None
        master, slave = pty.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._pty_path = os.ttyname(slave)
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self._pty_path)
        self._loop.add_reader(master, self._readable)

    def _close_pty(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        master, slave = self._master, self._slave
        self._master = self._slave = None
        self._pty_path = None
        if master is not None:
            if self._loop is not None:
                self._loop.remove_reader(master)
            os.close(master)
        if slave is not None:
            os.close(slave)

    def _readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # no client has the slave open: nothing to read
            return
        if data:
            self._received(data, self._now())

    def _send(self, frame: bytes, start: float) -> None:
        """Write ``frame`` paced: each chunk when its last character would arrive."""
        start = max(start, self._line_free)
        self.replies_sent += 1
        for offset in range(0, len(frame), _CHUNK):
            chunk = frame[offset : offset + _CHUNK]
            due = start + (offset + len(chunk)) * self.character_time
            self._schedule(due, chunk)
        self._line_free = start + len(frame) * self.character_time

    def _schedule(self, due: float, chunk: bytes) -> None:
        assert self._loop is not None
        handle: asyncio.TimerHandle

        def write() -> None:
            self._timers.discard(handle)
            if self._master is None:
                return
            try:
                os.write(self._master, chunk)
                self.bytes_sent += len(chunk)
            except OSError as exc:
                self._logger.debug("write failed: %s", exc)

        handle = self._loop.call_at(due, write)
        self._timers.add(handle)
