"""Only the adapters know the drivers (issue 14 item 2).

A static check of every module of the package outside ``elasticpool/asyncpg/``
and ``elasticpool/psycopg/``: none imports asyncpg, psycopg or psycopg_pool at
run time, and none guesses a driver from ``sys.modules``, a module name
(``__module__``, ``__mro__``, a string naming a driver module) or the methods a
connection happens to have (``getattr(conn, ...)``). What they need from a
driver goes through a connector (``fetch`` and the rest of
:class:`elasticpool.Connector`) or through the adapters (``elasticpool._adapters``).

Imports under ``if TYPE_CHECKING:`` are allowed: they never run, and they give
``wrap()`` its typed overloads.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import elasticpool

ROOT = Path(elasticpool.__file__).parent

ADAPTER_PACKAGES = ("asyncpg", "psycopg")
"""Sub-packages of elasticpool that may use their driver."""

DRIVERS = frozenset({"asyncpg", "psycopg", "psycopg_pool", "psycopg_binary", "psycopg_c"})
"""Top-level modules of the drivers."""

DRIVER_MODULE = re.compile(r"(asyncpg|psycopg|psycopg_pool|psycopg_binary|psycopg_c)(\.\w+)*")
"""A string that names a driver module."""

IMPORTERS = frozenset(
    {"import_module", "__import__", "find_spec", "require", "get", "startswith", "endswith"}
)
"""Calls that import a module named by a string, or test a module name against one."""

CONNECTION_NAMES = frozenset({"conn", "connection", "raw", "driver_conn"})
"""Names a connection goes by in the package: ``getattr``/``hasattr`` on one is duck typing."""


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _formatted(tree: ast.Module) -> set[int]:
    """``id()`` of every node inside an f-string's ``{...}`` (text for a message, not a test)."""
    return {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.FormattedValue)
        for sub in ast.walk(node.value)
    }


def _tested(tree: ast.Module) -> set[int]:
    """``id()`` of every string compared (``==``, ``in``) or given to an importer or name test."""
    found: set[int] = set()
    for node in ast.walk(tree):
        operands: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in IMPORTERS:
                operands = list(node.args)
        found |= {id(sub) for op in operands for sub in ast.walk(op)}
    return found


def sniffing(source: str) -> list[str]:
    """Each way ``source`` knows a driver, as ``line: what`` (empty: it knows none)."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skipped |= {id(sub) for stmt in node.body for sub in ast.walk(stmt)}
    formatted = _formatted(tree)
    tested = _tested(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [
                f"{line}: imports {a.name}"
                for a in node.names
                if a.name.partition(".")[0] in DRIVERS
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.partition(".")[0] in DRIVERS:
                found.append(f"{line}: imports from {node.module}")
        elif isinstance(node, ast.Attribute):
            if node.attr == "modules" and ast.unparse(node.value) == "sys":
                found.append(f"{line}: reads sys.modules")
            elif node.attr in ("__module__", "__mro__") and id(node) not in formatted:
                found.append(f"{line}: reads {node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in tested and DRIVER_MODULE.fullmatch(node.value):
                found.append(f"{line}: tests or imports driver module {node.value!r}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in CONNECTION_NAMES
        ):
            found.append(f"{line}: duck-types {node.args[0].id} with {node.func.id}")
    return found


def core_modules() -> list[Path]:
    """Every module of the package but the adapters'."""
    return [
        p
        for p in sorted(ROOT.rglob("*.py"))
        if p.relative_to(ROOT).parts[0] not in ADAPTER_PACKAGES
    ]


def test_no_module_outside_the_adapters_imports_or_sniffs_a_driver() -> None:
    """Outside elasticpool.asyncpg and elasticpool.psycopg, nothing imports or guesses a driver."""
    modules = core_modules()
    assert len(modules) >= 30, "too few modules: the check is not looking"
    problems = [
        f"{path.relative_to(ROOT.parent)}:{problem}"
        for path in modules
        for problem in sniffing(path.read_text(encoding="utf-8"))
    ]
    assert problems == []


def test_the_adapters_are_where_the_drivers_are() -> None:
    """The adapters do import their drivers: the check sees imports where they are."""
    for package in ADAPTER_PACKAGES:
        connector = ROOT / package / "_connector.py"
        assert any("imports" in p for p in sniffing(connector.read_text(encoding="utf-8")))


SNIFFERS = {
    "module-name": """
async def fetch(conn, sql):
    module = type(conn).__module__
    if module.startswith(("asyncpg", "psycopg")):
        return await conn.fetch(sql)
""",
    "mro": """
def kind(conn):
    return [c.__module__ for c in type(conn).__mro__]
""",
    "sys-modules": """
import sys
def leases_for(existing):
    apg = sys.modules.get("asyncpg.pool")
    return apg is not None and isinstance(existing, apg.Pool)
""",
    "import-in-function": """
async def connect(dsn):
    import asyncpg
    return await asyncpg.connect(dsn)
""",
    "from-import": """
from psycopg_pool import AsyncConnectionPool
""",
    "import-module": """
import importlib
def driver():
    return importlib.import_module("psycopg")
""",
    "compare-name": """
def is_asyncpg(module):
    return module.__name__ == "asyncpg"
""",
    "duck-typing": """
async def lag(conn):
    fetchval = getattr(conn, "fetchval", None)
    return await fetchval("SELECT 1")
""",
}
"""One module per way of knowing a driver (the ones this package used before issue 14)."""

CLEAN = '''
"""Wraps an asyncpg.Pool or a psycopg_pool.AsyncConnectionPool; "asyncpg" in a docstring."""
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    import asyncpg

EXTRA = "asyncpg"  # a name for a message ("pip install 'elasticpool[asyncpg]'")

def refuse(existing):
    kind = type(existing)
    raise TypeError(f"wrap() takes an asyncpg.Pool (got {kind.__module__}.{kind.__qualname__})")

async def fetch(connector, conn, sql, *args):
    return await connector.fetch(conn, sql, *args)
'''


def test_the_check_flags_each_way_of_sniffing_a_driver() -> None:
    """Every sniffer is flagged; docstrings, messages, names and TYPE_CHECKING imports are not."""
    flagged = {name: sniffing(source) for name, source in SNIFFERS.items()}
    assert {name: bool(found) for name, found in flagged.items()} == dict.fromkeys(SNIFFERS, True)
    assert sniffing(CLEAN) == []
