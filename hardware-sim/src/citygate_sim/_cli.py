"""What every ``citygate-sim`` command does once its simulator is built: serve until told to stop.

:func:`run` prints the one ready line on stdout once the simulator serves, runs
until SIGINT or SIGTERM and returns the exit status: 0 when stopped, 1 when the
simulator cannot start (an :class:`OSError`, logged).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from ._service import Service

logger = logging.getLogger("citygate_sim")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(simulator: Service, ready_line: Callable[[], str], cannot_start: str) -> int:
    """Serve ``simulator`` until SIGINT/SIGTERM; the exit status.

    ``ready_line()`` is printed once it serves; ``cannot_start`` begins the error
    logged if it cannot (e.g. ``"cannot listen on 127.0.0.1:5020"``).
    """
    try:
        return asyncio.run(_serve(simulator, ready_line))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 0
    except OSError as error:
        logger.error("%s: %s", cannot_start, error)
        return 1


async def _serve(simulator: Service, ready_line: Callable[[], str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with simulator:
            print(ready_line(), flush=True)
            await stop.wait()
            logger.info("stopping")
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    return 0
