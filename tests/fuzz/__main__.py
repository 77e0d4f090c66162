"""``make fuzz``: every fuzz target for FUZZ_SECONDS each; exit 1 on any finding.

``python -m tests.fuzz [--seconds 60] [--engine auto|atheris|hypothesis] [TARGET ...]``

Each target runs in its own process (tests/fuzz/engine.py): atheris (coverage-guided
libFuzzer) when it is installed, else hypothesis at a large budget. Findings land in
build/fuzz/<target>/ (crash-*, slow-*, and libFuzzer's timeout-*/oom-*), each with a
.txt saying what failed; the log of the run is build/fuzz/<target>/log.txt. A slow input
is re-timed here, uninstrumented, before it counts (instrumentation slows code down).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.fuzz.engine import BUILD, HANG_SECONDS, ROOT
from tests.fuzz.targets import TARGETS, SlowInput, check

_FINDING_PREFIXES = ("crash-", "slow-", "timeout-", "oom-", "leak-")


def _findings(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.glob("*")
        if p.is_file() and p.name.startswith(_FINDING_PREFIXES) and p.suffix != ".txt"
    )


def _confirm_slow(name: str, path: Path) -> bool:
    """Re-time a slow input in this (uninstrumented) process; drop it if it is fast here."""
    try:
        check(TARGETS[name], path.read_bytes(), timed=True)
    except SlowInput:
        return True
    except Exception:  # it crashes as well: a finding all the same
        return True
    note = path.with_name(path.name + ".txt")
    print(f"  {path.name}: within budget when re-timed uninstrumented; dropped")
    path.unlink()
    note.unlink(missing_ok=True)
    return False


def run(name: str, seconds: int, engine: str) -> list[Path]:
    directory = BUILD / name
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*"):
        if old.is_file() and old.name.startswith(_FINDING_PREFIXES):
            old.unlink()
    log = directory / "log.txt"
    command = [sys.executable, "-m", "tests.fuzz.engine", name, f"--seconds={seconds}"]
    started = time.monotonic()
    with log.open("w") as out:
        try:
            done = subprocess.run(
                [*command, f"--engine={engine}"],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=seconds + 10 * HANG_SECONDS + 60,
                check=False,
            )
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = -1
    found = [
        p for p in _findings(directory) if not p.name.startswith("slow-") or _confirm_slow(name, p)
    ]
    if code != 0 and not found:
        # The engine died without writing an artifact: its log is the finding.
        crash = directory / "crash-engine-exit"
        crash.write_bytes(b"")
        crash.with_name(crash.name + ".txt").write_text(f"engine exited with {code}; see {log}\n")
        found.append(crash)
    stats = _stats(log)
    took = time.monotonic() - started
    print(f"{name:12} {engine:10} {took:5.0f} s  {stats:24}  findings: {len(found)}")
    for path in found:
        note = path.with_name(path.name + ".txt")
        headline = note.read_text().splitlines()[0] if note.exists() else "see " + str(log)
        print(f"  {path.relative_to(ROOT)}: {headline}")
    return found


def _stats(log: Path) -> str:
    text = log.read_text(errors="replace")
    for line in reversed(text.splitlines()):
        if line.startswith("stat::number_of_executed_units:"):
            return f"{int(line.split(':')[-1]):,} inputs"
        if line.startswith("hypothesis: "):
            return line.removeprefix("hypothesis: ").split(" in ")[0]
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=", ".join(TARGETS))
    parser.add_argument(
        "--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60") or 60)
    )
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "hypothesis"
        if engine == "hypothesis":
            print("atheris is not installed: hypothesis at a large budget (not coverage-guided)")
    logging.disable(logging.WARNING)
    names = args.targets or list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
    findings = [path for name in names for path in run(name, args.seconds, engine)]
    if findings:
        print(f"{len(findings)} finding(s) in {BUILD.relative_to(ROOT)}/")
        return 1
    print("no findings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
