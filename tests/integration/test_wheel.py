"""The built wheels put only their own names on sys.path: ``citygate`` (runtime and
drivers) and ``citygate_sim`` (the simulators), never ``agent``, ``drivers`` or ``hwsim``.

Each wheel is built from a copy of the repository's sources (as systemd/install.sh
does: setuptools would otherwise ship what an earlier build left in build/lib), installed
into a fresh venv, and the venv's site-packages is listed before and after.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, check=False, cwd=cwd
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def build_wheel(project: Path, out: Path) -> Path:
    sources = out / "sources"
    shutil.copytree(
        project, sources, ignore=shutil.ignore_patterns(
            ".*", "__pycache__", "build", "*.egg-info", "tests", "plugin-template", "hardware-sim"
        ),
    )  # fmt: skip
    # --no-build-isolation: the dev venv's setuptools builds it, offline and in seconds.
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", out, sources)  # fmt: skip
    (wheel,) = out.glob("*.whl")
    return wheel


def repo_modules(expected: str) -> set[str]:
    """The .py files of a package as the wheel must hold them (``citygate/drivers/api.py``)."""
    folders = {
        "citygate": [("citygate", ROOT / "agent"), ("citygate/drivers", ROOT / "drivers")],
        "citygate_sim": [("citygate_sim", ROOT / "hardware-sim" / "src" / "citygate_sim")],
    }[expected]
    found = set()
    for prefix, folder in folders:
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder)
            if "plugin-template" not in rel.parts and not (
                prefix == "citygate" and rel.parts[0] == "drivers"
            ):
                found.add(f"{prefix}/{rel.as_posix()}")
    return found


def top_level_names(site: Path) -> set[str]:
    """What a site-packages folder offers to ``import``: packages and modules."""
    names = set()
    for entry in site.iterdir():
        if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
            continue
        names.add(entry.name.removesuffix(".py"))
    return names


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh venv: its python and its site-packages."""
    where = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", where)
    python = where / "bin" / "python"
    (site,) = (where / "lib").glob("python3.*/site-packages")
    return python, site


@pytest.mark.parametrize(
    ("project", "expected"),
    [(ROOT, {"citygate"}), (ROOT / "hardware-sim", {"citygate_sim"})],
    ids=["citygate", "citygate-sim"],
)
def test_wheel_installs_only_its_own_top_level_name(
    project: Path, expected: set[str], venv: tuple[Path, Path], tmp_path: Path
) -> None:
    python, site = venv
    wheel = build_wheel(project, tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {
        name.split("/")[0].removesuffix(".py")
        for name in names
        if not name.split("/")[0].endswith((".dist-info", ".data"))
    }
    assert in_wheel == expected
    # every module of the folders, and nothing else (no stale module of an earlier build)
    (package,) = expected
    assert {n for n in names if n.endswith(".py")} == repo_modules(package)
    before = top_level_names(site)
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", wheel)
    added = top_level_names(site) - before
    assert added == expected


def test_installed_wheel_maps_the_folders(venv: tuple[Path, Path], tmp_path: Path) -> None:
    """The driver API imports (standard library only) from the installed wheel, not
    from the repository, and every entry point names a module that the wheel holds."""
    python, site = venv
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", build_wheel(ROOT, tmp_path))
    probe = (
        "import citygate.drivers.api as api, importlib.metadata as md, importlib.util as u\n"
        "print(api.__file__)\n"
        "for ep in md.entry_points(group='citygate.drivers'):\n"
        "    print(ep.name, u.find_spec(ep.value.split(':')[0]) is not None)\n"
    )
    lines = run(python, "-c", probe, cwd=tmp_path).split("\n")
    assert lines[0] == str(site / "citygate" / "drivers" / "api.py")
    assert sorted(lines[1:-1]) == ["ble True", "mbus True", "modbus True", "wmbus True"]


@pytest.mark.parametrize("project", [ROOT, ROOT / "hardware-sim"], ids=["citygate", "citygate-sim"])
def test_packaging_builds_without_deprecation_warnings(project: Path, tmp_path: Path) -> None:
    """Issue 16: a fresh install printed pages of setuptools deprecations (``project.license``
    as a table); the build's own verbose output must hold none."""
    sources = tmp_path / "sources"
    shutil.copytree(project, sources, ignore=shutil.ignore_patterns(
        ".*", "__pycache__", "build", "*.egg-info", "tests", "plugin-template", "hardware-sim"
    ))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "out"), str(sources)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "deprecat" not in output.lower(), output
