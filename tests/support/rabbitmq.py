"""A real RabbitMQ cluster for tests: N nodes with the MQTT plugin on loopback, in a temp dir.

Debian bookworm ships RabbitMQ 3.10.8 (Erlang 25): its MQTT plugin speaks 3.1 and 3.1.1 only.
Each node has its own node name (``<prefix><i>@localhost``), AMQP, MQTT and Erlang
distribution ports, data (mnesia, quorum logs) and log folders under one temporary directory,
and all share one Erlang cookie (``$HOME/.erlang.cookie``, HOME being that directory) and the
system's epmd (port 4369, started by the first node if none runs). The nodes form the cluster at
boot (classic-config peer discovery, every node listing all: no separate ``join_cluster`` step),
one after the other (:attr:`Cluster.start_seconds`). Measured on the
shared 2-core VM: 19-22 s for three nodes (one node alone: 7.6 s); a killed node is back, in
the cluster, 3.5 s after ``start()``.

The MQTT plugin keeps a QoS 1 subscription of a persistent session (clean session off) in a
*quorum* queue (``mqtt.durable_queue_type = quorum``): replicated to every node, so the session
survives the loss of the node that created it. A node is killed with SIGKILL (its Erlang VM:
``kill()``) or stopped cleanly (``stop()``), then started again with its data (``start()``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.broker import free_port

INSTALL_HINT = (
    "the fleet tests need RabbitMQ: run  sudo apt-get install rabbitmq-server  (or make rabbitmq)"
)
SBIN = Path("/usr/lib/rabbitmq/bin")


def rabbitmq_installed() -> bool:
    """Debian's rabbitmq-server with its MQTT plugin is there."""
    return (SBIN / "rabbitmq-server").exists() and any(
        Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins/rabbitmq_mqtt-*")
    )


def rabbitmq_version() -> str:
    """The installed server's version (from its folder name), e.g. ``3.10.8``."""
    for path in Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*"):
        return path.name.removeprefix("rabbitmq_server-")
    raise RuntimeError(INSTALL_HINT)


