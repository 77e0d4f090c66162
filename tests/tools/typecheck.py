"""``make typecheck``: mypy --strict over the ``citygate`` namespace.

The wheel maps ``citygate`` onto agent/ and ``citygate.drivers`` onto drivers/; an
editable install does the same with an import hook, which mypy cannot follow. So this
lays a tree of links, build/ns-PID/citygate → agent/* + drivers/ (one per run, so two
runs side by side never pull it from under each other), points mypy at it with MYPYPATH,
and prints each error at its real path in the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lay_links(ns: Path) -> None:
    """Build ns/citygate from the folders as they are now."""
    package = ns / "citygate"
    package.mkdir(parents=True)
    for entry in sorted((ROOT / "agent").iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "drivers").symlink_to(ROOT / "drivers", target_is_directory=True)


def real_path(line: str) -> str:
    """``build/ns-7/citygate/drivers/x.py:3: …`` → ``drivers/x.py:3: …``."""
    line = re.sub(r"build/ns-\d+/citygate/drivers/", "drivers/", line)
    return re.sub(r"build/ns-\d+/citygate/", "agent/", line)


def main() -> int:
    ns = ROOT / "build" / f"ns-{os.getpid()}"
    try:
        lay_links(ns)
        mypy = Path(sys.executable).with_name("mypy")
        env = {**os.environ, "MYPYPATH": str(ns.relative_to(ROOT))}
        done = subprocess.run(
            [str(mypy), *sys.argv[1:]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        shutil.rmtree(ns, ignore_errors=True)
    for line in (done.stdout + done.stderr).splitlines():
        print(real_path(line))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
