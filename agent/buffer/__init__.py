"""The store-and-forward buffer: SenML-encoded samples in SQLite until the broker acks them.

One :class:`Buffer` owns one SQLite file (``data_dir/buffer.sqlite3``) and is used from one
thread; :class:`AsyncBuffer` runs every call on one dedicated thread so the event loop never
waits on SQLite. The delivery loop is a transaction API in the Telegraf manner:
:meth:`Buffer.append` → :meth:`Buffer.fetch` after a cursor → publish → :meth:`Buffer.ack`
the seqs the broker acknowledged (only then are the rows deleted).

Durability (the file is always in WAL mode; every call that changes data is one transaction):

* ``"normal"`` — ``synchronous=NORMAL``: a commit is in the WAL file (in the OS page cache)
  before :meth:`Buffer.append` returns, but is not fsynced. Every committed sample survives a
  crash or ``kill -9`` of the agent. A power cut or kernel crash can lose the transactions
  committed since the last checkpoint (the WAL is fsynced only when it is checkpointed into the
  main file, by default every 1000 pages); the file is never corrupted by it.
* ``"full"`` — ``synchronous=FULL``: the WAL is fsynced at every commit, so a sample is on
  stable storage before :meth:`Buffer.append` returns and survives a power cut too (if the
  storage honours flushes).

One module per job, each with its part of the story in its docstring:

* agent/buffer/store.py — the store: append, fetch, ack, expire, stats; "Size" (what a sample
  costs against ``max_size``, compression, pages) and "Limits" (``max_age``, ``max_size``,
  ``when_full``, drops, a full disk);
* agent/buffer/recovery.py — opening: the lock, ``quick_check``, a corrupt or foreign file
  moved aside, a fresh file, schema upgrades;
* agent/buffer/seq.py — ``seq`` and its reservation in the side file ``<name>.seq-hwm``
  (never a seq twice, across corrupt files and power cuts);
* agent/buffer/timeline.py — "Ages": the ``CLOCK_BOOTTIME``-anchored timeline that
  ``max_age`` and the backlog's age are measured on, whatever the wall clock does;
* agent/buffer/schema.py — the file's format (tables, migrations, pragmas);
* agent/buffer/aio.py — :class:`AsyncBuffer`.

All of them log to the one logger ``citygate.buffer``.

Errors::

    CitygateError
    └── BufferError    fatal: cannot open or lock the file, unexpected SQLite error, a call
                       that hangs (AsyncBuffer's call_timeout)

(The name is the contract's; it shadows Python's builtin ``BufferError`` where imported
unqualified.)
"""

from __future__ import annotations

from citygate.buffer.aio import AsyncBuffer
from citygate.buffer.errors import BufferError
from citygate.buffer.schema import APPLICATION_ID, PAGE_SIZE, SCHEMA_VERSION, WAL_SIZE_LIMIT
from citygate.buffer.seq import SEQ_RESERVE_BLOCK
from citygate.buffer.store import (
    ACK_FOLD_MAX,
    ACK_FOLD_S,
    ROW_OVERHEAD,
    AppendResult,
    Buffer,
    BufferStats,
    NewSample,
    StoredSample,
    open_readonly_stats,
)

__all__ = [
    "ACK_FOLD_MAX",
    "ACK_FOLD_S",
    "APPLICATION_ID",
    "PAGE_SIZE",
    "ROW_OVERHEAD",
    "SCHEMA_VERSION",
    "SEQ_RESERVE_BLOCK",
    "WAL_SIZE_LIMIT",
    "AppendResult",
    "AsyncBuffer",
    "Buffer",
    "BufferError",
    "BufferStats",
    "NewSample",
    "StoredSample",
    "open_readonly_stats",
]
