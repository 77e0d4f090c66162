"""One fuzz target for a set time, in this process: ``python -m tests.fuzz.engine``.

Started by ``python -m tests.fuzz`` (``make fuzz``), one process per target (libFuzzer
runs once per process). Engines:

* ``atheris``: coverage-guided (libFuzzer), citygate's modules instrumented; the corpus
  grows in build/fuzz/<target>/corpus, seeded from tests/fuzz/corpus/<target>;
* ``hypothesis``: random bytes, mutated seeds and generated TOML, in rounds until the
  time is up; each new failure is shrunk.

A finding (an exception other than the target's documented error, or an input slower
than the budget) is written as build/fuzz/<target>/crash-<sha1> (slow-<sha1>): the input,
and beside it <name>.txt with the traceback. The same failure (exception type and the
line raising it) is written once. libFuzzer adds its own timeout-*/oom-* for hangs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "fuzz"
MAX_FINDINGS = 50
MAX_SLOW = 5
HANG_SECONDS = 10


class Findings:
    """The distinct failures of one target, written to its build directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seen: set[str] = set()

    def signature(self, exc: BaseException) -> str:
        """Exception type and where it was raised (the innermost frame in the repository);
        slow inputs are kept up to :data:`MAX_SLOW` (``make fuzz`` re-times them)."""
        from tests.fuzz.targets import SlowInput

        if isinstance(exc, SlowInput):
            slow = sum(s.startswith("SlowInput") for s in self.seen)
            return f"SlowInput #{min(slow, MAX_SLOW - 1)}"
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if f.filename.startswith(str(ROOT))] or frames
        where = f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "?"
        return f"{type(exc).__name__} at {where}"

    def known(self, exc: BaseException) -> bool:
        """True if ``exc`` is a failure written already (or there are enough)."""
        signature = self.signature(exc)
        return signature in self.seen or len(self.seen) >= MAX_FINDINGS

    def record(self, data: bytes, exc: BaseException) -> None:
        """Write ``data`` and its traceback, unless the failure is :meth:`known`."""
        from tests.fuzz.targets import SlowInput

        if self.known(exc):
            return
        signature = self.signature(exc)
        self.seen.add(signature)
        kind = "slow" if isinstance(exc, SlowInput) else "crash"
        path = self.directory / f"{kind}-{hashlib.sha1(data).hexdigest()}"
        path.write_bytes(data)
        report = "".join(traceback.format_exception(exc))
        path.with_name(path.name + ".txt").write_text(
            f"{signature}\ninput ({len(data)} bytes): {data[:512].hex()}\n"
            f"as text: {data[:512]!r}\n\n{report}"
        )
        print(f"FINDING {path.name}: {signature}: {str(exc)[:200]}", file=sys.stderr, flush=True)


def run_atheris(name: str, seconds: int, directory: Path) -> None:
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    with atheris.instrument_imports(include=["citygate"]):
        from tests.fuzz.targets import TARGETS, check

    target = TARGETS[name]
    findings = Findings(directory)
    warm_up(name)

    def one_input(data: bytes) -> None:
        try:
            check(target, data, timed=True)
        except Exception as exc:
            findings.record(data, exc)

    work = directory / "corpus"
    work.mkdir(exist_ok=True)
    seeds = Path(__file__).parent / "corpus" / name
    argv = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-timeout={HANG_SECONDS}",
        f"-max_len={target.max_len}",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={directory}/",
        "-print_final_stats=1",
        "-print_pcs=0",
    ]
    dictionary = write_dictionary(name, directory)
    if dictionary is not None:
        argv.append(f"-dict={dictionary}")
    atheris.Setup([*argv, str(work), str(seeds)], one_input)
    atheris.Fuzz()  # exits the process when the time is up


def run_hypothesis(name: str, seconds: int, directory: Path) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    from tests.fuzz.seed import read_corpus
    from tests.fuzz.strategies import inputs
    from tests.fuzz.targets import TARGETS, check

    target = TARGETS[name]
    findings = Findings(directory)
    warm_up(name)
    strategy = inputs(name, read_corpus(name, [directory / "corpus"]), target.max_len)
    failing: dict[str, tuple[bytes, Exception]] = {}
    deadline = time.monotonic() + seconds
    runs = 0

    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=True,
    )
    @given(strategy)
    def one_input(data: bytes) -> None:
        nonlocal runs
        runs += 1
        try:
            check(target, data, timed=True)
        except Exception as exc:
            if findings.known(exc):
                return  # written already: do not shrink it again
            # The last failing call of a signature is hypothesis's replay of the minimal one.
            failing[findings.signature(exc)] = (data, exc)
            raise

    while time.monotonic() < deadline:
        try:
            one_input()
        except BaseException as exc:  # any failure of the round (an ExceptionGroup too)
            if isinstance(exc, KeyboardInterrupt):
                raise
            for data, error in failing.values():
                findings.record(data, error)
            failing.clear()
    print(f"hypothesis: {runs} runs in {seconds} s", file=sys.stderr)


def warm_up(name: str) -> None:
    """Run the target once before timing counts: first calls import and compile lazily."""
    from tests.fuzz.targets import TARGETS

    target = TARGETS[name]
    for data in (b"", b"\x00" * 64):
        with contextlib.suppress(Exception):  # the fuzzing proper reports it
            target.run(data)


def write_dictionary(name: str, directory: Path) -> Path | None:
    """libFuzzer tokens for the config loader: its keys and some well-formed values."""
    if name != "config":
        return None
    from tests.fuzz.strategies import KEYS, WORDS

    sections = ("[[device]]", "[[serial]]", "[gateway]", "[mqtt]", "[buffer]", "[ble]")
    syntax = (" = ", "\n", '"', "'''", "[", "]", "{", "}", ",", "true", "1970-01-01T00:00:00Z")
    tokens = [*KEYS, *(w for w in WORDS if w.isascii()), *sections, *syntax]
    path = directory / "config.dict"
    path.write_text("".join(f"{_dictionary_entry(t)}\n" for t in tokens if t))
    return path


def _dictionary_entry(token: str) -> str:
    """A libFuzzer dictionary line: the token quoted, with \\xNN escapes."""
    escaped = "".join(
        c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02x}" for c in token
    )
    return f'"{escaped}"'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--engine", choices=("atheris", "hypothesis"), default="atheris")
    args = parser.parse_args()
    directory = BUILD / args.target
    directory.mkdir(parents=True, exist_ok=True)
    logging.disable(logging.WARNING)  # ReplaySource logs every bad capture file
    if args.engine == "atheris":
        run_atheris(args.target, args.seconds, directory)
    else:
        run_hypothesis(args.target, args.seconds, directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
