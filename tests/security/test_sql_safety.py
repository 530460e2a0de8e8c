"""SQL safety: no SQL in ``src/elasticpool`` is built from outside input by string formatting.

Three parts:

* a static check of every statement the package sends (:func:`scan`), with a
  test that it is not vacuous (it flags what it must flag);
* the coordination table's name, quoted: a name with a double quote, a
  space, a semicolon and upper case creates exactly that table, injects
  nothing, and works, with asyncpg and with psycopg;
* a least-privilege membership: a role with only CONNECT and USAGE + CREATE
  on a schema of its own creates the tables itself and coordinates. (The
  other least-privilege case, tables created by an administrator and only
  SELECT/INSERT/UPDATE/DELETE granted, is in ``test_fleet_postgres.py``.)
"""

from __future__ import annotations

import ast
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import elasticpool
from elasticpool._sql import quote_ident, quote_literal

from ..helpers import eventually

SRC = Path(elasticpool.__file__).parent

SINKS = frozenset({"execute", "executemany", "fetch", "fetchrow", "fetchval", "fetchmany"})
"""Methods whose first argument is SQL (asyncpg's and psycopg's, and our faces' shortcuts)."""

HELPER_SINKS = {"fetch": 1}
"""Plain functions whose argument at this index is SQL: a connector's ``fetch(conn, sql, *args)``
held in a local name, as the fleet does."""

CONNECTOR_SINKS = frozenset({"fetch"})
"""Methods of a connector (``connector.fetch(conn, sql, *args)``) whose second argument is SQL."""

QUOTERS = frozenset({"quote_ident", "quote_literal"})
"""The quoting helpers of ``elasticpool._sql``: what they return is safe to interpolate."""

NUMBERS = frozenset({"int", "len", "float", "sum"})
"""Builtins whose result is a number: safe to interpolate."""

STR_METHODS = frozenset({"rstrip", "lstrip", "strip", "split", "lower", "upper", "removeprefix"})
"""``str`` methods that keep a safe string safe (given constant arguments)."""

ALLOWED = {
    "conn.get_reset_query()": "asyncpg's own reset SQL for servers without the full feature set",
}
"""Interpolated expressions allowed by name, with the reason: SQL that comes from the driver."""


# =============================================================================
# The checker
# =============================================================================


@dataclasses.dataclass
class _Scope:
    """Where an expression sits: its module, class and function (for resolving names)."""

    path: str
    module: ast.Module
    cls: ast.ClassDef | None
    func: ast.FunctionDef | ast.AsyncFunctionDef | None


def _functions(body: list[ast.stmt]) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {n.name: n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _assigned(node: ast.AST, target: str) -> list[ast.expr]:
    """Values assigned to ``target`` (a name, or ``self.attr``) anywhere inside ``node``.

    A ``for`` target counts as assigned its loop's iterable.
    """
    found: list[ast.expr] = []
    for sub in ast.walk(node):
        pairs: list[tuple[ast.expr, ast.expr]] = []
        if isinstance(sub, ast.Assign):
            pairs = [(t, sub.value) for t in sub.targets]
        elif isinstance(sub, (ast.AnnAssign, ast.AugAssign)) and sub.value is not None:
            pairs = [(sub.target, sub.value)]
        elif isinstance(sub, (ast.For, ast.AsyncFor)):
            pairs = [(sub.target, sub.iter)]
        for tgt, value in pairs:
            if ast.unparse(tgt) == target:
                found.append(value)
    return found


def _params(func: ast.FunctionDef | ast.AsyncFunctionDef | None) -> set[str]:
    if func is None:
        return set()
    a = func.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    names += [x for x in (a.vararg, a.kwarg) if x is not None]
    return {x.arg for x in names}


def _callee(
    call: ast.Call, scope: _Scope
) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef, _Scope] | None:
    """The function of this module (or method of this class) that ``call`` calls, if any."""
    f = call.func
    if isinstance(f, ast.Name):
        fn = _functions(scope.module.body).get(f.id)
        if fn is not None:
            return fn, _Scope(scope.path, scope.module, None, fn)
    if (
        isinstance(f, ast.Attribute)
        and isinstance(f.value, ast.Name)
        and f.value.id == "self"
        and scope.cls is not None
    ):
        fn = _functions(scope.cls.body).get(f.attr)
        if fn is not None:
            return fn, _Scope(scope.path, scope.module, scope.cls, fn)
    return None


