"""What a borrower's SQL may leave behind in its session: a conservative scan of the text.

A session reset clears state in parts (settings, cursors, ``LISTEN``, advisory
locks, temporary objects, sequence state, prepared statements). A connector
that sees the text of every statement a borrower ran (asyncpg reports it to
query loggers) asks :func:`scan` which parts that text may have dirtied, and
sends only those. The scan is a small lexer, not a parser, and it errs one
way only: what it cannot read, or reads as anything else than a statement
known to leave the session alone, dirties every part.

Rules, per statement (``;``-separated, after comments and literals are
stripped by the lexer):

* ``SELECT``, ``VALUES``, ``TABLE``, ``WITH``, ``INSERT``, ``UPDATE``,
  ``DELETE``, ``MERGE``, ``EXPLAIN``, ``SHOW``, ``LOCK``, ``NOTIFY``,
  ``FETCH``, ``MOVE``, ``CLOSE`` and the transaction statements (``BEGIN``,
  ``COMMIT``, ``ROLLBACK``, ``SAVEPOINT``, ``RELEASE``, ``SET LOCAL``,
  ``SET TRANSACTION``, ``SET CONSTRAINTS``...) leave nothing *by themselves*:
  what lives in a transaction ends with it, and the pool rolls back a
  transaction left open whatever the scan says.
* A function the text calls dirties what that function may change:
  ``set_config`` the settings (not with a literal ``true`` as its third
  argument: that is transaction-local), the session-level advisory lock
  functions the locks, ``nextval``/``setval`` the sequence state. A
  built-in known to change no session state (:data:`PURE`, about 250
  names: aggregates, string, number, date, JSON and array functions,
  ``current_setting``, ``pg_notify``...) dirties nothing. Any other
  function, or one qualified with a schema other than ``pg_catalog``, may
  do anything: every part.
* ``SET``/``RESET``/``set_config``: settings (which include the role and
  session authorization). ``LISTEN``/``UNLISTEN``: notifications.
  ``DECLARE``: cursors. ``PREPARE``/``DEALLOCATE``: prepared statements.
  ``CREATE`` of something temporary (``TEMP``, ``TEMPORARY``, ``pg_temp``;
  also ``SELECT ... INTO TEMP``): temporary objects. ``INSERT``, ``MERGE``,
  ``COPY`` and ``DEFAULT``: sequence state (a serial column's default calls
  ``nextval``).
* Everything else (``DO``, ``CALL``, ``EXECUTE``, ``DISCARD``, ``LOAD``,
  other DDL, anything unknown), and text the lexer does not accept (an
  unterminated literal or comment, a backslash in a plain string literal,
  whose meaning depends on ``standard_conforming_strings``): every part.

It is not a guard against code the *server* runs on its own behalf: a
trigger, a column default other than ``nextval``, a view, an operator or a
cast implemented by a function that changes session state is not seen in
the text that caused it. Such schemas should run the whole reset on every
return (see ``docs/reset.md``).
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "ALL",
    "CURSORS",
    "LISTEN",
    "LOCKS",
    "PREPARED",
    "PURE",
    "SEQUENCES",
    "SETTINGS",
    "TEMP",
    "scan",
]

SETTINGS: Final = 1
"""GUCs (``SET``, ``set_config``), the role and the session authorization."""
CURSORS: Final = 2
"""Cursors that outlive their transaction (``DECLARE ... WITH HOLD``)."""
LISTEN: Final = 4
"""``LISTEN`` registrations."""
LOCKS: Final = 8
"""Session-level advisory locks."""
TEMP: Final = 16
"""Temporary tables, views, functions..."""
SEQUENCES: Final = 32
"""What ``currval``/``lastval`` return (``DISCARD SEQUENCES``)."""
PREPARED: Final = 64
"""SQL-level prepared statements (``PREPARE``)."""
ALL: Final = SETTINGS | CURSORS | LISTEN | LOCKS | TEMP | SEQUENCES | PREPARED

# ----------------------------------------------------------------------------- functions


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


PURE: Final = _words(
    """
    count sum avg min max array_agg string_agg json_agg jsonb_agg json_object_agg
    jsonb_object_agg bool_and bool_or every bit_and bit_or bit_xor stddev stddev_pop
    stddev_samp variance var_pop var_samp corr covar_pop covar_samp regr_slope
    percentile_cont percentile_disc mode rank dense_rank row_number ntile lag lead
    first_value last_value nth_value cume_dist percent_rank any_value range_agg
    coalesce nullif greatest least lower upper length char_length character_length
    octet_length bit_length substr substring trim btrim ltrim rtrim replace split_part
    concat concat_ws format left right lpad rpad repeat reverse strpos position initcap
    md5 sha224 sha256 sha384 sha512 encode decode regexp_replace regexp_match
    regexp_matches regexp_split_to_array regexp_split_to_table regexp_like regexp_count
    regexp_instr regexp_substr starts_with translate ascii chr quote_ident quote_literal
    quote_nullable to_hex to_oct to_bin unistr normalize casefold overlay
    abs cbrt ceil ceiling floor round trunc mod power pow sqrt exp ln log log10 sign div
    degrees radians pi random random_normal gen_random_uuid uuidv4 uuidv7 width_bucket
    gcd lcm factorial scale min_scale trim_scale sin cos tan asin acos atan atan2
    now clock_timestamp statement_timestamp transaction_timestamp timeofday date_trunc
    date_part extract age make_date make_time make_timestamp make_timestamptz
    make_interval to_char to_date to_timestamp to_number justify_days justify_hours
    justify_interval isfinite date_bin date_add date_subtract timezone
    array_length array_lower array_upper array_position array_positions array_remove
    array_replace array_append array_prepend array_cat array_to_string string_to_array
    unnest cardinality array_dims array_ndims array_fill array_reverse array_sample
    array_shuffle array_sort trim_array generate_series generate_subscripts
    json_build_object jsonb_build_object json_build_array jsonb_build_array to_json to_jsonb
    row_to_json array_to_json json_array_length jsonb_array_length json_each jsonb_each
    json_each_text jsonb_each_text json_extract_path jsonb_extract_path
    json_extract_path_text jsonb_extract_path_text json_object_keys jsonb_object_keys
    jsonb_set jsonb_set_lax jsonb_insert jsonb_strip_nulls json_strip_nulls jsonb_pretty
    json_typeof jsonb_typeof jsonb_path_query jsonb_path_exists jsonb_path_match
    jsonb_path_query_array jsonb_path_query_first json_populate_record
    jsonb_populate_record json_populate_recordset jsonb_populate_recordset json_to_record
    jsonb_to_record json_to_recordset jsonb_to_recordset json_array_elements
    jsonb_array_elements json_array_elements_text jsonb_array_elements_text json_object
    jsonb_object json_array json_scalar json_serialize json_exists json_value json_query
    json_table json
    to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank
    ts_rank_cd ts_headline setweight strip numnode querytree ts_rewrite tsvector_to_array
    array_to_tsvector
    int4range int8range numrange tsrange tstzrange daterange int4multirange
    int8multirange nummultirange tsmultirange tstzmultirange datemultirange lower_inc
    upper_inc lower_inf upper_inf isempty range_merge multirange
    current_setting current_database current_schema current_schemas current_user
    session_user current_role current_catalog version pg_backend_pid inet_client_addr
    inet_client_port inet_server_addr inet_server_port pg_typeof format_type
    pg_current_xact_id pg_current_xact_id_if_assigned txid_current
    txid_current_if_assigned pg_xact_status pg_postmaster_start_time pg_conf_load_time
    pg_is_in_recovery pg_listening_channels pg_notify pg_notification_queue_usage
    pg_sleep pg_sleep_for pg_sleep_until pg_table_size pg_relation_size
    pg_total_relation_size pg_indexes_size pg_database_size pg_size_pretty pg_size_bytes
    pg_column_size to_regclass to_regtype to_regproc to_regprocedure to_regnamespace
    to_regrole has_table_privilege has_schema_privilege has_database_privilege
    has_column_privilege has_function_privilege pg_has_role pg_get_expr
    pg_get_indexdef pg_get_viewdef pg_get_constraintdef pg_get_functiondef
    pg_get_function_arguments pg_get_function_result pg_get_serial_sequence
    pg_get_userbyid obj_description col_description shobj_description
    pg_trigger_depth pg_blocking_pids pg_safe_snapshot_blocking_pids
    pg_advisory_xact_lock pg_advisory_xact_lock_shared pg_try_advisory_xact_lock
    pg_try_advisory_xact_lock_shared
    host hostmask masklen netmask network broadcast abbrev family inet_merge
    inet_same_family set_masklen
    point line lseg box path polygon circle area center diameter radius height width
    num_nonnulls num_nulls current_timestamp current_time localtimestamp localtime
    current_date
    """
)
"""Built-in functions that change no session state: calling one dirties nothing.

