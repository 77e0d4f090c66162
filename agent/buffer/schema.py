"""The buffer file's format: application id, schema and its migrations, page and WAL
settings, and the ``meta`` row's counters. The store writes it, recovery checks and creates
it, :func:`citygate.buffer.store.open_readonly_stats` reads it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT_S",
    "MIGRATIONS",
    "PAGE_SIZE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "WAL_SIZE_LIMIT",
    "Counters",
    "pragma_int",
    "read_counters",
    "scalar_int",
]

APPLICATION_ID = 0x43477462  # "CGtb": PRAGMA application_id of a citygate buffer
SCHEMA_VERSION = 2  # PRAGMA user_version; MIGRATIONS[v - 1] upgrades v to v + 1
WAL_SIZE_LIMIT = 4 * 1024 * 1024
PAGE_SIZE = 4096  # the flash/file-system block: one commit of a small sample writes few bytes
BUSY_TIMEOUT_S = 5.0
_UNIX_NOW_SQL = "((julianday('now') - 2440587.5) * 86400.0)"
MIGRATIONS: tuple[tuple[str, ...], ...] = (  # statements, run in one transaction
    (  # 1 → 2: the timeline (agent/buffer/timeline.py, "Ages")
        "ALTER TABLE sample ADD COLUMN line REAL NOT NULL DEFAULT 0",
        f"UPDATE sample SET line = CASE WHEN clock_synced THEN time ELSE {_UNIX_NOW_SQL} END",
        "ALTER TABLE meta ADD COLUMN line REAL",
        "ALTER TABLE meta ADD COLUMN boot_id TEXT",
        "ALTER TABLE meta ADD COLUMN since_boot REAL",
        "ALTER TABLE meta ADD COLUMN wall REAL",
        "ALTER TABLE meta ADD COLUMN wall_synced INTEGER",
    ),
)

SCHEMA = """
CREATE TABLE meta (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq           INTEGER NOT NULL,
    dropped_samples    INTEGER NOT NULL,
    backlog_samples    INTEGER NOT NULL,
    backlog_readings   INTEGER NOT NULL,
    backlog_body_bytes INTEGER NOT NULL,
    -- where the timeline stood at the last commit, and the clocks then (NULL: never written)
    line               REAL,
    boot_id            TEXT,
    since_boot         REAL,
    wall               REAL,
    wall_synced        INTEGER
);
CREATE TABLE sample (
    seq          INTEGER PRIMARY KEY,
    time         REAL NOT NULL,
    clock_synced INTEGER NOT NULL,
    readings     INTEGER NOT NULL,
    device_id    TEXT NOT NULL,
    body         BLOB NOT NULL,  -- zlib(UTF-8 SenML body)
    line         REAL NOT NULL   -- when it entered the buffer, on the timeline
);
CREATE INDEX sample_synced_time ON sample (time) WHERE clock_synced = 1;
CREATE TABLE device_status (
    device_id TEXT PRIMARY KEY,
    status    TEXT NOT NULL
) WITHOUT ROWID;
"""


@dataclass(slots=True)
class Counters:
    """The ``meta`` row's counters, in its column order (``next_seq`` … ``backlog_body_bytes``).

    The store changes them on a copy that it keeps only on commit.
    """

    next_seq: int
    dropped: int
    samples: int
    readings: int
    body_bytes: int


def read_counters(db: sqlite3.Connection) -> Counters | None:
    """The ``meta`` row's counters; None if the row is missing."""
    row = db.execute(
        "SELECT next_seq, dropped_samples, backlog_samples, backlog_readings,"
        " backlog_body_bytes FROM meta WHERE id = 1"
    ).fetchone()
    return None if row is None else Counters(*(int(v) for v in row))


def pragma_int(db: sqlite3.Connection, name: str) -> int:
    """The value of an integer pragma."""
    return scalar_int(db, f"PRAGMA {name}")


def scalar_int(db: sqlite3.Connection, sql: str) -> int:
    """The first column of the first row of ``sql``, as an int."""
    row = db.execute(sql).fetchone()
    return int(row[0])