def _attribute_values(target: str, scope: _Scope) -> list[tuple[ast.expr, _Scope]]:
    """Values assigned to ``self.attr`` in the class, each with the scope of its method."""
    if scope.cls is None:
        return []
    return [
        (value, _Scope(scope.path, scope.module, scope.cls, fn))
        for fn in _functions(scope.cls.body).values()
        for value in _assigned(fn, target)
    ]


def _returns(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.expr]:
    return [n.value for n in ast.walk(fn) if isinstance(n, ast.Return) and n.value is not None]


class Checker:
    """Finds SQL built by formatting with parts that are not provably safe."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.sinks = 0
        self._seen: set[tuple[int, str]] = set()

    # ------------------------------------------------------------------ entry

    def check_module(self, path: str, source: str) -> None:
        module = ast.parse(source)
        self._walk(module, _Scope(path, module, None, None))

    def _walk(self, node: ast.AST, scope: _Scope) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, ast.ClassDef):
                inner = _Scope(scope.path, scope.module, child, None)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = _Scope(scope.path, scope.module, scope.cls, child)
            elif isinstance(child, ast.Call):
                sql = self._sql_argument(child)
                if sql is not None:
                    self.sinks += 1
                    self._built(sql, scope, depth=0)
            self._walk(child, inner)

    @staticmethod
    def _sql_argument(call: ast.Call) -> ast.expr | None:
        f = call.func
        if (
            isinstance(f, ast.Attribute)
            and f.attr in CONNECTOR_SINKS
            and ast.unparse(f.value).endswith("connector")
            and len(call.args) > 1
        ):
            return call.args[1]
        if isinstance(f, ast.Attribute) and f.attr in SINKS and call.args:
            first = call.args[0]
            return None if isinstance(first, ast.Starred) else first
        if isinstance(f, ast.Name) and f.id in HELPER_SINKS and len(call.args) > HELPER_SINKS[f.id]:
            return call.args[HELPER_SINKS[f.id]]
        return None

    def _flag(self, part: ast.expr, scope: _Scope) -> None:
        text = ast.unparse(part)
        if text in ALLOWED:
            return
        key = (id(part), text)
        if key not in self._seen:
            self._seen.add(key)
            self.problems.append(f"{scope.path}:{part.lineno}: {text} is formatted into sql")

    # ------------------------------------------------------------------ sql as a whole

    def _built(self, expr: ast.expr, scope: _Scope, depth: int) -> None:
        """Check SQL text ``expr``: plain text passed through is fine; formatting must be safe."""
        if depth > 12:
            self._flag(expr, scope)
            return
        parts = self._formatting(expr)
        if parts is not None:
            template, values = parts
            if template is not None:
                self._built(template, scope, depth + 1)
            for value in values:
                if not self._safe(value, scope, depth + 1):
                    self._flag(value, scope)
            return
        if isinstance(expr, ast.IfExp):
            self._built(expr.body, scope, depth + 1)
            self._built(expr.orelse, scope, depth + 1)
        elif isinstance(expr, ast.Name):
            if expr.id in _params(scope.func):
                return  # the caller's SQL, passed through unchanged
            for value in self._values_of(expr.id, scope):
                self._built(value, scope, depth + 1)
        elif isinstance(expr, ast.Attribute) and ast.unparse(expr.value) == "self":
            for value, inner in _attribute_values(ast.unparse(expr), scope):
                self._built(value, inner, depth + 1)
        elif isinstance(expr, ast.Call):
            callee = _callee(expr, scope)
            if callee is not None:
                fn, inner = callee
                for value in _returns(fn):
                    self._built(value, inner, depth + 1)
            else:
                if isinstance(expr.func, ast.Attribute):
                    self._built(expr.func.value, scope, depth + 1)
                for arg in expr.args:
                    self._built(arg, scope, depth + 1)

    def _values_of(self, name: str, scope: _Scope) -> list[ast.expr]:
        if scope.func is not None:
            local = _assigned(scope.func, name)
            if local:
                return local
        return [
            v
            for stmt in scope.module.body
            if isinstance(stmt, (ast.Assign, ast.AnnAssign))
            for v in _assigned(stmt, name)
        ]

    @staticmethod
    def _formatting(expr: ast.expr) -> tuple[ast.expr | None, list[ast.expr]] | None:
        """``(template, interpolated values)`` if ``expr`` formats a string, else ``None``.

        f-strings, ``%``, ``+`` and ``.format(...)``. For ``+`` both operands
        count as interpolated; for ``%`` and ``.format`` the left side or the
        receiver is the template.
        """
        if isinstance(expr, ast.JoinedStr):
            return None, [v.value for v in expr.values if isinstance(v, ast.FormattedValue)]
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return None, [expr.left, expr.right]
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mod):
            right = expr.right
            values = list(right.elts) if isinstance(right, ast.Tuple) else [right]
            return expr.left, values
        if (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr == "format"
        ):
            return expr.func.value, [*expr.args, *(k.value for k in expr.keywords)]
        return None

    # ------------------------------------------------------------------ interpolated parts

    def _safe(self, expr: ast.expr, scope: _Scope, depth: int) -> bool:
        """Whether ``expr``'s value is provably safe to put into SQL text."""
        if depth > 12:
            return False
        if ast.unparse(expr) in ALLOWED:
            return True
        if isinstance(expr, ast.Constant):
            return True
        parts = self._formatting(expr)
        if parts is not None:
            template, values = parts
            return (template is None or self._safe(template, scope, depth + 1)) and all(
                self._safe(v, scope, depth + 1) for v in values
            )
        if isinstance(expr, ast.IfExp):
            return self._safe(expr.body, scope, depth + 1) and self._safe(
                expr.orelse, scope, depth + 1
            )
        if isinstance(expr, ast.Name):
            if expr.id in _params(scope.func):
                return False  # outside input
            values = self._values_of(expr.id, scope)
            return bool(values) and all(self._safe(v, scope, depth + 1) for v in values)
        if isinstance(expr, ast.Attribute) and ast.unparse(expr.value) == "self":
            pairs = _attribute_values(ast.unparse(expr), scope)
            return bool(pairs) and all(self._safe(v, inner, depth + 1) for v, inner in pairs)
        if isinstance(expr, (ast.GeneratorExp, ast.ListComp)):
            return self._safe(expr.elt, scope, depth + 1)
        if isinstance(expr, ast.Call):
            return self._safe_call(expr, scope, depth)
        return False

    def _safe_call(self, call: ast.Call, scope: _Scope, depth: int) -> bool:
        f = call.func
        if isinstance(f, ast.Name) and (f.id in QUOTERS or f.id in NUMBERS):
            return True
        if isinstance(f, ast.Attribute) and f.attr == "join":  # "sep".join(safe parts)
            return self._safe(f.value, scope, depth + 1) and all(
                self._safe(a, scope, depth + 1) for a in call.args
            )
        if isinstance(f, ast.Attribute) and f.attr in STR_METHODS:
            return self._safe(f.value, scope, depth + 1) and all(
                isinstance(a, ast.Constant) for a in call.args
            )
        callee = _callee(call, scope)
        if callee is not None:
            fn, inner = callee
            values = _returns(fn)
            return bool(values) and all(self._safe(v, inner, depth + 1) for v in values)
        return False


