"""kill -9 of a writer at a random moment loses no committed sample and never reuses a seq."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from citygate.buffer import Buffer
from citygate.config import BufferSettings

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 5


class Reports:
    """What the child said happened, line by line (see buffer_crash_child)."""

    def __init__(self) -> None:
        self.committed: set[int] = set()
        self.ack_started: set[int] = set()
        self.acked: set[int] = set()

    def take(self, line: str) -> None:
        kind, *numbers = line.split()
        seqs = {int(n) for n in numbers}
        {"C": self.committed, "A?": self.ack_started, "A": self.acked}[kind].update(seqs)


def run_and_kill(path: Path, durability: str, seed: int, reports: Reports) -> int:
    """Start the child, kill it after a random number of its reports; return the first seq
    it reported (the proof that it continued above what was there before)."""
    rng = random.Random(seed)
    lines_before_kill = rng.randint(1, 150)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.buffer_crash_child", str(path), durability, str(seed)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    first_seq = None
    try:
        for _ in range(lines_before_kill):
            line = child.stdout.readline()
            if not line:
                break
            reports.take(line)
            if first_seq is None and line.startswith("C "):
                first_seq = int(line.split()[1])
    finally:
        child.send_signal(signal.SIGKILL)
        # Through the same reader: lines it already buffered are reports too.
        rest = child.stdout.read()
        errors = child.stderr.read()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"the child died on its own:\n{errors}"
    for line in rest.splitlines(keepends=True):
        if line.endswith("\n"):  # a line cut by the kill was never fully reported
            reports.take(line)
    assert first_seq is not None, f"the child reported nothing:\n{errors}"
    return first_seq


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_sigkill_loses_no_committed_sample_and_seq_keeps_growing(
    tmp_path: Path, durability: str
) -> None:
    path = tmp_path / "buffer.sqlite3"
    reports = Reports()
    highest_seen = 0
    for round_ in range(ROUNDS):
        seed = round_ * 1000 + (durability == "full")
        first_seq = run_and_kill(path, durability, seed, reports)
        assert first_seq > highest_seen, f"seed {seed}: a seq was used again after a crash"

        buffer = Buffer(path, BufferSettings(durability=durability))
        buffer.open()
        try:
            rows = buffer.fetch(0, max_readings=10**9, max_samples=10**6)
            stats = buffer.stats()
        finally:
            buffer.close()
        present = {r.seq for r in rows}
        lost = reports.committed - present - reports.ack_started
        assert not lost, f"seed {seed}: committed samples lost: {sorted(lost)[:10]}"
        resurrected = present & reports.acked
        assert not resurrected, f"seed {seed}: acked samples came back: {sorted(resurrected)[:10]}"
        assert stats.backlog_samples == len(rows)
        assert stats.backlog_readings == sum(r.readings for r in rows)
        highest_seen = max(highest_seen, *reports.committed, *present)
        assert stats.next_seq > highest_seen
