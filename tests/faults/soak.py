"""``make soak``: every long fault variant (the ``soak`` marker, see conftest.py).

The crash loop with 20 SIGKILLs, 400 torn power-loss snapshots per durability mode, and the
broker soak variants, each with a fresh random seed. From the repository root:
``.venv/bin/python -m tests.faults.soak [pytest args]``.
"""

from __future__ import annotations

import sys

import pytest


def main(argv: list[str]) -> int:
    return int(pytest.main(["-q", "-m", "soak", "--timeout=1800", "tests/faults", *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