def scan(root: Path = SRC) -> Checker:
    """Run the checker over every module of the package."""
    checker = Checker()
    for path in sorted(root.rglob("*.py")):
        checker.check_module(str(path.relative_to(root.parent)), path.read_text(encoding="utf-8"))
    return checker


# =============================================================================
# Static tests
# =============================================================================


def test_no_sql_in_the_package_is_formatted_from_unquoted_input() -> None:
    """Every statement sent is constant, passed through, or formatted only from safe parts.

    Safe parts (what the checker allows): literals; the results of
    ``quote_ident`` and ``quote_literal``; numbers from ``int``/``len``/
    ``float``/``sum``; module constants, locals and ``self`` attributes whose
    every assignment is safe; ``str`` methods and ``join`` over safe parts;
    functions of the same module or class whose every return is safe; and
    the driver's own SQL listed in :data:`ALLOWED`. A function parameter
    passed through unchanged as the whole statement (the caller's SQL, as in
    ``pool.fetch(query)``) is allowed; formatted into one, it is not.
    """
    checker = scan()
    assert checker.sinks >= 30, "the checker found too few statements: it is not looking"
    assert checker.problems == []


BAD = """
async def by_fstring(conn, table):
    await conn.execute(f"DROP TABLE {table}")

async def by_percent(conn, name):
    await conn.fetch("SELECT * FROM %s" % name)

async def by_format(conn, name):
    await conn.fetchval("SELECT * FROM {}".format(name))

async def by_plus(conn, name):
    sql = "SELECT * FROM " + name
    await conn.fetchrow(sql)

async def by_connector(pool, conn, name):
    await pool.connector.fetch(conn, f"SELECT * FROM {name}")

class Member:
    def __init__(self, table):
        self._table = table

    async def beat(self, conn):
        await fetch(conn, f"DELETE FROM {self._table}")
"""

