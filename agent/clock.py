"""Is the system clock synchronised? (mqtt.md: samples taken before NTP say so.)

The kernel knows: ``adjtimex(2)`` returns TIME_ERROR while STA_UNSYNC is set, and
NTP daemons (systemd-timesyncd, chrony, ntpd) clear it once they have disciplined
the clock. ``CITYGATE_CLOCK=synced|unsynced`` overrides the kernel for tests and
for machines where no daemon tells the kernel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time

_TIME_ERROR = 5
_STA_UNSYNC = 0x0040
_RECHECK_S = 10.0


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


def _kernel_says_synced() -> bool:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return True
    libc = ctypes.CDLL(libc_name, use_errno=True)
    timex = _Timex()
    state = libc.adjtimex(ctypes.byref(timex))
    if state == -1:
        return True  # cannot tell: do not mark every sample
    return state != _TIME_ERROR and not timex.status & _STA_UNSYNC


class ClockState:
    """Cached answer to "is the clock synchronised?", re-asked every 10 s."""

    def __init__(self) -> None:
        self._synced = True
        self._checked_at = -_RECHECK_S

    def synced(self) -> bool:
        now = time.monotonic()
        if now - self._checked_at >= _RECHECK_S:
            self._checked_at = now
            forced = os.environ.get("CITYGATE_CLOCK", "").lower()
            if forced in ("synced", "unsynced"):
                self._synced = forced == "synced"
            else:
                self._synced = _kernel_says_synced()
        return self._synced
