"""The import contract: who may import whom, read from the source with ``ast``.

Every ``import`` and ``from … import`` is read, at any depth (also inside functions), and so
is every ``importlib.import_module("…")`` with a literal name. The rules:

* nothing imports the old top-level names ``agent``, ``drivers`` or ``hwsim``;
* a built-in driver (``citygate.drivers.<name>``, the folder drivers/<name>/) imports only
  ``citygate.drivers.api`` and its own folder — no runtime module, no other driver — except
  the sans-I/O protocol modules listed in ``SHARED`` for the drivers named there;
* the API (``citygate.drivers.api``, with its private helpers ``citygate.drivers._*``)
  imports nothing of citygate but those;
* the runtime (``citygate.*``, agent/) reaches drivers only through the entry-point registry:
  it imports ``citygate.drivers.api`` and no ``citygate.drivers.<name>``; only the demo
  imports the simulators;
* the simulators (``citygate_sim``) import nothing of citygate: they are an independent
  oracle for the drivers;
* the plugin template imports only ``citygate.drivers.api`` of citygate.

``python -m tests.tools.imports`` checks the repository (exit 1 on a violation);
``--graph`` prints which folder imports which, then which module imports which.
"""

from __future__ import annotations

import argparse
import ast
import collections
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LEGACY = ("agent", "drivers", "hwsim")
API = "citygate.drivers.api"
OWN = ("citygate", "citygate_sim", *LEGACY)
SHARED: dict[str, tuple[str, ...]] = {
    # EN 13757-3 records are the same on wired and wireless M-Bus
    "citygate.drivers.mbus.decode": ("citygate.drivers.wmbus",),
}
"""Sans-I/O protocol module → the other drivers that may import it."""


def source_roots(root: Path) -> dict[str, Path]:
    """Import name → folder, as pyproject.toml maps them (the plugin template is a
    third-party package of its own)."""
    roots = {
        "citygate": root / "agent",
        "citygate.drivers": root / "drivers",
        "citygate_sim": root / "hardware-sim" / "src" / "citygate_sim",
    }
    template = root / "drivers" / "plugin-template" / "src"
    if template.is_dir():
        for package in sorted(template.iterdir()):
            if (package / "__init__.py").is_file():
                roots[package.name] = package
    return roots


@dataclass(frozen=True, slots=True)
class Import:
    """One module named by one import statement."""

    importer: str
    path: Path
    line: int
    target: str


@dataclass(frozen=True, slots=True)
class Violation:
    """An import the contract forbids."""

    where: Import
    rule: str

    def __str__(self) -> str:
        where = self.where
        return f"{where.path}:{where.line}: {where.importer} imports {where.target} ({self.rule})"


