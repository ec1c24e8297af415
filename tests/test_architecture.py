"""The package's import graph has no circles (issue 15): no module imports, anywhere in it, a
module that imports it back, ``TYPE_CHECKING`` imports included (a type named across a
circle is still two modules leaning on each other: name a protocol instead)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cco_cost_monitor"


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(tree: ast.Module) -> set[str]:
    """Every module an import anywhere in the file names, function-level ones too (an import
    moved into a function to dodge a circle is still a circle)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        graph[_module_name(path)] = _imports(ast.parse(path.read_text()))
    return {name: {d for d in deps if d in graph and d != name} for name, deps in graph.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for dep in sorted(graph[name]):
            if dep not in index:
                visit(dep)
                low[name] = min(low[name], low[dep])
            elif dep in stack:
                low[name] = min(low[name], index[dep])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert graph.get("cco_cost_monitor.server")
    assert circles(graph) == []


def test_the_circle_check_sees_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_readme_module_table_names_every_module() -> None:
    """The README's layout table is the tree: every module and package, and nothing else."""
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = {
        name
        for line in table.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([\w./]+)`", line.split("|")[1])
    }
    tree = {path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py"} | {
        f"{path.name}/"
        for path in PACKAGE.iterdir()
        if path.is_dir() and not path.name.startswith("__")
    }
    assert named == tree
