"""The import contract (tests/tools/imports.py) holds for the repository, and catches
each kind of violation when one is planted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tools.imports import ROOT, check, graph


def test_the_repository_keeps_the_contract() -> None:
    violations, found = check(ROOT)
    assert not violations, "\n".join(map(str, violations))
    assert len(found) > 100  # the checker saw the tree, not an empty folder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the sources the contract covers (not tests, not the venv)."""
    for folder in ("agent", "drivers", "hardware-sim/src"):
        shutil.copytree(
            ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    (tmp_path / "tests").mkdir()
    return tmp_path


def plant(tree: Path, rel: str, code: str) -> None:
    path = tree / rel
    path.write_text(path.read_text() + "\n\n" + code + "\n")


PLANTED = [
    # (file, code, rule the checker must name)
    (
        "drivers/modbus/decode.py",
        "from citygate.lines import LineOwner",
        "a driver imports only citygate.drivers.api and its own folder",
    ),
    (
        "drivers/mbus/link.py",
        "def late():\n    from citygate.drivers.modbus import frame\n    return frame",
        "a driver imports only citygate.drivers.api and its own folder",
    ),
    (
        # only mbus.decode is shared with wmbus (tests/tools/imports.py SHARED)
        "drivers/wmbus/frame.py",
        "from citygate.drivers.mbus.link import Frame",
        "a driver imports only citygate.drivers.api and its own folder",
    ),
    (
        "drivers/mbus/link.py",
        "from citygate.drivers.wmbus.frame import crc16",
        "a driver imports only citygate.drivers.api and its own folder",
    ),
    (
        "drivers/ble/advert.py",
        "import citygate",
        "a driver imports only citygate.drivers.api and its own folder",
    ),
    (
        "drivers/api.py",
        "def late():\n    import citygate.config\n    return citygate.config",
        "the driver API imports nothing of the runtime or the drivers",
    ),
    (
        "agent/normalise.py",
        "from citygate.drivers.mbus.decode import decode",
        "the runtime reaches drivers only through the entry-point registry",
    ),
    (
        "agent/status.py",
        'import importlib\nmodbus = importlib.import_module("citygate.drivers.modbus.driver")',
        "the runtime reaches drivers only through the entry-point registry",
    ),
    (
        "agent/app.py",
        "from citygate_sim.modbus import make_meter",
        "only the demo runs the simulators",
    ),
    (
        "hardware-sim/src/citygate_sim/_service.py",
        "from citygate.drivers.api import DecodeError",
        "the simulators are independent of citygate",
    ),
    (
        "agent/model.py",
        "from agent.units import canonical",
        "old top-level name; use citygate / citygate_sim",
    ),
    (
        "drivers/plugin-template/src/citygate_driver_w1/__init__.py",
        "from citygate.config import load",
        "a plugin imports only citygate.drivers.api",
    ),
]


@pytest.mark.parametrize(("rel", "code", "rule"), PLANTED, ids=[p[0] for p in PLANTED])
def test_a_planted_violation_is_caught(tree: Path, rel: str, code: str, rule: str) -> None:
    before, _ = check(tree)
    plant(tree, rel, code)
    after, _ = check(tree)
    new = [v for v in after if v not in before]
    assert [v.rule for v in new] == [rule], "\n".join(map(str, after))
    assert new[0].where.path == tree / rel


def test_tests_may_not_use_the_old_names(tree: Path) -> None:
    (tree / "tests" / "test_x.py").write_text("import hwsim.modbus\n")
    violations, _ = check(tree)
    assert any(v.where.target == "hwsim.modbus" for v in violations)


def test_the_graph_names_folders_and_modules() -> None:
    _, found = check(ROOT)
    text = graph(found)
    assert "citygate (runtime) -> citygate.drivers.api" in text
    assert "citygate.drivers.modbus.driver -> " in text
