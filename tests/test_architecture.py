"""The module map holds: imports go one way, read-side commands never reach for the coordinator, no import
circles, rooms of a sensible size, and the README's parameter table is the hyperparameter table."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT
from workers.hyperparameters import readme_table

PACKAGES = ("sweeps", "workers")
READ_SIDE = ("sweeps.summary", "sweeps.report", "sweeps.export", "sweeps.trained", "sweeps.dashboard")


def _modules() -> dict[str, Path]:
    return {f"{p.parent.name}.{p.stem}": p for package in PACKAGES for p in sorted((ROOT / package).glob("*.py"))
            if p.stem != "__init__"}


def _imports(path: Path) -> set[str]:
    """Our modules that ``path`` imports at run time, at the top or inside functions (not for type checking)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in _modules()}


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path) for name, path in _modules().items()}


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_workers_never_import_sweeps() -> None:
    for name, imported in _graph().items():
        if name.startswith("workers."):
            assert not {m for m in imported if m.startswith("sweeps.")}, name


def test_read_side_modules_never_import_the_coordinator() -> None:
    graph = _graph()
    for name in READ_SIDE:
        assert "sweeps.coordinator" not in _reaches(graph, name), name
        assert "sweeps.raydispatch" not in _reaches(graph, name), name


def test_no_import_circles() -> None:
    graph = _graph()
    for name in graph:
        assert name not in _reaches(graph, name), f"{name} imports itself through {sorted(_reaches(graph, name))}"


def test_no_module_over_400_lines_and_no_coordinator_function_over_50() -> None:
    for name, path in _modules().items():
        assert len(path.read_text().splitlines()) <= 400, name
    tree = ast.parse((ROOT / "sweeps" / "coordinator.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= 50, node.name


def test_the_readme_parameter_table_is_the_hyperparameter_table() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme_table() in readme, "regenerate the README's table: python -c 'from workers.hyperparameters " \
                                     "import readme_table; print(readme_table())'"