class Node:
    """One RabbitMQ node of a :class:`Cluster`."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"{cluster.prefix}{index + 1}@localhost"
        self.amqp_port = free_port()
        self.mqtt_port = free_port()
        self.dist_port = free_port()
        self.dir = cluster.dir / f"node{index + 1}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "console.log"

    def log_text(self) -> str:
        """The node's console output and its log file (the end of each)."""
        texts = []
        for path in (self.log_path, *sorted((self.dir / "log").glob("*.log"))):
            with contextlib.suppress(OSError):
                texts.append(f"== {path.name}\n" + path.read_text(errors="replace")[-8000:])
        return "\n".join(texts)

    def env(self) -> dict[str, str]:
        """The environment that makes ``rabbitmq-server``/``rabbitmqctl`` this node."""
        return {
            **os.environ,
            "HOME": str(self.cluster.dir),  # .erlang.cookie: shared by the cluster and the CLI
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_BASE": str(self.dir),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "node.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_ENABLED_PLUGINS": "rabbitmq_mqtt",
            # No systemd, no console log rotation: everything to files in our folder.
            "RABBITMQ_LOGS": str(self.dir / "log" / "node.log"),
            # A small VM on a shared 2-core machine: fewer scheduler threads, no busy-waiting.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 2:2 +sbwt none +sbwtdcpu none +sbwtdio none",
        }

    def _write_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "log").mkdir(exist_ok=True)
        peers = "\n".join(
            f"cluster_formation.classic_config.nodes.{n.index + 1} = {n.name}"
            for n in self.cluster.nodes
        )
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "mqtt.durable_queue_type = quorum\n"
            # The default (10) would throttle a sink's in-flight window to 10 messages.
            "mqtt.prefetch = 500\n"
            "cluster_formation.peer_discovery_backend = classic_config\n"
            f"{peers}\n"
            # Don't stop publishers when the (shared) test machine is low on disk or memory.
            "disk_free_limit.absolute = 50MB\n"
            "vm_memory_high_watermark.relative = 0.6\n"
            "log.file.level = info\n"
            "log.console = false\n"
        )
        (self.dir / "advanced.config").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")

    def spawn(self) -> None:
        """Start the node's VM (returns at once; :meth:`wait_ready` waits for it)."""
        if self.process is not None and self.process.poll() is None:
            return
        self._write_files()
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.process = subprocess.Popen(
                [str(SBIN / "rabbitmq-server")],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: kill() takes the VM too
            )
        finally:
            os.close(log)

    def accepting_mqtt(self) -> bool:
        """An MQTT 3.1.1 CONNECT gets CONNACK "accepted". (The listener is up before the
        plugin's client-id tracker, a Raft cluster across the nodes, has a leader: until then
        the plugin answers "server unavailable" after 5 s.)"""
        client_id = b"cg-probe"
        body = b"\x00\x04MQTT\x04\x02\x00\x1e" + len(client_id).to_bytes(2, "big") + client_id
        try:
            with socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=10.0) as s:
                s.sendall(bytes([0x10, len(body)]) + body)
                answer = s.recv(4)
                if answer == b"\x20\x02\x00\x00":
                    s.sendall(b"\xe0\x00")  # DISCONNECT
                    return True
                return False
        except OSError:
            return False

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the node is booted and accepts MQTT clients (raises with the end of its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq node {self.name} exited:\n{self.log_text()}")
            if self.accepting_mqtt():
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"rabbitmq node {self.name} did not accept MQTT clients in {timeout:g} s:\n"
            f"{self.log_text()}"
        )

    def start(self, timeout: float = 90.0) -> None:
        """Start (again, with its data) and wait until its MQTT listener is up."""
        self.spawn()
        self.wait_ready(timeout)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n NODE ARGS``; its standard output (raises on failure)."""
        done = subprocess.run(
            [str(SBIN / "rabbitmqctl"), "-n", self.name, "-q", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def kill(self) -> None:
        """SIGKILL the node's VM (a crash: no clean leave, wills fire on the others); returns
        when it is gone."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self._wait_group_gone()
        self.process = None

    def _wait_group_gone(self, timeout: float = 10.0) -> None:
        """The VM (beam.smp, in the script's process group) outlives the script for a moment."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown (SIGTERM), SIGKILL after ``timeout``."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
                self._wait_group_gone(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Cluster:
    """``size`` RabbitMQ nodes forming one cluster; ``urls`` are their MQTT listeners."""

    def __init__(self, size: int = 3, *, workdir: Path | None = None) -> None:
        if not rabbitmq_installed():
            raise RuntimeError(INSTALL_HINT)
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="citygate-rmq-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._owns_dir = workdir is None
        # Unique node names: two clusters (or a stale one) on this host never meet.
        self.prefix = f"cg{secrets.token_hex(3)}n"
        self.nodes: list[Node] = []
        self.nodes = [Node(self, i) for i in range(size)]
        self.start_seconds = 0.0
        cookie = self.dir / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 120.0) -> Cluster:
        """Start the nodes one after the other; returns when the cluster has them all running.

        Nodes that join at the same moment can leave the MQTT plugin's client-id tracker (a
        Raft cluster across the nodes) without a leader on one of them, which then answers
        every CONNECT with "server unavailable" for good (the likely cause of a node that never
        became ready in one CI run). So each node joins alone, and one that is not ready in
        ``timeout / 2`` is killed and started again with its data, as an operator would; what
        its log said goes to stderr."""
        began = time.monotonic()
        try:
            for node in self.nodes:
                try:
                    node.start(timeout / 2)
                except RuntimeError as stuck:
                    if not node.running:
                        raise
                    print(f"{stuck}\nrestarting {node.name} once", file=sys.stderr)
                    node.kill()
                    node.start(timeout / 2)
            self.wait_clustered(self.nodes, timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def running_nodes(self, via: Node) -> list[str]:
        """The node names ``via`` sees running in its cluster."""
        out = via.ctl("eval", "rabbit_nodes:all_running().")
        return sorted(part.strip(" []'\n") for part in out.split(",") if part.strip(" []'\n"))

    def wait_clustered(self, nodes: Sequence[Node], timeout: float = 60.0) -> None:
        """Until the first of ``nodes`` sees all of them running in the cluster."""
        want = sorted(n.name for n in nodes)
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                seen = self.running_nodes(nodes[0])
                if all(name in seen for name in want):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"cluster did not form: want {want}, running {seen}")

    def stop(self, *, remove: bool | None = None) -> None:
        """Stop every node (a SIGKILL: faster, and nothing of the data is wanted) and remove
        the folder when the cluster made it."""
        for node in self.nodes:
            node.kill()
        if remove if remove is not None else self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
