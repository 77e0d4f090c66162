"""Figures, the table that prints them and the JSON file that keeps them."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.procs import load_average


@dataclass(slots=True)
class Figure:
    """One measured figure against its target; ``ok`` is None when there is no target."""

    part: str
    name: str
    measured: float | None
    unit: str
    target: str = ""
    ok: bool | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "n/a"
        if self.ok is None:
            return ""
        return "ok" if self.ok else "MISS"


@dataclass(slots=True)
class PartResult:
    """What one part measured: its figures and the raw details behind them."""

    part: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def add(
        self,
        name: str,
        measured: float | None,
        unit: str,
        *,
        at_least: float | None = None,
        at_most: float | None = None,
        target: str = "",
        note: str = "",
    ) -> Figure:
        """Record a figure; ``at_least`` / ``at_most`` make the target and the verdict."""
        ok: bool | None = None
        if at_least is not None:
            target = target or f">= {_number(at_least)} {unit}"
            ok = measured is not None and measured >= at_least
        elif at_most is not None:
            target = target or f"<= {_number(at_most)} {unit}"
            ok = measured is not None and measured <= at_most
        figure = Figure(self.part, name, measured, unit, target, ok, note)
        self.figures.append(figure)
        return figure


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    if abs(value) < 10:
        return f"{value:.4g}"
    return f"{value:,.1f}"


def table(results: Sequence[PartResult]) -> str:
    """The figures as a plain-text table, a part's error in place of its figures."""
    rows = [("figure", "measured", "target", "ok/MISS")]
    notes: list[str] = []
    for result in results:
        if result.error is not None:
            rows.append((f"[{result.part}] FAILED", "-", "-", "MISS"))
            notes.append(f"{result.part}: {result.error}")
        for f in result.figures:
            measured = "-" if f.measured is None else f"{_number(f.measured)} {f.unit}"
            rows.append((f"[{f.part}] {f.name}", measured, f.target, f.verdict))
            if f.note:
                notes.append(f"{f.name}: {f.note}")
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if c in (0, 2, 3) else cell.rjust(w)
                for c, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if notes:
        lines.append("")
        lines.extend(f"  * {note}" for note in notes)
    return "\n".join(lines)


def write_json(path: Path, results: Sequence[PartResult], argv: Sequence[str]) -> None:
    """Every figure and detail, with the conditions of the run."""
    document = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": list(argv),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": _cpus(),
            "load_average_at_end": load_average(),
        },
        "parts": {
            r.part: {
                "seconds": round(r.seconds, 1),
                "error": r.error,
                "figures": [asdict(f) | {"verdict": f.verdict} for f in r.figures],
                "details": r.details,
            }
            for r in results
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    tmp.replace(path)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))