``pg_advisory_xact_lock`` and friends are here: their locks end with the
transaction. ``random`` is too: the seed ``setseed`` sets is not cleared by
any reset (nor by ``DISCARD ALL``).
"""

_SETTING_FUNCTIONS: Final = {"set_config": SETTINGS}
_LOCK_FUNCTIONS: Final = dict.fromkeys(
    (
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
    ),
    LOCKS,
)
_SEQUENCE_FUNCTIONS: Final = dict.fromkeys(("nextval", "setval", "currval", "lastval"), SEQUENCES)
_KNOWN: Final[dict[str, int]] = {
    **dict.fromkeys(PURE, 0),
    **_SETTING_FUNCTIONS,
    **_LOCK_FUNCTIONS,
    **_SEQUENCE_FUNCTIONS,
}

_NOT_CALLS: Final = _words(
    """
    all and any array as asc between by case cast check collate conflict constraint cube
    default desc distinct do else end except exists filter for from group grouping having
    ilike in intersect is join lateral left like limit not offset on only or order over
    overlaps primary references repeatable returning right rollup row select set sets
    similar some table tablesample then to union unique update using values when where
    window with zone bernoulli system explain analyze copy
    numeric decimal dec varchar char character varying bpchar timestamp timestamptz time
    timetz interval bit varbit float nchar national precision second
    """
)
"""Keywords (and type names taking a modifier) that may stand before ``(`` without a call."""

_TABLE_BEFORE: Final = frozenset({"into", "copy", "as", "table", "with", "recursive", ")"})
"""A name just after one of these, then ``(``: a table, alias or CTE with columns, not a call."""

# ----------------------------------------------------------------------------- statements

_QUIET: Final = _words(
    """
    begin start commit end rollback abort savepoint release notify lock fetch move close
    show
    """
)
"""Statements that leave no session state (their function calls are still scanned)."""

_QUERIES: Final = _words("select values table with insert update delete merge explain")

_TEMP_WORDS: Final = frozenset({"temp", "temporary", "pg_temp"})

# ----------------------------------------------------------------------------- lexer

_SPACE = re.compile(r"\s+")
_IDENT = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_NUMBER = re.compile(r"[0-9.][0-9A-Za-z_.]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_PARAM = re.compile(r"\$[0-9]+")
_OPERATOR = re.compile(r"[+\-*/<>=~!@#%^&|`?]+")
_PUNCT = frozenset("(),;.[]")

_QUOTED = "\0"
"""Prefix marking a quoted identifier's token (its name as written)."""
_OTHER = "\1"
"""A literal, number, parameter or operator: nothing to look at."""


class _Unreadable(Exception):
    """Text the lexer does not accept: treat it as dirtying every part."""


def _skip_block_comment(sql: str, i: int) -> int:
    depth = 1
    i += 2
    n = len(sql)
    while depth:
        if i >= n:
            raise _Unreadable
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
        else:
            i += 1
    return i


def _skip_string(sql: str, i: int, *, backslash: bool) -> int:
    """Past the literal whose opening quote is at ``i``; ``backslash``: E'' escapes."""
    n = len(sql)
    i += 1
    while True:
        if i >= n:
            raise _Unreadable
        c = sql[i]
        if c == "\\":
            if not backslash:  # its meaning depends on standard_conforming_strings
                raise _Unreadable
            i += 2
        elif c == "'":
            if i + 1 < n and sql[i + 1] == "'":
                i += 2
            else:
                return i + 1
        else:
            i += 1


def _skip_quoted(sql: str, i: int) -> tuple[int, str]:
    """Past the quoted identifier at ``i``; its name."""
    n = len(sql)
    j = i + 1
    parts = []
    while True:
        end = sql.find('"', j)
        if end < 0:
            raise _Unreadable
        parts.append(sql[j:end])
        if end + 1 < n and sql[end + 1] == '"':
            parts.append('"')
            j = end + 2
        else:
            return end + 1, "".join(parts)


def _tokens(sql: str) -> list[str]:
    """Identifiers (lower-cased), quoted identifiers, punctuation; literals as one marker."""
    out: list[str] = []
    i = 0
    n = len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            m = _SPACE.match(sql, i)
            assert m is not None
            i = m.end()
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif c == "'":
            i = _skip_string(sql, i, backslash=False)
            out.append(_OTHER)
        elif c == '"':
            i, name = _skip_quoted(sql, i)
            out.append(_QUOTED + name)
        elif c == "$":
            m = _PARAM.match(sql, i)
            if m is not None:
                i = m.end()
                out.append(_OTHER)
                continue
            m = _DOLLAR_TAG.match(sql, i)
            if m is None:
                raise _Unreadable
            end = sql.find(m.group(), m.end())
            if end < 0:
                raise _Unreadable
            i = end + len(m.group())
            out.append(_OTHER)
        elif c in _PUNCT:
            if c == "." and i + 1 < n and sql[i + 1].isdigit():
                m = _NUMBER.match(sql, i)
                assert m is not None
                i = m.end()
                out.append(_OTHER)
            else:
                out.append(c)
                i += 1
        elif c.isdigit():
            m = _NUMBER.match(sql, i)
            assert m is not None
            i = m.end()
            out.append(_OTHER)
        elif (m := _IDENT.match(sql, i)) is not None:
            word = m.group()
            i = m.end()
            lower = word.lower()
            if i < n and sql[i] == "'" and lower in ("e", "b", "x", "n"):
                i = _skip_string(sql, i, backslash=lower == "e")
                out.append(_OTHER)
            elif lower == "u" and sql.startswith("&'", i):
                i = _skip_string(sql, i + 1, backslash=True)
                out.append(_OTHER)
            elif lower == "u" and sql.startswith('&"', i):
                i, _ = _skip_quoted(sql, i + 1)
                out.append(_QUOTED + "\\")  # escapes in the name: no known function
            else:
                out.append(lower)
        elif c == ":":
            i += 2 if sql.startswith("::", i) else 1
            out.append(_OTHER)
        elif (m := _OPERATOR.match(sql, i)) is not None:
            # An operator never contains "--" or "/*": those start comments.
            op = m.group()
            cut = min((k for k in (op.find("--"), op.find("/*")) if k > 0), default=len(op))
            i += cut
            out.append(_OTHER)
        else:
            i += 1
            out.append(_OTHER)
    return out


# ----------------------------------------------------------------------------- scan


def _name_before(tokens: list[str], k: int) -> tuple[str, str | None, int]:
    """The (possibly qualified) name ending at ``tokens[k]``: name, schema, index of its start."""
    name = tokens[k]
    schema: str | None = None
    start = k
    if k >= 2 and tokens[k - 1] == ".":
        schema = tokens[k - 2]
        start = k - 2
        while start >= 2 and tokens[start - 1] == ".":  # catalog.schema.name
            start -= 2
    return name, schema, start


def _third_argument_is_true(tokens: list[str], open_paren: int) -> bool:
    """Whether the call opened at ``open_paren`` has exactly ``true`` as its third argument."""
    depth = 0
    commas = 0
    arg: list[str] = []
    for tok in tokens[open_paren + 1 :]:
        if tok in ("(", "["):
            depth += 1
        elif tok in (")", "]"):
            if depth == 0:
                return commas == 2 and arg == ["true"]
            depth -= 1
        elif tok == "," and depth == 0:
            commas += 1
            if commas > 2:
                return False
            arg = []
            continue
        if commas == 2:
            arg.append(tok)
    return False


def _calls(tokens: list[str]) -> int:
    """What the functions called in one statement's tokens may dirty."""
    found = 0
    for k in range(len(tokens) - 1):
        if tokens[k + 1] != "(":
            continue
        tok = tokens[k]
        if tok in _PUNCT or tok == _OTHER:
            continue
        quoted = tok.startswith(_QUOTED)
        if not quoted and tok in _NOT_CALLS:
            continue
        name, schema, start = _name_before(tokens, k)
        if start > 0 and tokens[start - 1] in _TABLE_BEFORE:
            continue  # INSERT INTO t (...), AS alias (...), WITH cte (...)
        if quoted:
            name = name[len(_QUOTED) :]
        if schema is not None and schema not in ("pg_catalog", _QUOTED + "pg_catalog"):
            return ALL
        effect = _KNOWN.get(name)
        if effect is None:
            return ALL
        if name == "set_config" and _third_argument_is_true(tokens, k + 1):
            effect = 0
        found |= effect
    return found


def _statement(tokens: list[str]) -> int:
    """What one statement (its tokens, no ``;``) may dirty."""
    lead = 0
    while lead < len(tokens) and tokens[lead] == "(":  # (SELECT ...) UNION (SELECT ...)
        lead += 1
    if lead == len(tokens):
        return 0 if not tokens else ALL
    first = tokens[lead]
    second = tokens[lead + 1] if len(tokens) > lead + 1 else ""
    temp = TEMP if _TEMP_WORDS.intersection(tokens) else 0
    if first in _QUERIES:
        if first == "explain" and "execute" in tokens:
            return ALL  # EXPLAIN ANALYZE EXECUTE: a prepared statement, text unseen
        found = _calls(tokens) | temp
        if "insert" in tokens or "merge" in tokens or "default" in tokens:
            found |= SEQUENCES
        return found
    if first in _QUIET:
        return _calls(tokens)
    if first == "set":
        if second in ("local", "transaction", "constraints"):
            return 0
        return SETTINGS
    if first == "reset":
        return SETTINGS
    if first in ("listen", "unlisten"):
        return LISTEN
    if first == "declare":
        return CURSORS | _calls(tokens)
    if first == "prepare":
        return 0 if second == "transaction" else PREPARED
    if first == "deallocate":
        return PREPARED
    if first == "copy":
        return SEQUENCES | _calls(tokens) | temp
    if first == "create" and temp:
        return TEMP | SEQUENCES | _calls(tokens)
    return ALL


def scan(sql: str) -> int:
    """The parts of a session that running ``sql`` may have dirtied (see the module docstring).

    A bit mask of :data:`SETTINGS`, :data:`CURSORS`, :data:`LISTEN`,
    :data:`LOCKS`, :data:`TEMP`, :data:`SEQUENCES` and :data:`PREPARED`;
    :data:`ALL` for anything it cannot vouch for.
    """
    try:
        tokens = _tokens(sql)
    except _Unreadable:
        return ALL
    found = 0
    start = 0
    for k, tok in enumerate(tokens):
        if tok == ";":
            found |= _statement(tokens[start:k])
            start = k + 1
    return found | _statement(tokens[start:])