GOOD = """
_TEMPLATE = "SELECT {n} FROM t"

async def quoted(conn, table):
    await conn.execute(f"DROP TABLE {quote_ident(table)}")

async def numbers(conn, items):
    await conn.execute(_TEMPLATE.format(n=len(items)))

async def passthrough(conn, query, *args):
    return await conn.fetch(query, *args)

async def connector_passthrough(connector, conn, query, *args):
    return await connector.fetch(conn, query, *args)

class Member:
    def __init__(self, table, schema):
        prefix = "" if schema is None else quote_ident(schema) + "."
        self._table = prefix + quote_ident(table)

    async def beat(self, conn, name):
        await fetch(conn, f"DELETE FROM {self._table} WHERE pool = $1", name)
"""


def test_the_checker_flags_each_way_of_formatting_outside_input() -> None:
    """f-string (also given to a connector's fetch), %, .format, + and raw ``self`` are flagged."""
    bad = Checker()
    bad.check_module("bad.py", BAD)
    flagged = sorted(p.split(": ", 1)[1] for p in bad.problems)
    assert flagged == [
        "name is formatted into sql",
        "name is formatted into sql",
        "name is formatted into sql",
        "name is formatted into sql",
        "self._table is formatted into sql",
        "table is formatted into sql",
    ]
    good = Checker()
    good.check_module("good.py", GOOD)
    assert (good.sinks, good.problems) == (5, [])


MUTATIONS = [
    ("fleet/_postgres.py", "prefix + quote_ident(table)", "prefix + table"),
    ("fleet/_postgres.py", 'else quote_ident(schema) + "."', 'else schema + "."'),
    ("asyncpg/_reset.py", 'quote_literal("{" + ",".join(', '("{" + ",".join('),
]
"""Edits to the real source that drop a quoting helper: the checker must flag each."""


@pytest.mark.parametrize(("path", "old", "new"), MUTATIONS, ids=["table", "schema", "cache-names"])
def test_the_checker_flags_the_package_without_its_quoting(path: str, old: str, new: str) -> None:
    """The real modules, with one quoting call removed, fail the check (so it follows them)."""
    source = (SRC / path).read_text(encoding="utf-8")
    assert source.count(old) == 1, f"{path} changed: update MUTATIONS"
    checker = Checker()
    checker.check_module(path, source)
    assert checker.problems == []
    checker.check_module(path, source.replace(old, new))
    assert checker.problems


@pytest.mark.parametrize(
    ("name", "quoted"),
    [("plain", '"plain"'), ('a"b', '"a""b"'), ("Evil; DROP", '"Evil; DROP"')],
)
def test_quote_ident_doubles_quotes_and_wraps(name: str, quoted: str) -> None:
    """``quote_ident`` wraps in double quotes and doubles the ones inside."""
    assert quote_ident(name) == quoted


@pytest.mark.parametrize("bad", ["", "nul\x00byte"])
def test_quote_helpers_refuse_what_they_cannot_quote(bad: str) -> None:
    """An empty identifier and a NUL byte are refused, not quoted."""
    with pytest.raises(ValueError, match="sql identifier"):
        quote_ident(bad)
    if bad:
        with pytest.raises(ValueError, match="sql literal"):
            quote_literal(bad)


# =============================================================================
# Against the server
# =============================================================================

asyncpg = pytest.importorskip("asyncpg")
psycopg = pytest.importorskip("psycopg")

from elasticpool import Pool, PostgresMembership  # noqa: E402
from elasticpool.asyncpg import AsyncpgConnector  # noqa: E402
from elasticpool.psycopg import PsycopgConnector  # noqa: E402

NASTY = [
    "it's",
    "back\\slash",
    "\\'; DROP TABLE x; --",
    '"quoted"',
    "$elasticpool$",
    "ünïcødé ✓",
    "",
]


@pytest.mark.anyio
@pytest.mark.postgres
@pytest.mark.parametrize("conforming", ["on", "off"])
async def test_quote_literal_reads_back_exactly(pg_server: Any, conforming: str) -> None:
    """A quoted literal reads back as the same string, whatever standard_conforming_strings is."""
    conn = await asyncpg.connect(pg_server.dsn())
    try:
        await conn.execute(f"SET standard_conforming_strings = {conforming}")
        for value in NASTY:
            assert await conn.fetchval(f"SELECT {quote_literal(value)}::text") == value
    finally:
        await conn.close()


