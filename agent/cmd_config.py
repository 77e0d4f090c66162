"""The ``config`` remote command: push a whole gateway.toml, with automatic rollback.

mqtt.md "Commands" → ``config``, config.md ``[commands] rollback_after``. With
``args: {"toml": "<the whole file>", "sha256": "<hex of its UTF-8 bytes>"}``:

1. **Check.** :func:`parse_args` (``bad_request``); the text goes to a fresh temporary file
   next to the running config (``O_EXCL | O_NOFOLLOW``, 0600), so that includes, profiles and
   relative paths resolve as they will, and :func:`citygate.config.load` reads it as
   ``citygate check`` does (``invalid_config`` with the ``FILE:LINE:COL: message`` lines,
   naming the config file, not the temporary). A new ``gateway.id`` or ``gateway.data_dir``
   is refused too (a reload cannot change them).
2. **Swap.** The running file's bytes are kept (in memory and as ``<config>.previous``), the
   fsynced temporary is renamed over the config file and the directory fsynced; the agent
   reloads (:meth:`ConfigTarget.reload_now`, the SIGHUP path).
3. **Watch.** Until ``rollback_after`` (the running config's) the agent must become healthy
   (:func:`health_problem`): broker connected, and every device that was online before the
   swap and is still configured online again — a device the reload restarted must have been
   read since. Not in time, or the reload refused the file: the previous bytes are put back
   the same way and reloaded, and the reply is ``rolled_back`` with the reason.

The buffer and its seq are never touched (a reload does not touch them). One config command
at a time; another answers ``busy``. If the agent stops while a pushed config is being
watched, the previous file is put back on disk (the next start runs the known-good one).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from citygate.commands import CommandError, Request
from citygate.config import CONFIG_MAX_BYTES, Config, ConfigError, Problem, load
from citygate.drivers.api import DriverFactory
from citygate.safefile import create_exclusive, fsync_directory, read_regular, write_atomic
from citygate.status import DeviceStatus, StatusBoard

if TYPE_CHECKING:
    from citygate.app import ReloadOutcome

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S: Final = 60.0  # reading the pushed config (and its profiles), as a reload does
FILE_TIMEOUT_S: Final = 30.0  # writing, fsyncing, renaming the config files
HEALTH_PERIOD_S: Final = 0.2
RECONNECT_WAIT_S: Final = 30.0  # after a rollback, for the broker before the reply goes out
PREVIOUS_SUFFIX: Final = ".previous"
RESTART_ONLY: Final = "changing gateway.id/data_dir needs a restart on site"
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class ConfigPush:
    """The checked arguments of a ``config`` request."""

    data: bytes
    """The new gateway.toml, UTF-8."""
    sha256: str
    """Its SHA-256, lower-case hex."""


def parse_args(args: Mapping[str, Any]) -> ConfigPush:
    """The push in ``args``, or :class:`CommandError` ``bad_request``."""
    text, digest = args.get("toml"), args.get("sha256")
    if set(args) != {"toml", "sha256"} or not isinstance(text, str) or not isinstance(digest, str):
        raise CommandError(
            "bad_request", '"args": expected {"toml": "<gateway.toml>", "sha256": "<hex>"}'
        )
    if not _HEX64.fullmatch(digest):
        raise CommandError("bad_request", '"args.sha256": expected 64 hex digits')
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise CommandError("bad_request", '"args.toml": not valid Unicode text') from None
    if len(data) > CONFIG_MAX_BYTES:
        raise CommandError("bad_request", f'"args.toml": larger than {CONFIG_MAX_BYTES} bytes')
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest.lower():
        raise CommandError(
            "bad_request", f'"args.sha256" does not match the text (its SHA-256 is {actual})'
        )
    return ConfigPush(data, actual)


def located(problems: Iterable[Problem], temporary: Path, real: Path) -> list[str]:
    """``FILE:LINE:COL: message`` lines naming ``real`` where they name ``temporary``."""
    return [str(p).replace(str(temporary), str(real)) for p in problems]


def restart_only_change(running: Config, new: Config) -> str | None:
    """Why ``new`` cannot be swapped in by a reload (``gateway.id``/``data_dir`` differ)."""
    changed = [
        f"gateway.{name} {getattr(running.gateway, name)!s} → {getattr(new.gateway, name)!s}"
        for name in ("id", "data_dir")
        if getattr(running.gateway, name) != getattr(new.gateway, name)
    ]
    return f"{RESTART_ONLY} ({'; '.join(changed)})" if changed else None


def online_before(statuses: Mapping[str, DeviceStatus]) -> dict[str, float | None]:
    """Device id → last sample time, of every device online (without error) now."""
    return {
        device_id: status.last_sample
        for device_id, status in statuses.items()
        if status.state == "online" and status.error is None
    }


def health_problem(
    before: Mapping[str, float | None],
    *,
    connected: bool,
    broker: str,
    configured: Collection[str],
    statuses: Mapping[str, DeviceStatus],
    started: Collection[str],
) -> str | None:
    """Why the agent is not healthy after a swap, or None.

    ``before`` is :func:`online_before` at the swap; ``configured`` the devices the agent now
    runs, ``started`` those the reload added or restarted (they must have been read since:
    their status still says what the old driver saw)."""
    if not connected:
        return f"the broker {broker} is not connected"
    for device_id, last_sample in before.items():
        if device_id not in configured:
            continue  # removed or disabled on purpose
        status = statuses.get(device_id)
        if status is None or status.state != "online" or status.error is not None:
            error = "" if status is None or status.error is None else f": {status.error}"
            return f"device {device_id} (online before) is not online again{error}"
        if device_id in started and (
            status.last_sample is None
            or (last_sample is not None and status.last_sample <= last_sample)
        ):
            return f"device {device_id} (online before) has not been read since its restart"
    return None


class _Broker(Protocol):
    @property
    def connected(self) -> bool: ...


class ConfigTarget(Protocol):
    """What the command needs of the agent (:class:`citygate.app.Agent`)."""

    @property
    def config(self) -> Config: ...

    @property
    def board(self) -> StatusBoard: ...

    @property
    def publisher(self) -> _Broker: ...

    async def reload_now(self) -> ReloadOutcome: ...


class ConfigCommand:
    """Runs ``config`` requests for ``target`` (see the module docstring); ``factories``
    are the drivers' factories the agent loads its config with."""

    def __init__(self, target: ConfigTarget, factories: Mapping[str, DriverFactory]) -> None:
        self._target = target
        self._factories = factories
        self._lock = asyncio.Lock()

    async def run(self, request: Request) -> dict[str, Any]:
        """The reply's result once the pushed config is healthy; else :class:`CommandError`
        (``bad_request``, ``busy``, ``invalid_config``, ``rolled_back``)."""
        push = parse_args(request.args)
        if self._lock.locked():
            raise CommandError("busy", "another config command is running")
        async with self._lock:
            return await self._push(push)

    async def _push(self, push: ConfigPush) -> dict[str, Any]:
        running = self._target.config
        path = running.path
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            async with asyncio.timeout(FILE_TIMEOUT_S):
                await asyncio.to_thread(_write_new, temporary, push.data)
            new = await self._check(temporary, path)
            refusal = restart_only_change(running, new)
            if refusal is not None:
                raise CommandError("invalid_config", refusal)
            before = online_before(self._target.board.devices)
            async with asyncio.timeout(FILE_TIMEOUT_S):
                previous = await asyncio.to_thread(_swap, path, temporary)
        except TimeoutError:  # an OSError too: first
            raise CommandError("timeout", f"{path}: the disk did not answer") from None
        except OSError as exc:
            raise CommandError("invalid_config", f"{path}: cannot swap: {_why(exc)}") from None
        finally:
            temporary.unlink(missing_ok=True)
        log.info(
            "config command: %s replaced (sha256 %s…); reloading, then watching health for %g s",
            path,
            push.sha256[:12],
            running.commands.rollback_after,
        )
        try:
            return await self._watch(push, before, running.commands.rollback_after, previous)
        except asyncio.CancelledError:
            # Stopping with an unproven config: the next start gets the one that was running.
            _restore(path, previous)
            log.warning("config command: interrupted; %s restored to the previous config", path)
            raise

    async def _check(self, temporary: Path, path: Path) -> Config:
        """Load ``temporary`` as ``citygate check`` loads a file: the config, or
        ``invalid_config`` with the problems placed in ``path``."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                return await asyncio.to_thread(load, temporary, self._factories)
        except ConfigError as exc:
            lines = located(exc.problems, temporary, path)
            raise CommandError("invalid_config", "\n".join(lines)) from None
        except TimeoutError:
            raise CommandError(
                "invalid_config", f"{path}: not read within {CHECK_TIMEOUT_S:g} s"
            ) from None

    async def _watch(
        self, push: ConfigPush, before: Mapping[str, float | None], limit: float, previous: bytes
    ) -> dict[str, Any]:
        start = time.monotonic()
        outcome = await self._target.reload_now()
        if not outcome.applied:
            reason = f"the reload refused the new config: {outcome.reason}"
        else:
            started = frozenset(outcome.started)
            while True:
                problem = self._problem(before, started)
                elapsed = time.monotonic() - start
                if problem is None:
                    log.info("config command: healthy after %.1f s; keeping it", elapsed)
                    return {
                        "applied": True,
                        "rolled_back": False,
                        "sha256": push.sha256,
                        "healthy_after_s": round(elapsed, 1),
                    }
                if elapsed >= limit:
                    break
                await asyncio.sleep(HEALTH_PERIOD_S)
            reason = f"not healthy within {limit:g} s: {problem}"
        path = self._target.config.path
        log.warning("config command: %s; restoring the previous config", reason)
        async with asyncio.timeout(FILE_TIMEOUT_S):
            await asyncio.to_thread(_restore, path, previous)
        again = await self._target.reload_now()
        if not again.applied:
            log.error("config command: the previous config did not reload: %s", again.reason)
            reason += f"; the previous config did not reload either: {again.reason}"
        # The reply goes out on the publisher's connection, which a reload may have replaced.
        for _ in range(round(RECONNECT_WAIT_S / HEALTH_PERIOD_S)):
            if self._target.publisher.connected:
                break
            await asyncio.sleep(HEALTH_PERIOD_S)
        raise CommandError("rolled_back", reason, {"rolled_back": True})

    def _problem(self, before: Mapping[str, float | None], started: Collection[str]) -> str | None:
        target = self._target
        return health_problem(
            before,
            connected=target.publisher.connected,
            broker=target.config.mqtt.url,
            configured={d.id for d in target.config.devices if d.enabled},
            statuses=target.board.devices,
            started=started,
        )


def _write_new(path: Path, data: bytes) -> None:
    """``data`` in a new file at ``path`` (0600, nothing followed), fsynced."""
    fd = create_exclusive(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap(path: Path, new: Path) -> bytes:
    """Rename ``new`` over ``path``; the bytes it had, also kept as ``<path>.previous``."""
    previous = read_regular(path, max_bytes=CONFIG_MAX_BYTES)
    write_atomic(path.with_name(path.name + PREVIOUS_SUFFIX), previous)
    os.replace(new, path)
    fsync_directory(path.parent)
    return previous


def _restore(path: Path, previous: bytes) -> None:
    write_atomic(path, previous)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
