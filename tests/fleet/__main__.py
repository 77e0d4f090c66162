"""``make fleet``: a fleet of gateways through a broker into PostgreSQL, with a fault in the
middle, and the figures (issue 18 point 3).

``--broker rabbitmq`` (default): a 3-node RabbitMQ cluster (tests/support/rabbitmq.py). RabbitMQ
3.10 has no shared subscriptions, so the fleet is split into districts (one topic prefix each,
``city-d1``, ``city-d2``, …) and one ``citygate sink`` per district takes that district's data;
each sink's persistent session is a quorum queue that survives any one node. After the warm-up
the node most emulated gateways are connected to is killed (SIGKILL), started again after
``--down`` s; every gateway reconnects to the next node of its list.

``--broker mosquitto``: one Mosquitto and two sinks in a share group (``$share``); one sink is
killed (SIGKILL) after the warm-up and started again after ``--down`` s.

Both: PostgreSQL in a temp dir (tests/support/postgres.py), a few real ``citygate run`` agents
reading the Modbus simulator, and the load generator (tests/fleet/loadgen.py). At the end every
(gateway, seq) offered must be in the table exactly once (the primary key makes "more than once"
impossible; the check is that none is missing).

    python -m tests.fleet [--gateways 1000] [--seconds 60] [--short] [--broker mosquitto]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.fleet.loadgen import QUANTITIES, LoadGen
from tests.support.broker import Mosquitto
from tests.support.postgres import Postgres
from tests.support.processes import ROOT, AgentProcess, SimProcess, citygate_command
from tests.support.rabbitmq import Cluster

_COUNTERS = re.compile(r"sink: (\d+) rows written, (\d+) duplicates skipped")


@dataclass
class Report:
    """The figures of one run."""

    broker: str
    gateways: int
    agents: int
    sinks: int
    seconds: float
    cluster_start_s: float | None = None
    readings_offered: int = 0
    readings_offered_per_s: float = 0.0
    rows_committed: int = 0
    rows_committed_per_s: float = 0.0
    latency_p50_s: float = 0.0
    latency_p99_s: float = 0.0
    latency_max_s: float = 0.0
    samples_lost: int = 0
    agent_seq_gaps: int = 0
    duplicates_removed: int = 0
    fault: str = ""
    gateways_on_killed_node: int = 0
    reconnected_all_s: float | None = None
    peak_connect_attempts_per_s: int = 0
    resent_messages: int = 0
    drain_s: float = 0.0
    cpu_cores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        r = self
        out = [
            f"fleet: {r.broker}, {r.gateways} emulated gateways + {r.agents} citygate agents, "
            f"{r.sinks} sinks, {r.seconds:g} s of sampling",
        ]
        if r.cluster_start_s is not None:
            out.append(f"  broker cluster started in {r.cluster_start_s:.1f} s")
        out += [
            f"  readings offered:    {r.readings_offered} ({r.readings_offered_per_s:.0f}/s)",
            f"  rows committed:      {r.rows_committed} in all, emulated gateways' "
            f"{r.rows_committed_per_s:.0f}/s while sampling",
            "  e2e latency (sample time -> row committed, once all connected): "
            f"p50 {r.latency_p50_s * 1000:.0f} ms, "
            f"p99 {r.latency_p99_s * 1000:.0f} ms, max {r.latency_max_s:.1f} s",
            f"  samples lost:        {r.samples_lost} (emulated), seq gaps {r.agent_seq_gaps} "
            "(agents)",
            f"  duplicates removed by the sinks: {r.duplicates_removed} readings "
            f"({r.resent_messages} messages re-sent by the gateways)",
            f"  fault: {r.fault}",
        ]
        if r.reconnected_all_s is not None:
            out.append(
                f"  every gateway connected again {r.reconnected_all_s:.1f} s after the kill "
                f"({r.gateways_on_killed_node} were on the node); peak "
                f"{r.peak_connect_attempts_per_s} connect attempts/s"
            )
        out.append(f"  drained (every sample committed) {r.drain_s:.1f} s after sampling stopped")
        if r.cpu_cores:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_cores.items())
            out.append(f"  CPU while sampling, in cores (of {os.cpu_count()}): {parts}")
        out += [f"  note: {n}" for n in r.notes]
        return out


class SinkProcess:
    """``citygate sink`` as a subprocess, its log lines collected."""

    def __init__(self, brokers: list[str], dsn: str, extra: list[str]) -> None:
        self.args = [
            *(a for url in brokers for a in ("--broker", url)),
            "--database",
            dsn,
            "--stats-interval",
            "1",
            *extra,
        ]
        self.finished: list[tuple[int, int]] = []  # (rows, duplicates) of earlier processes
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.start()

    def start(self) -> None:
        self.lines = []
        self.process = subprocess.Popen(
            citygate_command("sink", *self.args),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        threading.Thread(target=self._read, args=(self.process, self.lines), daemon=True).start()

    @staticmethod
    def _read(process: subprocess.Popen[str], lines: list[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line.rstrip("\n"))

    def subscribed(self) -> bool:
        return any("connected, subscribed" in line for line in self.lines)

    def counters(self) -> tuple[int, int]:
        for line in reversed(self.lines):
            if m := _COUNTERS.search(line):
                return int(m[1]), int(m[2])
        return 0, 0

    def kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.finished.append(self.counters())
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.finished.append(self.counters())
        self.process = None

    def duplicates(self) -> int:
        return sum(d for _, d in self.finished)


def agent_config(
    path: Path, gid: str, urls: list[str], protocol: str, prefix: str, sim_port: int
) -> Path:
    """A gateway.toml: one SDM630 on the simulator, polled every second."""
    url_list = ", ".join(f'"{u}"' for u in urls)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[gateway]\n"
        f'id = "{gid}"\n'
        f'data_dir = "{path.parent / "var"}"\n'
        'log_level = "warning"\n\n'
        "[mqtt]\n"
        f"url = [{url_list}]\n"
        f'protocol = "{protocol}"\n'
        f'topic_prefix = "{prefix}"\n'
        'linger = "50ms"\n\n'
        "[[device]]\n"
        'id = "meter-1"\n'
        'driver = "modbus"\n'
        'host = "127.0.0.1"\n'
        f"port = {sim_port}\n"
        "unit = 1\n"
        'profile = "eastron-sdm630"\n'
        'interval = "1s"\n'
    )
    return path


async def _until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


async def run_fleet(
    *,
    broker: str = "rabbitmq",
    gateways: int = 1000,
    seconds: float = 60.0,
    agents: int = 3,
    sinks: int = 2,
    interval: float = 1.0,
    down: float = 5.0,
    fault: bool = True,
    log: bool = True,
) -> Report:
    """One run; see the module docstring."""

    def say(message: str) -> None:
        if log:
            print(message, file=sys.stderr, flush=True)

    report = Report(broker, gateways, agents, sinks, seconds)
    work = Path(tempfile.mkdtemp(prefix="citygate-fleet-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        pg = Postgres()
        stack.callback(pg.stop)
        pg.start()
        pg.psql("ALTER SYSTEM SET synchronous_commit = off")
        pg.psql("SELECT pg_reload_conf()")
        dsn = pg.create_database("fleet")
        say(f"postgresql on port {pg.port}")

        cluster: Cluster | None = None
        mosquitto: Mosquitto | None = None
        if broker == "rabbitmq":
            cluster = Cluster(3, workdir=work / "rabbitmq")
            stack.callback(cluster.stop)
            cluster.start()
            report.cluster_start_s = cluster.start_seconds
            urls = cluster.urls
            protocol = "3.1.1"
            prefixes = [f"city-d{i + 1}" for i in range(sinks)]
            say(f"rabbitmq cluster of 3 up in {cluster.start_seconds:.1f} s: {' '.join(urls)}")
        else:
            mosquitto = Mosquitto(work / "mosquitto")
            stack.callback(mosquitto.stop)
            mosquitto.start()
            urls = [mosquitto.url]
            protocol = "5"
            prefixes = ["city"]
            say(f"mosquitto on {mosquitto.url}")

        sink_procs: list[SinkProcess] = []
        for i in range(sinks):
            order = urls[i % len(urls) :] + urls[: i % len(urls)]
            if broker == "rabbitmq":
                extra = ["--protocol", "3.1.1", "--topic-prefix", prefixes[i]]
            else:
                extra = ["--share", "fleet"]
            extra += ["--client-id", f"fleet-sink-{i + 1}"]
            sp = SinkProcess(order, dsn, extra)
            stack.callback(sp.stop)
            sink_procs.append(sp)
        await _until(lambda: all(s.subscribed() for s in sink_procs), 60, "the sinks subscribed")
        say(f"{sinks} sinks subscribed")

        agent_procs: list[AgentProcess] = []
        if agents:
            sim = SimProcess({1: "sdm630"})
            stack.callback(sim.stop)
            for i in range(agents):
                gid = f"agent-{i + 1}"
                order = urls[i % len(urls) :] + urls[: i % len(urls)]
                config = agent_config(
                    work / gid / "gateway.toml",
                    gid,
                    order,
                    protocol,
                    prefixes[i % len(prefixes)],
                    sim.port,
                )
                ap = AgentProcess(config)
                stack.callback(ap.stop)
                agent_procs.append(ap)

        nodes = [("127.0.0.1", int(u.rsplit(":", 1)[1])) for u in urls]
        gen = LoadGen(nodes, gateways, prefixes=prefixes, interval=interval)
        began = time.monotonic()
        sampling_began = time.time()
        markers = {
            "broker": [str(cluster.dir) if cluster else str(work / "mosquitto")],
            "sinks": [f"{pg.port}/fleet"],
            "postgresql": [f"-p {pg.port}", "citygate fleet "],
            "agents": [f"run -c {work}"],
        }
        cpu = CpuMeter(markers)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(cpu.run(gen.stop_sampling))
            tg.create_task(gen.run(ramp=min(5.0, seconds / 4)))
            await _until(lambda: gen.connected() == gateways, 120, "every gateway connected")
            say(f"{gateways} gateways connected in {time.monotonic() - began:.1f} s")
            steady_from = time.time()  # latency counts from here: no start-up ramp in it
            await asyncio.sleep(max(0.0, began + seconds * 0.4 - time.monotonic()))

            if not fault:
                report.fault = "none (--no-fault)"
            elif cluster is not None:
                index, count = gen.per_node().most_common(1)[0]
                victim = cluster.nodes[index]
                report.gateways_on_killed_node = count
                report.fault = (
                    f"node {victim.name} (with {count} gateways) killed, restarted after {down:g} s"
                )
                say(f"killing {victim.name} ({count} gateways on it)")
                killed = time.monotonic()
                victim.kill()
                await _until(lambda: gen.connected() == gateways, 120, "every gateway back")
                report.reconnected_all_s = time.monotonic() - killed
                say(f"every gateway connected again after {report.reconnected_all_s:.1f} s")
                await asyncio.sleep(max(0.0, killed + down - time.monotonic()))
                await asyncio.to_thread(victim.start)
                say(f"{victim.name} restarted")
                bucket = int(killed - gen.stats.started)
                report.peak_connect_attempts_per_s = max(
                    (n for s, n in gen.stats.attempts.items() if s >= bucket), default=0
                )
            else:
                victim_sink = sink_procs[0]
                report.fault = f"sink 1 of {sinks} killed (SIGKILL), restarted after {down:g} s"
                say("killing sink 1")
                victim_sink.kill()
                await asyncio.sleep(down)
                victim_sink.start()
                say("sink 1 restarted")

            await asyncio.sleep(max(0.0, began + seconds - time.monotonic()))
            gen.stop_sampling.set()
            sampling_s = time.monotonic() - began
            stopped = time.monotonic()
            say("sampling stopped: draining")
            offered = gen.offered()
            want_samples = sum(seq for _, seq in offered.values())
            report.readings_offered = want_samples * len(QUANTITIES)
            report.readings_offered_per_s = report.readings_offered / sampling_s
            report.resent_messages = gen.stats.resent_messages

            def committed_samples() -> int:
                out = pg.psql(
                    "SELECT count(*) FROM readings WHERE gateway LIKE 'lg-%' "
                    "AND quantity = 'voltage_l1'",
                    "fleet",
                )
                return int(out.strip() or 0)

            deadline = time.monotonic() + 180
            while committed_samples() < want_samples and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            report.drain_s = time.monotonic() - stopped
            report.cpu_cores = {k: v / sampling_s for k, v in cpu.used.items()}
            await _until(gen.drained, 60, "every gateway's messages acknowledged")
            gen.give_up.set()

        for ap in agent_procs:
            ap.stop()
        for sp in sink_procs:
            sp.stop()
        report.duplicates_removed = sum(sp.duplicates() for sp in sink_procs)

        # The figures, from the table.
        found: dict[str, tuple[int, int, int, int]] = {}
        for line in pg.psql(
            "SELECT gateway, count(DISTINCT seq), min(seq), max(seq), count(*) FROM readings "
            "GROUP BY gateway",
            "fleet",
        ).splitlines():
            gid, *numbers = line.split("|")
            count, first, last_seq, rows_of = (int(x) for x in numbers)
            found[gid] = (count, first, last_seq, rows_of)
        lost = 0
        for gid, (_prefix, last) in offered.items():
            n, lo, hi, rows = found.get(gid, (0, 1, 0, 0))
            lost += last - n
            if n and (lo != 1 or hi != last or rows != n * len(QUANTITIES)):
                report.notes.append(
                    f"{gid}: seq {lo}..{hi} ({n} samples, {rows} rows), offered 1..{last}"
                )
        report.samples_lost = lost
        for ap in agent_procs:
            n, lo, hi, _ = found.get(ap_id(ap), (0, 0, -1, 0))
            report.agent_seq_gaps += (hi - lo + 1) - n
            if n == 0:
                report.notes.append(f"{ap_id(ap)}: no rows")
        report.rows_committed = sum(rows for _, _, _, rows in found.values())
        p50, p99, worst, rate = (
            pg.psql(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), "
                "percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d), "
                "(SELECT count(*) FROM readings WHERE gateway LIKE 'lg-%' AND stored_at < "
                f"to_timestamp({sampling_began + sampling_s})) "
                f"/ {sampling_s} FROM (SELECT extract(epoch FROM stored_at - time)::float8 AS d "
                "FROM readings WHERE gateway LIKE 'lg-%' AND quantity = 'voltage_l1' "
                f"AND time >= to_timestamp({steady_from})) AS t",
                "fleet",
            )
            .strip()
            .split("|")
        )
        report.latency_p50_s, report.latency_p99_s = float(p50), float(p99)
        report.latency_max_s, report.rows_committed_per_s = float(worst), float(rate)
    return report


class CpuMeter:
    """CPU seconds used by the processes whose command line holds one of a component's markers,
    read from /proc at each :meth:`sample` (a process that dies between two samples loses at
    most that interval), plus this process (the load generator: ``loadgen``)."""

    def __init__(self, markers: dict[str, list[str]]) -> None:
        self.markers = markers
        self.used = dict.fromkeys([*markers, "loadgen"], 0.0)
        self._last: dict[int, float] = {}
        self._own = time.process_time()
        self._tick = os.sysconf("SC_CLK_TCK")
        self.sample(count=False)

    def sample(self, *, count: bool = True) -> None:
        now: dict[int, float] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, UnicodeDecodeError):
                continue
            for name, wanted in self.markers.items():
                if any(m in cmdline for m in wanted):
                    pid = int(entry.name)
                    now[pid] = (int(fields[11]) + int(fields[12])) / self._tick
                    if count:
                        self.used[name] += now[pid] - self._last.get(pid, 0.0)
                    break
        self._last = now
        own = time.process_time()
        if count:
            self.used["loadgen"] += own - self._own
        self._own = own

    async def run(self, stop: asyncio.Event, every: float = 2.0) -> None:
        """Sample every ``every`` s until ``stop``, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await stop.wait()
            self.sample()


