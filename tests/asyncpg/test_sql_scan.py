"""The SQL scan that decides which parts of a session a borrower's statements may dirty.

Pure: no server. Each row is a statement and the parts it must dirty; what
the scan cannot vouch for dirties every part (``ALL``), and that is the
direction every doubtful case must fall.
"""

from __future__ import annotations

import pytest

from elasticpool._dirty import (
    ALL,
    CURSORS,
    LISTEN,
    LOCKS,
    PREPARED,
    SEQUENCES,
    SETTINGS,
    TEMP,
    scan,
)

CLEAN = [
    "SELECT 1",
    "select $1::int + 1",
    "SELECT id, name FROM users WHERE id = $1",
    "UPDATE t SET a = lower($1) WHERE id = ANY($2::int[])",
    "DELETE FROM t WHERE id = $1 RETURNING id",
    "SELECT count(*) FILTER (WHERE x) OVER (PARTITION BY y) FROM t",
    "SELECT * FROM generate_series(1, 3) AS g(i)",
    "SELECT * FROM unnest($1::int[]) u(x)",
    "WITH x(a) AS (SELECT 1) SELECT * FROM x",
    "(SELECT 1) UNION (SELECT 2)",
    "SELECT ARRAY(SELECT 1), EXISTS (SELECT 1), 1 IN (1, 2)",
    "SELECT x::numeric(10, 2), CAST(y AS varchar(3)) FROM t",
    "SELECT * FROM t LEFT JOIN (SELECT 1) s ON (true)",
    "SELECT pg_catalog.lower('x'), coalesce($1, 'y'), now()",
    "SELECT set_config('app.tenant', $1, true)",  # transaction-local
    "SELECT pg_advisory_xact_lock(1)",  # released with the transaction
    "SELECT pg_notify('ch', 'x')",
    "SELECT $$ ; SET x = 1 $$",  # a literal, not a statement
    "SELECT 'RESET ALL', 'LISTEN x' -- SET y = 1",
    "BEGIN; SET LOCAL statement_timeout = 5; SELECT 1; COMMIT",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SHOW search_path",
    "NOTIFY ch, 'x'",
    "SAVEPOINT a; RELEASE a; ROLLBACK",
    "CLOSE ALL",
    "",
    "  ;  ;  ",
]


@pytest.mark.parametrize("sql", CLEAN)
def test_statements_that_leave_nothing_dirty_nothing(sql: str) -> None:
    """Queries, DML, transaction control and pure built-ins dirty no part."""
    assert scan(sql) == 0


DIRTY = [
    ("SET search_path = x", SETTINGS),
    ("SET ROLE someone", SETTINGS),
    ("SET SESSION AUTHORIZATION someone", SETTINGS),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", SETTINGS),
    ("RESET ALL", SETTINGS),
    ("SELECT set_config('a', 'b', false)", SETTINGS),
    ("SELECT set_config('a', $1, $2)", SETTINGS),  # local or not: unknown
    ("SELECT 1; SET x.y = 1", SETTINGS),
    ("LISTEN ch", LISTEN),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", CURSORS),
    ("SELECT pg_advisory_lock(1)", LOCKS),
    ("SELECT pg_try_advisory_lock_shared($1)", LOCKS),
    ("PREPARE p AS SELECT 1", PREPARED),
    ("DEALLOCATE p", PREPARED),
    ("SELECT nextval('s')", SEQUENCES),
    ("INSERT INTO users(id, name) VALUES ($1, now())", SEQUENCES),  # a serial default
    ("INSERT INTO public.t (id) VALUES (1) RETURNING id", SEQUENCES),
    ("UPDATE t SET id = DEFAULT", SEQUENCES),
    ("CREATE TEMP TABLE t (x int, y varchar(20))", TEMP | SEQUENCES),
    ("SELECT 1 INTO TEMP t2", TEMP),
]


@pytest.mark.parametrize(("sql", "parts"), DIRTY)
def test_statements_that_change_session_state_dirty_their_part(sql: str, parts: int) -> None:
    """SET, LISTEN, DECLARE, advisory locks, PREPARE, temp objects, sequences: their own part."""
    assert scan(sql) == parts


EVERYTHING = [
    "SELECT myfunc(1)",  # a user function may do anything
    "SELECT public.lower('x')",  # not pg_catalog's
    "CALL p()",
    "DO $$ BEGIN PERFORM 1; END $$",
    "EXECUTE p",  # a prepared statement whose text is not seen
    "EXPLAIN ANALYZE EXECUTE p",
    "DISCARD ALL",
    "VACUUM t",
    "CREATE TABLE t (x int)",
    "LOAD 'auto_explain'",
    'SELECT "MyFunc"(1)',
    "SELECT U&\"\\0073et_config\"('a', 'b', false)",  # escaped name: unknown
    "SELECT '\\', 1",  # backslash in a plain literal: reading depends on a setting
    "SELECT 1 /* unterminated",
    "SELECT 'unterminated",
    "SELECT $tag$ unterminated",
    "SELECT 1 OPERATOR(pg_catalog.+) 2",
]


@pytest.mark.parametrize("sql", EVERYTHING)
def test_what_the_scan_cannot_vouch_for_dirties_everything(sql: str) -> None:
    """User functions, CALL, DO, EXECUTE, DDL, DISCARD and unreadable text: every part."""
    assert scan(sql) == ALL


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT '--', set_config('a', 'b', false)",  # a comment marker inside a literal
        "SELECT E'\\'', set_config('a', 'b', false)",  # an escaped quote in E''
        "SELECT \"set_config\"('a', 'b', false)",  # a quoted name
        "SELECT set_config/**/('a', 'b', false)",  # a comment between name and paren
        "SELECT set_config\n  ('a', 'b', false)",
        "SELECT pg_catalog.set_config('a', 'b', false)",
        "SELECT x FROM t WHERE y = (SELECT set_config('a', 'b', false))",
    ],
)
def test_literals_comments_and_quoting_do_not_hide_a_call(sql: str) -> None:
    """A call is found whatever literals, comments, quotes or spaces surround it."""
    assert scan(sql) & SETTINGS
