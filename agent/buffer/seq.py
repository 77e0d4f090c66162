"""Seq reservation: the high-water mark that keeps ``seq`` from ever being handed out twice.

``seq`` is gateway-wide and strictly increasing. The next value lives in the ``meta`` row,
updated in the transaction that uses it, so an emptied backlog does not reset it. A side file
``<name>.seq-hwm`` holds a reservation: every seq ever handed out is below it. It is written
(fsynced, atomically replaced) before a seq beyond it is used, a block of
:data:`SEQ_RESERVE_BLOCK` at a time, so a buffer started fresh (file lost or moved aside as
corrupt) continues above every seq the old one could have published. With ``"normal"`` a power
cut can also take the last commits (and the seqs they used, perhaps already published) out of
the file itself, so the first open after a reboot continues above the reservation too, unless
the last close was clean: a clean close checkpoints (fsyncing the WAL and the file) and
shrinks the reservation to ``next_seq``. (A crash without a reboot loses nothing: the page
cache outlives the process.)
"""

from __future__ import annotations

import logging
from pathlib import Path

from citygate.safefile import read_regular, write_atomic

__all__ = ["SEQ_RESERVE_BLOCK", "SeqReservation"]

log = logging.getLogger("citygate.buffer")  # one logger for the whole buffer
SEQ_RESERVE_BLOCK = 10_000
_MAX_FILE_BYTES = 64  # a seq and a newline; anything larger is not ours


class SeqReservation:
    """The side file ``<name>.seq-hwm`` of the buffer at ``buffer_path``: every seq ever
    handed out is below :attr:`reserved`."""

    def __init__(self, buffer_path: Path) -> None:
        self.buffer_path = buffer_path
        self.path = buffer_path.with_name(buffer_path.name + ".seq-hwm")
        self._reserved = 0

    @property
    def reserved(self) -> int:
        """Every seq ever used is below this (the side file says so); 0: no side file."""
        return self._reserved

    def load(self) -> int:
        """Read the side file (at open); a missing or unreadable one counts as 0 (logged)."""
        self._reserved = self._read()
        return self._reserved

    def _read(self) -> int:
        try:  # a symlink or a device planted there is refused: never followed, never read on
            raw = read_regular(self.path, max_bytes=_MAX_FILE_BYTES, follow_symlinks=False)
            text = raw.decode("ascii").strip()
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as e:
            log.warning(
                "buffer: cannot read %s (%s); relying on the buffer file alone", self.path, e
            )
            return 0
        if not text.isdigit():
            log.warning(
                "buffer: %s holds %r, not a seq; relying on the buffer file alone",
                self.path,
                text[:40],
            )
            return 0
        return int(text)

    def cover(self, end: int) -> None:
        """Make sure every seq below ``end`` is covered by the side file (fsynced), reserving
        a block ahead. Raises OSError."""
        if end <= self._reserved:
            return
        self._write(end + SEQ_RESERVE_BLOCK)

    def shrink_to(self, next_seq: int) -> None:
        """After a clean close made every commit durable: reserve no more than was used, so
        the next boot needs no seq jump. Raises OSError."""
        if self._reserved > next_seq:
            self._write(next_seq)

    def next_seq_at_open(self, next_seq: int, *, commits_may_be_lost: bool) -> int:
        """The seq to continue at, given the file's ``next_seq``.

        ``commits_may_be_lost``: first open since a reboot with durability "normal": the last
        commits may have been lost with the page cache, and with them seqs already published.
        Then continue above the reservation (fsynced before any seq is used) so no seq is
        handed out twice.
        """
        if not commits_may_be_lost or self._reserved <= next_seq:
            return next_seq
        log.info(
            "buffer %s: first start since a reboot: seq continues at %d, above every seq handed"
            " out before (commits not yet on disk at a power cut may be lost, never reused)",
            self.buffer_path,
            self._reserved,
        )
        return self._reserved

    def _write(self, reserved: int) -> None:
        # <name>.seq-hwm.tmp is created afresh (O_EXCL | O_NOFOLLOW): a symlink planted there
        # is removed, never written through; the rename replaces a symlink at the side file.
        write_atomic(self.path, f"{reserved}\n".encode("ascii"), durable=True)
        self._reserved = reserved
