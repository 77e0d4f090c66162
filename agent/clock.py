"""The agent's clocks: a wall clock that may jump, a boot clock that never does.

* Wall time (:meth:`Timebase.wall`) stamps samples (``bt``); NTP may step it, an operator may
  set it, and a gateway without a real-time clock boots at some old date.
* Boot time (:meth:`Timebase.since_boot`, ``CLOCK_BOOTTIME``) counts seconds since this boot,
  suspend included, and never jumps; :meth:`Timebase.boot_id` tells one boot from the next.
  The buffer measures ages on it (see agent/buffer/timeline.py, "Ages").
* Is the wall clock synchronised? (mqtt.md: samples taken before NTP say so.) The kernel knows:
  ``adjtimex(2)`` returns TIME_ERROR while STA_UNSYNC is set, and NTP daemons
  (systemd-timesyncd, chrony, ntpd) clear it once they have disciplined the clock.

Override: ``CITYGATE_CLOCK=synced|unsynced`` in the environment overrides the kernel's answer
(for machines where no daemon tells the kernel, and for tests); it is read once, when a
:class:`SystemTimebase` is made. Tests that need other clocks inject their own
:class:`Timebase` (the agent, the buffer and the supervisors take one).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from collections.abc import Mapping
from typing import Protocol

__all__ = [
    "CLOCK_ENV",
    "SYSTEM",
    "ClockState",
    "SystemTimebase",
    "Timebase",
    "clock_override",
    "wall_time",
]

_TIME_ERROR = 5
_STA_UNSYNC = 0x0040
_RECHECK_S = 10.0
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
CLOCK_ENV = "CITYGATE_CLOCK"  # synced|unsynced: see the module docstring


class Timebase(Protocol):
    """The clocks the buffer needs (tests inject their own)."""

    def wall(self) -> float:
        """Unix time in seconds; may jump."""
        ...

    def since_boot(self) -> float:
        """Seconds since this boot, suspend included; never jumps."""
        ...

    def boot_id(self) -> str:
        """Different after every reboot."""
        ...

    def synced(self) -> bool:
        """Is the wall clock synchronised (NTP)?"""
        ...


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("reserved", ctypes.c_int * 11),
    ]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")  # runs ldconfig: once, not at every check
    return None if name is None else ctypes.CDLL(name, use_errno=True)


def _kernel_says_synced() -> bool:
    libc = _libc()
    if libc is None:
        return True
    timex = _Timex()
    state = libc.adjtimex(ctypes.byref(timex))
    if state == -1:
        return True  # cannot tell: do not mark every sample
    return state != _TIME_ERROR and not timex.status & _STA_UNSYNC


def wall_time() -> float:
    """The machine's wall clock (Unix seconds)."""
    return time.time()


def clock_override(environ: Mapping[str, str]) -> bool | None:
    """What ``CITYGATE_CLOCK`` in ``environ`` forces (synced: True), or None."""
    forced = environ.get(CLOCK_ENV, "").lower()
    return forced == "synced" if forced in ("synced", "unsynced") else None


class ClockState:
    """Cached answer to "is the clock synchronised?", re-asked every 10 s.

    ``forced`` (not None) is the answer, and the kernel is not asked."""

    def __init__(self, forced: bool | None = None) -> None:
        self._forced = forced
        self._synced = True
        self._checked_at = -_RECHECK_S

    def synced(self) -> bool:
        if self._forced is not None:
            return self._forced
        now = time.monotonic()
        if now - self._checked_at >= _RECHECK_S:
            self._checked_at = now
            self._synced = _kernel_says_synced()
        return self._synced


class SystemTimebase:
    """The machine's clocks; ``CITYGATE_CLOCK`` is read once, here (see the module docstring)."""

    def __init__(self) -> None:
        self._state = ClockState(clock_override(os.environ))
        self._boot_id: str | None = None

    def wall(self) -> float:
        return time.time()

    def since_boot(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def boot_id(self) -> str:
        if self._boot_id is None:
            try:
                with open(_BOOT_ID_PATH, encoding="ascii") as f:
                    self._boot_id = f.read().strip()
            except OSError:
                self._boot_id = ""  # unknown: every start looks like a new boot
        return self._boot_id

    def synced(self) -> bool:
        return self._state.synced()


SYSTEM = SystemTimebase()
