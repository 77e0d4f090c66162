"""``python -m citygate_sim`` (``citygate-sim``) as a subprocess, for the command tests."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator

TIMEOUT = 10.0


async def start(*args: str) -> asyncio.subprocess.Process:
    """``python -m citygate_sim ARGS`` with stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "citygate_sim",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


@contextlib.asynccontextmanager
async def serving(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """The running command and the first line it printed; killed on exit if still running."""
    process = await start(*args)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = (await process.stdout.readline()).decode()
        yield process, line
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stop(
    process: asyncio.subprocess.Process, stop_signal: int = signal.SIGTERM
) -> tuple[int | None, bytes]:
    """Send ``stop_signal``; the exit status and what the command still printed on stdout."""
    process.send_signal(stop_signal)
    async with asyncio.timeout(TIMEOUT):
        rest, _ = await process.communicate()
    return process.returncode, rest


async def finish(*args: str) -> tuple[int | None, bytes, bytes]:
    """Run the command to its end (a usage error, say): exit status, stdout, stderr."""
    process = await start(*args)
    async with asyncio.timeout(TIMEOUT):
        stdout, stderr = await process.communicate()
    return process.returncode, stdout, stderr