def ap_id(ap: AgentProcess) -> str:
    """The gateway id of an agent started by :func:`run_fleet` (its config's folder)."""
    args = ap.process.args
    assert isinstance(args, list)
    return Path(str(args[args.index("-c") + 1])).parent.name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--gateways", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--short", action="store_true", help="50 gateways, 20 s (the CI variant)")
    p.add_argument("--broker", choices=("rabbitmq", "mosquitto"), default="rabbitmq")
    p.add_argument("--agents", type=int, default=3, help="real citygate agents (%(default)s)")
    p.add_argument("--sinks", type=int, default=2, help="(%(default)s)")
    p.add_argument("--interval", type=float, default=1.0, help="s between samples (10 readings)")
    p.add_argument("--down", type=float, default=5.0, help="s the killed part stays down")
    p.add_argument("--no-fault", action="store_true", help="kill nothing (the baseline)")
    p.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = p.parse_args(argv)
    if args.short:
        args.gateways, args.seconds = 50, 20.0
    report = asyncio.run(
        run_fleet(
            broker=args.broker,
            gateways=args.gateways,
            seconds=args.seconds,
            agents=args.agents,
            sinks=args.sinks,
            interval=args.interval,
            down=args.down,
            fault=not args.no_fault,
        )
    )
    print("\n".join(report.lines()))
    if args.json:
        print(json.dumps(asdict(report)))
    return 0 if report.samples_lost == 0 and report.agent_seq_gaps == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
