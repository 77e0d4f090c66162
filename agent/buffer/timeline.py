"""The buffer's timeline: where samples' ages are measured.

Ages
----

Ages (``max_age``, :attr:`~citygate.buffer.BufferStats.oldest_unsent_age_s`) are never read
off the wall clock, which jumps: NTP steps it, an operator sets it, a gateway without a
real-time clock boots in the past and is stepped forward by years once NTP answers. Each row
also stores ``line``, the moment it entered the buffer on the buffer's own *timeline*: seconds
that advance with ``CLOCK_BOOTTIME`` (never jumps, counts suspend) while the agent runs. The
``meta`` row records, with every transaction, where the timeline stood (``line``) together
with the boot id, the boot clock and the wall clock (and whether it was synchronised). At open
the timeline resumes from that record:

* same boot (agent restarted or killed): plus the boot-clock time since the record: exact,
  whatever the wall clock did meanwhile;
* after a reboot, if the wall clock was synchronised both then and now: plus the wall-clock
  gap (never negative);
* otherwise (a reboot with an unsynchronised clock): the downtime is unknown and counts as 0:
  samples may then outlive ``max_age`` by that downtime, but a bad clock never expires them.

So a sample's age is the time it spent in the buffer, the timeline only grows, ``line`` grows
with ``seq``, and a wall clock set forward by 40 days, set back, or stepped from 1970 to now
expires nothing, reorders nothing, renumbers nothing (``seq`` is the buffer's own counter and
rows are sent in ``seq`` order). A new file starts its timeline at the wall time (its origin
means nothing; only differences count).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from citygate.clock import Timebase

__all__ = [
    "ClockRecord",
    "Timeline",
    "age",
    "first_line",
    "read_clock_record",
    "resume_line",
    "same_boot",
]


@dataclass(frozen=True, slots=True)
class ClockRecord:
    """The clocks at a commit, as the ``meta`` row keeps them (in its column order)."""

    line: float
    boot_id: str
    since_boot: float
    wall: float
    wall_synced: bool


def read_clock_record(db: sqlite3.Connection) -> ClockRecord | None:
    """The clocks at the last commit; None if never written (a file from before schema 2)."""
    row = db.execute(
        "SELECT line, boot_id, since_boot, wall, wall_synced FROM meta WHERE id = 1"
    ).fetchone()
    if row is None or any(v is None for v in row):
        return None
    line, boot_id, since_boot, wall, synced = row
    return ClockRecord(float(line), str(boot_id), float(since_boot), float(wall), bool(synced))


def same_boot(record: ClockRecord | None, timebase: Timebase) -> bool:
    """Whether ``record`` was written since the machine last booted."""
    boot_id = timebase.boot_id()
    return record is not None and bool(boot_id) and record.boot_id == boot_id


def resume_line(record: ClockRecord | None, timebase: Timebase) -> float:
    """Where the timeline stands now, from the last record (rules in "Ages")."""
    if record is None:
        return timebase.wall()
    boot_id = timebase.boot_id()
    since_boot = timebase.since_boot()
    if boot_id and boot_id == record.boot_id and since_boot >= record.since_boot:
        return record.line + (since_boot - record.since_boot)
    if record.wall_synced and timebase.synced():
        return record.line + max(0.0, timebase.wall() - record.wall)
    return record.line


def first_line(db: sqlite3.Connection) -> float | None:
    """When the first row (lowest seq) entered the buffer, on the timeline; None if empty."""
    row = db.execute("SELECT line FROM sample ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else float(row[0])


def age(line_now: float, first: float | None) -> float | None:
    """How long a row that entered at ``first`` has been buffered (never negative)."""
    return None if first is None else max(0.0, line_now - first)


class Timeline:
    """The timeline in this process: resumed at open, then advancing with the boot clock."""

    def __init__(self, timebase: Timebase) -> None:
        self.timebase = timebase
        self._line_at_open = 0.0
        self._boot_at_open = 0.0

    def resume(self, record: ClockRecord | None) -> None:
        """Continue from the last commit's record (at open)."""
        self._line_at_open = resume_line(record, self.timebase)
        self._boot_at_open = self.timebase.since_boot()

    def now(self) -> float:
        """Now on the timeline."""
        return self._line_at_open + max(0.0, self.timebase.since_boot() - self._boot_at_open)

    def cutoff(self, max_age: float) -> float:
        """Rows that entered the buffer before this line are older than ``max_age``."""
        return self.now() - max_age

    def record(self) -> ClockRecord:
        """The clocks now, for the ``meta`` row of the transaction being committed."""
        return ClockRecord(
            self.now(),
            self.timebase.boot_id(),
            self.timebase.since_boot(),
            self.timebase.wall(),
            self.timebase.synced(),
        )
