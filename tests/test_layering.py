"""The house's floors: every import of the project's own code goes down, never up or sideways.

dragnext ← manifests ← tasks ← flows ← command, with the studio and the benchmark between
flows and the command (they import down only) and the chaos drill above the command (it
drives the whole command in-process to inject its faults at item counts)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Longest prefix wins: infra's fault helpers sit under the benchmark, its drill over the command.
FLOORS = {
    "dragnext": 0, "synthetic": 0,
    "manifests": 1, "fixture": 1,
    "tasks": 2,
    "flows": 3,
    "infra": 4, "studio": 4,
    "bench": 5,
    "command": 6,
    "infra.chaos": 7,
}


def floor(module: str) -> tuple[str, int] | None:
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, FLOORS[prefix]
    return None


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


DYNAMIC = {"import_module", "__import__"}  # importlib.import_module("x"), __import__("x")


def imported(tree: ast.AST, module: str, package: bool) -> set[str]:
    """Every module an import names, those inside functions and dynamic ones by a constant
    name too; relative ones resolved (in a package's `__init__`, `.` is the package itself).
    Running the command in a subprocess (`-m command`) is using it, not importing it."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                parts = parts[: len(parts) - node.level + (1 if package else 0)]
                base = ".".join([*parts, base] if base else parts)
            found |= {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in DYNAMIC:
            found.add(node.args[0].value)
    return found


def upward_imports(root: Path, packages: list[str]) -> list[str]:
    problems = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            own = floor(module)
            if own is None:
                problems.append(f"{module}: on no floor (add its package to FLOORS)")
                continue
            tree = ast.parse(path.read_text(), str(path))
            for target in imported(tree, module, path.name == "__init__.py"):
                other = floor(target)
                if other is not None and other[0] != own[0] and other[1] >= own[1]:
                    problems.append(f"{module} (floor {own[1]}) imports {target} (floor {other[1]})")
    return problems


def pyproject_value(key: str) -> str:
    """One `key = value` line of pyproject.toml (tomllib is 3.11+; the project runs on 3.10)."""
    return re.search(rf"^{re.escape(key)} = (.+)$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)


def source_packages() -> list[str]:
    return sorted(p.rstrip("*") for p in re.findall(r'"([^"]+)"', pyproject_value("include")))


def test_every_import_of_the_project_goes_down():
    assert upward_imports(ROOT, source_packages()) == []


def test_every_source_package_has_a_floor():
    assert set(source_packages()) <= set(FLOORS)


def test_the_command_is_the_entry_point():
    assert pyproject_value("dragnext") == '"command.main:main"'


def test_an_upward_import_is_found(tmp_path):
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text("")
    (tmp_path / "flows" / "cli.py").write_text("def f():\n    from studio import app\n")
    (tmp_path / "dragnext").mkdir()
    (tmp_path / "dragnext" / "edit.py").write_text("from . import model\nfrom ..flows import cli\n")
    (tmp_path / "studio").mkdir()
    (tmp_path / "studio" / "app.py").write_text("import command.main\n")
    (tmp_path / "studio" / "__init__.py").write_text("from . import app\nfrom .app import x\n")
    (tmp_path / "infra").mkdir()
    (tmp_path / "infra" / "faults.py").write_text("from infra.chaos import drill\n")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "run.py").write_text("import importlib\nimportlib.import_module('command.main')\n"
                                               "__import__('infra.chaos')\n")
    assert sorted(upward_imports(tmp_path, ["bench", "dragnext", "flows", "infra", "studio"])) == [
        "bench.run (floor 5) imports command.main (floor 6)",
        "bench.run (floor 5) imports infra.chaos (floor 7)",
        "dragnext.edit (floor 0) imports flows.cli (floor 3)",
        "flows.cli (floor 3) imports studio.app (floor 4)",
        "infra.faults (floor 4) imports infra.chaos.drill (floor 7)",
        "studio.app (floor 4) imports command.main (floor 6)",
    ]