CONNECTORS = {"asyncpg": AsyncpgConnector, "psycopg": PsycopgConnector}

WEIRD_TABLE = 'Lease "Table"; DROP TABLE {canary}; --'
"""A lease table name with a double quote, spaces, a semicolon and upper case."""


@dataclasses.dataclass
class Sandbox:
    """A schema of the test's own, with a canary table an injection would drop."""

    schema: str
    canary: str


@pytest.fixture
def sandbox(pg_server: Any) -> Iterator[Sandbox]:
    """A fresh schema holding a canary table; dropped afterwards with all it holds."""
    uid = uuid.uuid4().hex[:8]
    box = Sandbox(schema=f"ep_sql_{uid}", canary=f"canary_{uid}")
    pg_server.psql(f"CREATE SCHEMA {box.schema}; CREATE TABLE {box.schema}.{box.canary} (x int)")
    try:
        yield box
    finally:
        pg_server.psql(f"DROP SCHEMA {box.schema} CASCADE")


def _tables_in(pg_server: Any, schema: str) -> set[str]:
    """Names of the ordinary tables in ``schema``, read with psql (one per line)."""
    out = pg_server.psql(
        "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE n.nspname = {quote_literal(schema)} AND c.relkind = 'r'"
    )
    return set(out.splitlines())


@asynccontextmanager
async def member(dsn: str, driver: str, schema: str, table: str) -> AsyncIterator[Pool[Any]]:
    """A pool with a PostgresMembership on ``schema``.``table``, once it coordinates."""
    membership = PostgresMembership(table=table, schema=schema, heartbeat_interval=0.2)
    pool: Pool[Any] = Pool(
        CONNECTORS[driver](dsn),
        membership=membership,
        total_max_connections=6,
        name=f"ep-sql-{driver}",
    )
    async with pool:
        async with pool.acquire():  # a member joins when a caller comes
            await eventually(pool.fleet, lambda s: s.healthy, "the membership never coordinated")
        yield pool


@pytest.mark.anyio
@pytest.mark.postgres
@pytest.mark.parametrize("driver", sorted(CONNECTORS))
async def test_lease_table_name_is_quoted_not_injected(
    pg_server: Any, sandbox: Sandbox, driver: str
) -> None:
    """A lease table named with a quote, spaces, a semicolon and capitals is exactly that table."""
    table = WEIRD_TABLE.format(canary=sandbox.canary)
    async with member(pg_server.dsn(), driver, sandbox.schema, table) as pool:
        async with pool.acquire():
            pass
        assert _tables_in(pg_server, sandbox.schema) == {sandbox.canary, table, table + "_config"}
        qualified = f"{quote_ident(sandbox.schema)}.{quote_ident(table)}"
        leases = pg_server.psql(f"SELECT pool_name FROM {qualified}")
        assert leases.splitlines() == [pool.name]
    assert pg_server.psql(f"SELECT count(*) FROM {qualified}").strip() == "0"  # it left


@pytest.fixture
def app_role(pg_server: Any, sandbox: Sandbox) -> Iterator[tuple[str, str]]:
    """A LOGIN role with CONNECT (PUBLIC's) and USAGE + CREATE on the sandbox schema only."""
    role, password = f"ep_sql_role_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    pg_server.psql(
        f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{password}';"
        f" GRANT USAGE, CREATE ON SCHEMA {sandbox.schema} TO {role}"
    )
    try:
        yield role, password
    finally:
        pg_server.psql(f"DROP OWNED BY {role}; DROP ROLE {role}")


@pytest.mark.anyio
@pytest.mark.postgres
@pytest.mark.parametrize("driver", sorted(CONNECTORS))
async def test_least_privilege_role_creates_its_lease_tables_and_coordinates(
    pg_server: Any, sandbox: Sandbox, app_role: tuple[str, str], driver: str
) -> None:
    """A role with only CONNECT and CREATE on its schema creates the two tables and coordinates."""
    role, password = app_role
    dsn = pg_server.dsn(user=role, password=password)
    async with member(dsn, driver, sandbox.schema, "leases") as pool, pool.acquire():
        assert pool.fleet().limit == 6
    owners = pg_server.psql(
        "SELECT tablename || ' ' || tableowner FROM pg_tables"
        f" WHERE schemaname = {quote_literal(sandbox.schema)} ORDER BY tablename"
    )
    assert owners.splitlines() == [
        f"{sandbox.canary} {pg_server.user}",
        f"leases {role}",
        f"leases_config {role}",
    ]