def modules(roots: Mapping[str, Path]) -> dict[str, Path]:
    """Every module below the roots by its import name (a file belongs to its deepest root)."""
    found: dict[str, Path] = {}
    for name, folder in roots.items():
        for path in sorted(folder.rglob("*.py")):
            deepest = max(
                (f for f in roots.values() if path.is_relative_to(f)), key=lambda f: len(f.parts)
            )
            if deepest != folder or "plugin-template" in path.relative_to(folder).parts:
                continue
            rel = path.relative_to(folder).with_suffix("").parts
            found[".".join([name, *(p for p in rel if p != "__init__")])] = path
    return found


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[Import]:
    """The citygate-family modules that the module ``name`` at ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(name, is_package, node)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.append(sub if sub in known else module)
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (
                    isinstance(node.func, ast.Name)
                    and node.func.id in {"import_module", "__import__"}
                )
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            targets = [node.args[0].value]
        for target in dict.fromkeys(targets):
            if target.split(".")[0] in OWN or target in known:
                yield Import(name, path, node.lineno, target)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _driver_package(module: str) -> str | None:
    """``citygate.drivers.modbus.x`` → ``citygate.drivers.modbus``; None for the API side."""
    parts = module.split(".")
    if (
        len(parts) >= 3
        and parts[:2] == ["citygate", "drivers"]
        and not parts[2].startswith("_")
        and parts[2] != "api"
    ):
        return ".".join(parts[:3])
    return None


def _api_side(module: str) -> bool:
    parts = module.split(".")
    return module == "citygate.drivers" or (
        len(parts) >= 3
        and parts[:2] == ["citygate", "drivers"]
        and (parts[2] == "api" or parts[2].startswith("_"))
    )


def rule_broken(found: Import, template_packages: frozenset[str]) -> str | None:
    """The rule ``found`` breaks, or None."""
    importer, target = found.importer, found.target
    if target.split(".")[0] in LEGACY:
        return "old top-level name; use citygate / citygate_sim"
    top = importer.split(".")[0]
    if top in template_packages:
        if _within(target, "citygate") and not _within(target, API):
            return "a plugin imports only citygate.drivers.api"
        return None
    if top == "citygate_sim":
        if _within(target, "citygate"):
            return "the simulators are independent of citygate"
        return None
    own_driver = _driver_package(importer)
    if own_driver is not None:
        if _within(target, own_driver) or _within(target, API):
            return None
        if own_driver in SHARED.get(target, ()):
            return None
        return "a driver imports only citygate.drivers.api and its own folder"
    if _api_side(importer):
        if _api_side(target):
            return None
        return "the driver API imports nothing of the runtime or the drivers"
    # the runtime
    if _driver_package(target) is not None:
        return "the runtime reaches drivers only through the entry-point registry"
    if (
        _within(target, "citygate.drivers")
        and not _within(target, API)
        and target != "citygate.drivers"
    ):
        return "the runtime uses citygate.drivers.api, not its private helpers"
    if _within(target, "citygate_sim") and importer != "citygate.demo":
        return "only the demo runs the simulators"
    return None


def check(root: Path = ROOT) -> tuple[list[Violation], list[Import]]:
    """Every violation and every import under ``root``."""
    roots = source_roots(root)
    known = modules(roots)
    template_packages = frozenset(
        n for n in roots if n not in {"citygate", "citygate.drivers", "citygate_sim"}
    )
    found = [imp for name, path in known.items() for imp in imports(name, path, known)]
    for path in sorted((root / "tests").rglob("*.py")) if (root / "tests").is_dir() else []:
        name = ".".join(path.relative_to(root).with_suffix("").parts)
        for imp in imports(name, path, known):
            if imp.target.split(".")[0] in LEGACY:
                found.append(imp)
    violations = [
        Violation(imp, rule)
        for imp in found
        if (rule := rule_broken(imp, template_packages)) is not None
    ]
    return violations, found


def folder_of(module: str) -> str:
    """The folder a module lives in, as the architecture map names it."""
    driver = _driver_package(module)
    if driver is not None:
        return driver
    if _api_side(module):
        return "citygate.drivers.api"
    return (
        module.split(".", maxsplit=1)[0]
        if module.split(".", maxsplit=1)[0] != "citygate"
        else "citygate (runtime)"
    )


def graph(found: list[Import]) -> str:
    """Per folder, then per module: who imports whom (tests left out)."""
    by_folder: dict[str, set[str]] = collections.defaultdict(set)
    by_module: dict[str, set[str]] = collections.defaultdict(set)
    for imp in found:
        if imp.importer.startswith("tests."):
            continue
        by_module[imp.importer].add(imp.target)
        a, b = folder_of(imp.importer), folder_of(imp.target)
        if a != b:
            by_folder[a].add(b)
    lines = ["per folder:"]
    lines += [f"  {a} -> {', '.join(sorted(by_folder[a]))}" for a in sorted(by_folder)]
    lines.append("per module:")
    lines += [f"  {a} -> {', '.join(sorted(by_module[a]))}" for a in sorted(by_module)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.tools.imports", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--graph", action="store_true", help="print the import graph")
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args(argv)
    violations, found = check(args.root)
    if args.graph:
        print(graph(found))
    for violation in violations:
        print(violation, file=sys.stderr)
    if violations:
        print(f"import contract: {len(violations)} violation(s)", file=sys.stderr)
        return 1
    print(f"import contract: kept ({len(found)} imports checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
