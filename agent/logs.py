"""Logging for operators: one line per event, the device id first.

Under systemd, lines carry a syslog priority prefix (``<4>``) and no timestamp:
journald adds both. At a terminal, lines carry the time and level.
"""

from __future__ import annotations

import logging
import sys

from citygate.systemd import under_systemd

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def setup(level: str = "info") -> None:
    """Configure the root logger to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    if under_systemd():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if root.level > logging.DEBUG:
        # Libraries log every retry and reconnect; the agent says what matters once.
        for noisy in ("aiomqtt", "mqtt", "bleak", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
