"""A real PostgreSQL for tests: a throw-away cluster (initdb) on a free loopback port.

The cluster lives in a temporary directory under /tmp (its unix socket too) and is removed at
``stop()``. PostgreSQL refuses to run as root: as root, the directory is handed to the
``postgres`` system user (created by the Debian package) and ``initdb``/``postgres`` run as that
user through ``setpriv``; as anyone else they run as the caller. Durability is switched off
(``fsync``, ``full_page_writes``): the tests kill clients, never the server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.broker import free_port

INSTALL_HINT = "the tests need PostgreSQL: run  sudo apt-get install postgresql  (or make test)"


def postgres_bindir() -> Path:
    """The folder of ``initdb`` and ``postgres``: on PATH, else Debian's newest
    /usr/lib/postgresql/N/bin (not on PATH by default)."""
    found = shutil.which("initdb")
    if found is not None:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError(INSTALL_HINT)
    return Path(candidates[-1]).parent


def _as_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix that drops root, and the uid/gid to own the cluster's files."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root and there is no `postgres` user to run PostgreSQL"
        ) from None
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    prefix = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    return prefix, user.pw_uid, user.pw_gid


class Postgres:
    """One cluster; :attr:`dsn` reaches its ``postgres`` database as superuser ``citygate``."""

    USER = "citygate"

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="citygate-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._prefix, uid, gid = _as_user()
        if uid is not None and gid is not None:
            os.chown(self.dir, uid, gid)
        self.log_path = self.dir / "postgres.log"

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """A libpq URL for ``database`` on this cluster (TCP on loopback)."""
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> Postgres:
        """initdb (the first time) and start; returns when the server accepts connections."""
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                [
                    *self._prefix,
                    str(self.bindir / "initdb"),
                    "--pgdata",
                    str(self.data),
                    "--username",
                    self.USER,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.process = subprocess.Popen(
                [
                    *self._prefix,
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.dir}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=50",
                ],
                stdout=log,
                stderr=log,
            )
        finally:
            os.close(log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_text()}")
            if self._accepting():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not start within {timeout:g} s:\n{self.log_text()}")

    def _accepting(self) -> bool:
        """The postmaster answers a startup packet (a listening socket is not enough: it
        listens before recovery ends)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                # An SSLRequest: a ready server answers one byte ("N": no SSL here).
                s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
                return s.recv(1) == b"N" and self._ready_file()
        except OSError:
            return False

    def _ready_file(self) -> bool:
        pid = self.data / "postmaster.pid"
        try:
            return "ready" in pid.read_text()
        except OSError:
            return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql; its output (unaligned, tuples only)."""
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
                *("-d", self.dsn_for(database), "-c", sql),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its DSN."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}"')
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server (fast shutdown) and remove the cluster (unless told not to: then
        :meth:`start` starts it again, data kept)."""
        if self.process is not None and self.process.poll() is None:
            # SIGINT: fast shutdown (SIGTERM's smart shutdown would wait for the clients).
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)
