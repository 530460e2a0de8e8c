"""The package's own modules import one another without a cycle (issue 14 item 5).

Only module-level imports count: an import inside a function, or under
``if TYPE_CHECKING:``, runs later or never, so it cannot close a cycle at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import elasticpool

ROOT = Path(elasticpool.__file__).parent


def module_name(path: Path) -> str:
    """The dotted name of the module at ``path`` under the package root."""
    parts = ["elasticpool", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` test is ``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def top_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports run at import time: not in functions or classes, not under ``TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                found += top_level_imports(node.body)
            found += top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += top_level_imports(block)
        elif isinstance(node, ast.With):
            found += top_level_imports(node.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each of the package's modules mapped to the package modules it imports at top level."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in top_level_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in ``graph`` as a list of modules (first repeated last), or ``None``."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = [start]
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                done.add(path.pop())
                stack.pop()
            elif nxt in path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_graph_sees_the_package() -> None:
    """The graph covers the package's modules and sees a known top-level import."""
    graph = import_graph()
    assert "elasticpool._state" in graph["elasticpool._pool"]
    assert "elasticpool.cli._chart" in graph["elasticpool.cli._demo"]


def test_find_cycle_reports_a_cycle() -> None:
    """The cycle finder names the modules of a cycle, and ``None`` on a graph without one."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    """No module of the package imports itself back through other modules at import time."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
