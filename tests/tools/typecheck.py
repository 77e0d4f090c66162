"""``make typecheck``: mypy --strict over the ``citygate`` namespace.

The wheel maps ``citygate`` onto agent/ and ``citygate.drivers`` onto drivers/; an
editable install does the same with an import hook, which mypy cannot follow. So this
lays a tree of links, build/ns/citygate → agent/* + drivers/, runs mypy on the packages
there and prints each error at its real path in the repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NS = ROOT / "build" / "ns"


def lay_links() -> None:
    """(Re)build build/ns/citygate from the folders as they are now."""
    shutil.rmtree(NS, ignore_errors=True)
    package = NS / "citygate"
    package.mkdir(parents=True)
    for entry in sorted((ROOT / "agent").iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "drivers").symlink_to(ROOT / "drivers", target_is_directory=True)


def real_path(line: str) -> str:
    """``build/ns/citygate/drivers/x.py:3: …`` → ``drivers/x.py:3: …``."""
    line = re.sub(r"build/ns/citygate/drivers/", "drivers/", line)
    return re.sub(r"build/ns/citygate/", "agent/", line)


def main() -> int:
    lay_links()
    mypy = Path(sys.executable).with_name("mypy")
    done = subprocess.run(
        [str(mypy), *sys.argv[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    for line in (done.stdout + done.stderr).splitlines():
        print(real_path(line))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
