"""The fleet's tables and its server-side functions, as DDL text.

Besides the heartbeat function below there is the small members' claim
function (:meth:`Schema._claim_function`): a join with one connection, or a
release of the last one, without the division (cheap on a new backend).

A heartbeat is one call of ``<table>_beat(...)``: one statement, one round
trip, in its own (autocommit) transaction. The function serialises the
members of one pool name on that pool's row of ``<table>_config`` (a row
lock held for the function's server time only, never across a client round
trip), and does, in order:

1. *busy?* it waits at most ``p_lock_ms`` for the row; when the row stays
   busy it only extends the caller's lease (no claim changes: safe without
   the lock) and answers ``'busy'``, so an overloaded coordinator sheds load
   instead of letting live members' leases expire;
2. *reap*: every other member whose lease has expired (it stopped
   heartbeating, left, or was killed) keeps a claim equal to the backends
   ``pg_stat_activity`` still shows under its tag (its ``application_name``),
   and its row goes once the server shows none;
3. *share*: max-min fair water-filling of ``total - reserve`` over the live
   members' demand (``fleet_shares`` of ``_limits.py`` is the same
   rule in Python, and the tests hold the two to each other); the
   leftover lets members keep connections they hold anyway, and what is
   still left is headroom for the members asking;
4. *grant*: ``min(share, total - others' claims)`` (a member asking for its first
   connection: at least one when one is free), so the sum of claims
   never grows above the total; the caller's claim becomes
   ``max(holding, grant)``;
5. *leave*: a caller with no demand granted nothing marks its lease expired
   at once, keeping a claim for what it still holds; step 2 of a later
   heartbeat clears it when its backends are gone. A closing member (its
   pool drained) deletes its lease outright.

The claims' sum is kept in ``<table>_config.claimed``, so nothing has to add
up every row under the lock.
"""

from __future__ import annotations

import functools
import hashlib

from .._sql import quote_ident

__all__ = ["Schema", "beat_function", "claim_function", "fill_function"]


def beat_function(table: str) -> str:
    """The (unquoted) name of lease table ``table``'s heartbeat function.

    It ends in a digest of the function's text, so a release that changes
    the function installs a new one beside the old instead of finding the
    old one in place (``CREATE OR REPLACE`` would not run: members only
    create what is missing).
    """
    return f"{table}_beat_{_digest()}"


def fill_function(table: str) -> str:
    """The (unquoted) name of the water-filling helper the heartbeat function calls."""
    return f"{table}_fill_{_digest()}"


def claim_function(table: str) -> str:
    """The (unquoted) name of the join's fast claim function (see ``Schema._claim_function``)."""
    return f"{table}_claim_{_digest()}"


@functools.cache
def _digest() -> str:
    schema = Schema('"t"', '"t_config"', beat='"t_beat"', fill='"t_fill"', claim='"t_claim"')
    text = schema._fill_function() + schema._function() + schema._claim_function()
    return hashlib.blake2s(text.encode(), digest_size=4).hexdigest()


class Schema:
    """The DDL of one lease table, its config table and its heartbeat function.

    It takes the names already quoted (``PostgresMembership`` quotes them, where
    the SQL-safety check follows them); :meth:`of` quotes them itself.
    """

    def __init__(self, table: str, config: str, *, beat: str, fill: str, claim: str) -> None:
        self.table = table
        self.config = config
        self.beat = beat
        self.fill = fill
        self.claim = claim

    @classmethod
    def of(cls, table: str, schema: str | None = None) -> Schema:
        """The schema of lease table ``table`` (in ``schema``), every name quoted."""
        prefix = "" if schema is None else quote_ident(schema) + "."
        return cls(
            prefix + quote_ident(table),
            prefix + quote_ident(table + "_config"),
            beat=prefix + quote_ident(beat_function(table)),
            fill=prefix + quote_ident(fill_function(table)),
            claim=prefix + quote_ident(claim_function(table)),
        )

    def ddl(self) -> str:
        """The whole DDL as one script, for an administrator (idempotent: safe to run again)."""
        return "".join(statement + ";\n" for statement in self.statements())

    def statements(self) -> list[str]:
        """Every DDL statement, in order (each idempotent)."""
        t, c = self.table, self.config
        return [
            f"CREATE TABLE IF NOT EXISTS {t} ("
            " pool_name text NOT NULL,"
            " instance_id text NOT NULL,"
            " heartbeat_at timestamptz NOT NULL,"
            " expires_at timestamptz NOT NULL,"
            " demand integer NOT NULL DEFAULT 0,"
            " holding integer NOT NULL DEFAULT 0,"
            " share integer NOT NULL DEFAULT 0,"
            " granted integer NOT NULL DEFAULT 0,"
            " PRIMARY KEY (pool_name, instance_id))",
            f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS claim integer NOT NULL DEFAULT 0",
            f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS tag text",
            f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS asking_since timestamptz",
            f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS closing_pid integer",
            f"CREATE TABLE IF NOT EXISTS {c} ("
            " pool_name text PRIMARY KEY,"
            " total_max_connections integer,"
            " updated_at timestamptz NOT NULL DEFAULT now())",
            f"ALTER TABLE {c} ADD COLUMN IF NOT EXISTS claimed integer NOT NULL DEFAULT 0",
            f"ALTER TABLE {c} ADD COLUMN IF NOT EXISTS total integer",
            self._fill_function(),
            self._function(),
            self._claim_function(),
        ]

    def _claim_function(self) -> str:
        t, c, f = self.table, self.config, self.claim
        planned = hashlib.blake2s(f.encode(), digest_size=8).hexdigest()  # see _function
        if "$fn$" in t + c + f:
            raise ValueError("the lease table's name must not contain '$fn$'")
        return f"""CREATE OR REPLACE FUNCTION {f}(
    p_pool text, p_instance text, p_tag text, p_demand integer, p_holding integer,
    p_last boolean, p_total integer, p_min_total integer, p_ttl float8, p_lock_ms integer)
RETURNS TABLE (o_status text, o_claimed integer, o_total integer, o_live_total integer,
    o_asking integer, o_members integer)
LANGUAGE plpgsql VOLATILE
AS $fn$
-- The small members' fast path: joining with one connection and leaving on the last
-- one need no division, and this function is small, so cheap to plan on the new
-- backend a join runs on (the heartbeat function's first call plans its every
-- statement, about 5 ms of server time under the pool's row lock), and a release
-- runs the same statements as the join that opened its connection.
-- * join: a member that asks and claims nothing takes one unit when the claims and
--   the closing backends leave one free (_limits.fleet_first_claim), else records
--   that it asks ('granted' / 'asking');
-- * release: a member with no demand whose one connection runs this gives its claim
--   back at once if others ask or the pool has more members than units; that backend
--   counts as closing until it exits ('left'), as the heartbeat function's leave on a
--   last connection. Otherwise it keeps it, its lease renewed ('kept').
-- 'skip': neither case, or a claim already, no config row yet, a database budget, or
-- refused while departed members' claims wait to be reaped: the heartbeat function's
-- work. 'busy': the pool's row stayed locked for p_lock_ms.
DECLARE
    v_live integer;
    v_claimed integer;
    v_total integer;
    v_mine integer;
    v_closing integer;
    v_new integer;
    v_status text;
    v_asking integer;
    v_members integer;
    v_departed boolean;
    v_skip boolean;
    v_pass integer;
BEGIN
    IF NOT ((p_demand > 0 AND p_holding = 0) OR (p_demand <= 0 AND p_holding = 1 AND p_last))
       OR EXISTS (SELECT 1 FROM {c} WHERE pool_name = ''
                     AND coalesce(total_max_connections, total) IS NOT NULL) THEN
        RETURN QUERY SELECT 'skip'::text, NULL::integer, NULL::integer, NULL::integer,
            NULL::integer, NULL::integer;
        RETURN;
    END IF;
    -- A join always runs on a new backend, whose first call plans every statement
    -- here: pass 0 does that without the lock, reading and writing nothing it keeps;
    -- pass 1 takes the lock and decides.
    FOR v_pass IN CASE WHEN current_setting('elasticpool.planned_claim', true) = '{planned}'
                       THEN 1 ELSE 0 END..1 LOOP
    IF v_pass = 0 THEN
        SELECT total_max_connections, claimed INTO v_live, v_claimed
          FROM {c} WHERE pool_name = p_pool;
    ELSE
        PERFORM set_config('lock_timeout', p_lock_ms::text || 'ms', true);
        BEGIN
            SELECT total_max_connections, claimed INTO v_live, v_claimed
              FROM {c} WHERE pool_name = p_pool FOR UPDATE;
        EXCEPTION WHEN lock_not_available THEN
            RETURN QUERY SELECT 'busy'::text, NULL::integer, NULL::integer, NULL::integer,
                NULL::integer, NULL::integer;
            RETURN;
        END;
        PERFORM set_config('lock_timeout', '0', true);
    END IF;
    -- its own row after the lock: a heartbeat may have reaped it (an expired row of a
    -- member whose asking connection, tagged, the server shows)
    SELECT claim INTO v_mine FROM {t} WHERE pool_name = p_pool AND instance_id = p_instance;
    v_mine := coalesce(v_mine, 0);
    v_total := greatest(coalesce(v_live, p_total), p_min_total);
    v_skip := v_claimed IS NULL OR (p_demand > 0 AND v_mine <> 0)
              OR (p_demand <= 0 AND v_mine = 0);
    -- others asking: for a first connection, or for more than they claim
    SELECT count(*) FILTER (WHERE asking_since IS NOT NULL OR demand > claim)::integer,
           count(*)::integer
      INTO v_asking, v_members FROM {t}
     WHERE pool_name = p_pool AND instance_id <> p_instance AND expires_at >= now();
    IF p_demand > 0 THEN
        SELECT count(*)::integer INTO v_closing FROM {t} l
         WHERE l.pool_name = p_pool AND l.closing_pid IS NOT NULL
           AND l.closing_pid <> pg_backend_pid()
           AND NOT pg_try_advisory_xact_lock_shared(hashtext('elasticpool closing'),
                                                    l.closing_pid);
        v_new := CASE WHEN coalesce(v_claimed, 0) + 1 + v_closing <= v_total
                      THEN 1 ELSE 0 END;
        -- refused while departed members' claims wait to be reaped: the heartbeat
        -- function's work
        v_departed := EXISTS (
            SELECT 1 FROM {t} WHERE pool_name = p_pool AND instance_id <> p_instance
               AND expires_at < now() AND claim > 0 AND closing_pid IS NULL);
        v_skip := v_skip OR (v_new = 0 AND v_departed);
        v_status := CASE WHEN v_new = 1 THEN 'granted' ELSE 'asking' END;
    ELSE
        -- released when others ask, or when the pool has more members than units (the
        -- next to ask will find it free, rather than be refused and connect again):
        -- otherwise nobody needs it, it stays
        v_new := CASE WHEN v_asking > 0 OR v_members + 1 > v_total THEN 0 ELSE v_mine END;
        v_status := CASE WHEN v_new = 0 THEN 'left' ELSE 'kept' END;
    END IF;
    IF v_pass = 1 AND v_skip THEN
        RETURN QUERY SELECT 'skip'::text, NULL::integer, NULL::integer, NULL::integer,
            NULL::integer, NULL::integer;
        RETURN;
    END IF;
    IF v_pass = 1 AND v_status = 'left' THEN
        -- closing: this backend holds a session lock that goes with it, so the others
        -- can tell it is gone without reading the server's status of every backend
        PERFORM pg_advisory_lock(hashtext('elasticpool closing'), pg_backend_pid());
    END IF;
    v_claimed := coalesce(v_claimed, 0) - v_mine + v_new;
    -- (pass 0 runs these too, to plan them: its condition matches nothing)
    UPDATE {c} SET claimed = v_claimed WHERE pool_name = p_pool AND v_pass = 1;
    INSERT INTO {t} AS l (pool_name, instance_id, heartbeat_at, expires_at, demand, holding,
                          share, granted, claim, tag, asking_since, closing_pid)
         SELECT p_pool, p_instance, now(),
                CASE WHEN v_status = 'left' THEN now() - interval '1 microsecond'
                     ELSE now() + make_interval(secs => p_ttl) END,
                greatest(p_demand, 0), p_holding, v_new, v_new, v_new, p_tag,
                CASE WHEN v_status = 'asking' THEN now() END,
                CASE WHEN v_status = 'left' THEN pg_backend_pid() END
          WHERE v_pass = 1
    ON CONFLICT (pool_name, instance_id) DO UPDATE SET
        heartbeat_at = EXCLUDED.heartbeat_at, expires_at = EXCLUDED.expires_at,
        demand = EXCLUDED.demand, holding = EXCLUDED.holding, share = EXCLUDED.share,
        granted = EXCLUDED.granted, claim = EXCLUDED.claim, tag = EXCLUDED.tag,
        asking_since = CASE WHEN EXCLUDED.asking_since IS NULL THEN NULL
                            ELSE coalesce(l.asking_since, EXCLUDED.asking_since) END,
        closing_pid = coalesce(EXCLUDED.closing_pid, l.closing_pid);
    END LOOP;
    PERFORM set_config('elasticpool.planned_claim', '{planned}', false);
    RETURN QUERY SELECT v_status, v_claimed, v_total, v_live, v_asking, v_members + 1;
END
$fn$"""

    def _fill_function(self) -> str:
        fill = self.fill
        if "$fn$" in fill:
            raise ValueError("the lease table's name must not contain '$fn$'")
        return f"""CREATE OR REPLACE FUNCTION {fill}(
    p_units integer, p_wants integer[], p_order integer[])
RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE
AS $fn$
-- Max-min fair split of p_units over p_wants (water-filling): an equal level over
-- the unmet, raised until the units run out or every want is met; with fewer
-- units than unmet wants, one each in p_order. Python: _water_fill in _limits.py.
DECLARE
    v_n integer := coalesce(cardinality(p_wants), 0);
    v_alloc integer[];
    v_left integer := greatest(p_units, 0);
    v_unmet integer;
    v_level integer;
    v_extra integer;
    v_i integer;
BEGIN
    IF v_n = 0 THEN
        RETURN '{{}}'::integer[];
    END IF;
    v_alloc := array_fill(0, ARRAY[v_n]);
    LOOP
        v_unmet := 0;
        FOR v_i IN 1..v_n LOOP
            IF v_alloc[v_i] < p_wants[v_i] THEN v_unmet := v_unmet + 1; END IF;
        END LOOP;
        EXIT WHEN v_unmet = 0 OR v_left = 0;
        v_level := v_left / v_unmet;
        IF v_level = 0 THEN
            FOREACH v_i IN ARRAY p_order LOOP
                EXIT WHEN v_left = 0;
                IF v_alloc[v_i] < p_wants[v_i] THEN
                    v_alloc[v_i] := v_alloc[v_i] + 1;
                    v_left := v_left - 1;
                END IF;
            END LOOP;
            EXIT;
        END IF;
        FOR v_i IN 1..v_n LOOP
            IF v_alloc[v_i] < p_wants[v_i] THEN
                v_extra := least(v_level, p_wants[v_i] - v_alloc[v_i]);
                v_alloc[v_i] := v_alloc[v_i] + v_extra;
                v_left := v_left - v_extra;
            END IF;
        END LOOP;
    END LOOP;
    RETURN v_alloc;
END
$fn$"""

    def _function(self) -> str:
        t, c, f, fill = self.table, self.config, self.beat, self.fill
        # which function a backend has planned (a session setting): a digest of its name
        planned = hashlib.blake2s(f.encode(), digest_size=8).hexdigest()
        # The body is dollar-quoted: a quoted identifier may hold anything, so refuse the tag.
        if "$fn$" in t + c + f:
            raise ValueError("the lease table's name must not contain '$fn$'")
        return f"""CREATE OR REPLACE FUNCTION {f}(
    p_pool text, p_instance text, p_tag text, p_demand integer, p_holding integer,
    p_total integer, p_fixed integer, p_min_total integer, p_reserve integer,
    p_ttl float8, p_lock_ms integer, p_leave boolean, p_observe text,
    p_db_total integer, p_db_percent float8, p_last boolean)
RETURNS TABLE (o_status text, o_share integer, o_granted integer, o_total integer,
    o_live_total integer, o_claimed integer, o_view text, o_observed integer,
    o_departed integer, o_db_total integer, o_db_claimed integer)
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    v_live integer;
    v_claimed integer;
    v_total integer;
    v_eff integer;
    v_old integer := 0;
    v_others integer;
    v_share integer := 0;
    v_grant integer := 0;
    v_claim integer;
    v_ids text[];
    v_demands integer[];
    v_holdings integer[];
    v_granteds integer[];
    v_ages float8[];
    v_waited float8[];
    v_status text := 'ok';
    v_left integer;
    v_unmet integer;
    v_level integer;
    v_alloc integer[];
    v_n integer;
    v_i integer;
    v_me integer;
    v_order integer[];
    v_spare integer;
    v_extra integer;
    v_db_live integer;
    v_closing integer := 0;
    v_db_closing integer := 0;
    v_db_set integer;
    v_db_mine integer;
    v_db_total integer;
    v_db_others integer;
    v_pools text[];
    v_wants integer[];
    v_pclaimed integer[];
    v_palloc integer[];
    v_pme integer;
    v_pass integer;
    v_view text;
    v_observed integer;
    v_departed integer;
    r record;
BEGIN
    -- 0. the database budget over every pool name, when one is set (live by the
    --    CLI, or in members' settings: the last member to say so is taken)
    IF p_db_total IS NOT NULL THEN
        v_db_mine := p_db_total;
    ELSIF p_db_percent IS NOT NULL THEN
        v_db_mine := greatest(1, floor(p_db_percent / 100 * (
            current_setting('max_connections')::integer
            - current_setting('superuser_reserved_connections')::integer
            - coalesce(current_setting('reserved_connections', true), '0')::integer)));
    END IF;
    SELECT total_max_connections, total INTO v_db_live, v_db_set FROM {c} WHERE pool_name = '';
    v_db_total := coalesce(v_db_live, v_db_mine, v_db_set);

    -- A backend's first call plans every statement and expression below (about 5 ms
    -- of server time); done under the pool's row lock, that made a convoy of members
    -- waiting for it. So a backend's first call runs the reads once without the lock
    -- and keeps nothing of them (pass 0), and only then, every plan made, takes the
    -- lock and decides (pass 1).
    FOR v_pass IN CASE WHEN current_setting('elasticpool.planned', true) = '{planned}'
                       THEN 1 ELSE 0 END..1 LOOP
    IF v_pass = 0 THEN
        SELECT total_max_connections, coalesce(claimed, 0) INTO v_live, v_claimed
          FROM {c} WHERE pool_name = p_pool;
        v_claimed := coalesce(v_claimed, 0);
    ELSE
        PERFORM set_config('lock_timeout', p_lock_ms::text || 'ms', true);
        BEGIN
            -- 1. the lock: the database row first (when there is a budget), then the pool's
            IF v_db_total IS NOT NULL THEN
                INSERT INTO {c} (pool_name) VALUES ('') ON CONFLICT (pool_name) DO NOTHING;
                SELECT total_max_connections INTO v_db_live FROM {c}
                 WHERE pool_name = '' FOR UPDATE;
                IF v_db_mine IS NOT NULL AND v_db_set IS DISTINCT FROM v_db_mine THEN
                    UPDATE {c} SET total = v_db_mine WHERE pool_name = '';
                    v_db_set := v_db_mine;
                END IF;
                v_db_total := coalesce(v_db_live, v_db_mine, v_db_set);
            END IF;
            SELECT total_max_connections, claimed INTO v_live, v_claimed
              FROM {c} WHERE pool_name = p_pool FOR UPDATE;
            IF NOT FOUND THEN
                INSERT INTO {c} AS k (pool_name) VALUES (p_pool)
                    ON CONFLICT (pool_name) DO NOTHING;
                SELECT total_max_connections, claimed INTO v_live, v_claimed
                  FROM {c} WHERE pool_name = p_pool FOR UPDATE;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            UPDATE {t} SET expires_at = now() + make_interval(secs => p_ttl)
             WHERE pool_name = p_pool AND instance_id = p_instance AND expires_at >= now();
            RETURN QUERY SELECT 'busy'::text, NULL::integer, NULL::integer, NULL::integer,
                NULL::integer, NULL::integer, NULL::text, NULL::integer, NULL::integer,
                NULL::integer, NULL::integer;
            RETURN;
        END;
        PERFORM set_config('lock_timeout', '0', true);
    END IF;
    IF v_pass = 1 THEN
        -- 2. reap: departed members keep a claim for the backends the server still shows
        --    (one look at pg_stat_activity, and only when someone has departed); under a
        --    database budget, every pool name's departed members
        --    (a member that left on its last connection gave its claim back at once: its
        --    row names that backend in closing_pid, counted below, not reaped here)
        IF EXISTS (SELECT 1 FROM {t} WHERE (pool_name = p_pool OR v_db_total IS NOT NULL)
                      AND (pool_name, instance_id) <> (p_pool, p_instance)
                      AND expires_at < now() AND closing_pid IS NULL) THEN
            FOR r IN
                SELECT l.pool_name, l.instance_id, l.claim, coalesce(a.n, 0) AS alive
                  FROM {t} l
                  LEFT JOIN (SELECT application_name, count(*)::integer AS n
                               FROM pg_stat_activity GROUP BY 1) a
                         ON l.tag IS NOT NULL AND a.application_name = l.tag
                 WHERE (l.pool_name = p_pool OR v_db_total IS NOT NULL)
                   AND (l.pool_name, l.instance_id) <> (p_pool, p_instance)
                   AND l.expires_at < now() AND l.closing_pid IS NULL
            LOOP
                IF r.alive = 0 THEN
                    DELETE FROM {t} WHERE pool_name = r.pool_name AND instance_id = r.instance_id;
                ELSIF r.alive <> r.claim THEN
                    UPDATE {t} SET claim = r.alive, holding = r.alive, demand = 0, granted = 0
                     WHERE pool_name = r.pool_name AND instance_id = r.instance_id;
                END IF;
                IF r.alive <> r.claim AND r.pool_name = p_pool THEN
                    v_claimed := v_claimed - r.claim + r.alive;
                ELSIF r.alive <> r.claim THEN  -- another name's: its sum, on its row
                    UPDATE {c} SET claimed = claimed - r.claim + r.alive
                     WHERE pool_name = r.pool_name;
                END IF;
            END LOOP;
        END IF;

        -- 2b. closing backends: each counts until the server no longer shows it (its
        --     claim went when its member left on it); forgotten once gone
        --     (a closing backend holds a session advisory lock on ('elasticpool closing',
        --     its pid) until it exits: a shared try-lock that succeeds says it is gone)
        UPDATE {t} l SET closing_pid = NULL
         WHERE (l.pool_name = p_pool OR v_db_total IS NOT NULL) AND l.closing_pid IS NOT NULL
           AND l.closing_pid <> pg_backend_pid()
           AND pg_try_advisory_xact_lock_shared(hashtext('elasticpool closing'),
                                                l.closing_pid);
    END IF;
    SELECT count(*) FILTER (WHERE l.pool_name = p_pool)::integer, count(*)::integer
      INTO v_closing, v_db_closing FROM {t} l
     WHERE (l.pool_name = p_pool OR v_db_total IS NOT NULL) AND l.closing_pid IS NOT NULL
       AND l.closing_pid <> pg_backend_pid();

    SELECT claim INTO v_old FROM {t} WHERE pool_name = p_pool AND instance_id = p_instance;
    v_old := coalesce(v_old, 0);
    v_others := v_claimed - v_old;
    v_total := coalesce(v_live, p_total);
    IF v_total IS NOT NULL THEN
        v_total := greatest(v_total, p_min_total);
    END IF;

    -- 3. shares over the live members (this one with its new demand), ordered by id
    SELECT array_agg(x.id ORDER BY x.id COLLATE "C"), array_agg(x.d ORDER BY x.id COLLATE "C"),
           array_agg(x.h ORDER BY x.id COLLATE "C"), array_agg(x.g ORDER BY x.id COLLATE "C"),
           array_agg(x.age ORDER BY x.id COLLATE "C"), array_agg(x.w ORDER BY x.id COLLATE "C")
      INTO v_ids, v_demands, v_holdings, v_granteds, v_ages, v_waited
      FROM (SELECT instance_id AS id, greatest(demand, 0) AS d, holding AS h, granted AS g,
                   extract(epoch FROM now() - heartbeat_at)::float8 AS age,
                   coalesce(extract(epoch FROM now() - asking_since)::float8, 0) AS w
              FROM {t}
             WHERE pool_name = p_pool AND instance_id <> p_instance AND expires_at >= now()
            UNION ALL
            SELECT p_instance, greatest(p_demand, 0), p_holding, 0, 0::float8,
                   coalesce((SELECT extract(epoch FROM now() - asking_since)::float8 FROM {t}
                              WHERE pool_name = p_pool AND instance_id = p_instance), 0)) x;
    v_n := cardinality(v_ids);
    -- who gets a unit first when there are fewer than askers: those holding least, then
    -- those asking longest without a grant, then by id
    SELECT array_agg(i ORDER BY v_holdings[i], v_waited[i] DESC, v_ids[i] COLLATE "C")
      INTO v_order FROM generate_subscripts(v_ids, 1) AS i;
    v_me := array_position(v_ids, p_instance);
    IF v_total IS NULL THEN
        -- only a per-instance limit: nothing is divided
        v_share := p_fixed;
        v_grant := p_fixed;
        v_alloc := array_fill(p_fixed, ARRAY[v_n]);
    ELSE
        v_eff := v_total;
        IF v_db_total IS NOT NULL THEN
            -- 3a. the database budget over the pool names, by their demand within their
            --     totals; what a name does not use, the others may
            SELECT array_agg(k.pool_name ORDER BY k.pool_name COLLATE "C"),
                   array_agg(least(
                       CASE WHEN k.pool_name = p_pool THEN v_total ELSE coalesce(k.total, 0) END,
                       CASE WHEN k.pool_name = p_pool
                            THEN (SELECT coalesce(sum(d), 0) FROM unnest(v_demands) AS d)
                            ELSE coalesce(s.demand, 0) END)::integer
                       ORDER BY k.pool_name COLLATE "C"),
                   array_agg(CASE WHEN k.pool_name = p_pool THEN v_claimed ELSE k.claimed END
                       ORDER BY k.pool_name COLLATE "C")
              INTO v_pools, v_wants, v_pclaimed
              FROM {c} k
              LEFT JOIN (SELECT pool_name, sum(greatest(demand, 0)) AS demand FROM {t}
                          WHERE expires_at >= now() GROUP BY 1) s USING (pool_name)
             WHERE k.pool_name <> '';
            SELECT array_agg(i ORDER BY v_pclaimed[i], v_pools[i] COLLATE "C") INTO v_order
              FROM generate_subscripts(v_pools, 1) AS i;
            v_palloc := {fill}(v_db_total, v_wants, v_order);
            v_pme := array_position(v_pools, p_pool);
            v_eff := least(v_total, v_palloc[v_pme] + v_db_total
                           - (SELECT sum(a) FROM unnest(v_palloc) AS a)::integer);
            v_db_others := (SELECT sum(c) FROM unnest(v_pclaimed) AS c)::integer - v_old;
            SELECT array_agg(i ORDER BY v_holdings[i], v_waited[i] DESC, v_ids[i] COLLATE "C")
              INTO v_order FROM generate_subscripts(v_ids, 1) AS i;
        END IF;
        v_left := greatest(0, v_eff - CASE WHEN v_n >= 3 THEN p_reserve ELSE 0 END);
        -- water-filling over demand
        v_alloc := {fill}(v_left, v_demands, v_order);
        v_left := v_left - (SELECT sum(a) FROM unnest(v_alloc) AS a)::integer;
        -- leftover: members may keep what they hold anyway, by id
        FOR v_i IN 1..v_n LOOP
            EXIT WHEN v_left = 0;
            v_spare := least(v_left, greatest(0, v_holdings[v_i] - v_alloc[v_i]));
            v_alloc[v_i] := v_alloc[v_i] + v_spare;
            v_left := v_left - v_spare;
        END LOOP;
        -- headroom: evenly over the askers, remainder by id
        v_unmet := 0;
        FOR v_i IN 1..v_n LOOP
            IF v_demands[v_i] > 0 THEN v_unmet := v_unmet + 1; END IF;
        END LOOP;
        IF v_left > 0 AND v_unmet > 0 THEN
            v_level := v_left / v_unmet;
            v_extra := v_left - v_level * v_unmet;
            FOR v_i IN 1..v_n LOOP
                IF v_demands[v_i] > 0 THEN
                    v_alloc[v_i] := v_alloc[v_i] + v_level
                        + CASE WHEN v_extra > 0 THEN 1 ELSE 0 END;
                    v_extra := v_extra - 1;
                END IF;
            END LOOP;
        END IF;
        v_share := v_alloc[v_me];
        -- 4. grant: never more than the others' claims leave of the total (and of the
        --    database budget)
        --    (a member asking for its first connection takes one that is free, even one
        --    the division set aside for a member asking longer but not here to take it)
        v_grant := least(greatest(v_share, CASE WHEN p_holding = 0 AND p_demand > 0
                                                THEN 1 ELSE 0 END),
                         greatest(0, v_total - v_others - v_closing));
        IF v_db_total IS NOT NULL THEN
            v_grant := least(v_grant, greatest(0, v_db_total - v_db_others - v_db_closing));
        END IF;
    END IF;
    -- the view as JSON text ([id, demand, holding, share, granted, age] per member):
    -- plain types only, which every driver reads without looking them up
    v_granteds[v_me] := CASE WHEN p_leave THEN 0 ELSE v_grant END;
    SELECT json_agg(json_build_array(v_ids[i], v_demands[i], v_holdings[i], v_alloc[i],
                                     v_granteds[i], round(v_ages[i]::numeric, 3))
                    ORDER BY i)::text
      INTO v_view FROM generate_subscripts(v_ids, 1) AS i;
    IF p_observe IS NOT NULL THEN
        SELECT count(*)::integer INTO v_observed FROM pg_stat_get_activity(NULL) a
         WHERE strpos(a.application_name, p_observe) > 0;
    END IF;
    SELECT coalesce(sum(claim), 0)::integer INTO v_departed FROM {t}
     WHERE pool_name = p_pool AND instance_id <> p_instance AND expires_at < now();
    END LOOP;
    PERFORM set_config('elasticpool.planned', '{planned}', false);

    v_claim := greatest(p_holding, v_grant);

    IF p_leave THEN
        -- 5. closing: its pool has drained; only the connection running this is left
        DELETE FROM {t} WHERE pool_name = p_pool AND instance_id = p_instance;
        v_grant := 0;
        v_claim := 0;
        v_status := 'left';
    ELSIF p_demand <= 0 AND v_grant = 0 THEN
        -- 5. idle and granted nothing: expired at once, claiming what it still holds
        --    until the server no longer shows its backends; on its last connection
        --    (p_last: it holds one, this one, and closes it now) nothing: that backend
        --    counts as closing until the server no longer shows it (2b)
        v_grant := 0;
        v_claim := CASE WHEN p_last AND p_holding = 1 THEN 0 ELSE greatest(p_holding, 0) END;
        IF p_last AND p_holding = 1 THEN  -- closing: a lock that goes with this backend
            PERFORM pg_advisory_lock(hashtext('elasticpool closing'), pg_backend_pid());
        END IF;
        INSERT INTO {t} AS l (pool_name, instance_id, heartbeat_at, expires_at, demand,
                              holding, share, granted, claim, tag, closing_pid)
             VALUES (p_pool, p_instance, now(), now() - interval '1 microsecond', 0,
                     p_holding, 0, 0, v_claim, p_tag,
                     CASE WHEN p_last AND p_holding = 1 THEN pg_backend_pid() END)
        ON CONFLICT (pool_name, instance_id) DO UPDATE SET
            heartbeat_at = EXCLUDED.heartbeat_at, expires_at = EXCLUDED.expires_at,
            demand = 0, holding = EXCLUDED.holding, share = 0, granted = 0,
            claim = EXCLUDED.claim, tag = EXCLUDED.tag,
            closing_pid = coalesce(EXCLUDED.closing_pid, l.closing_pid);
        v_status := 'left';
    ELSE
        INSERT INTO {t} AS l (pool_name, instance_id, heartbeat_at, expires_at, demand,
                              holding, share, granted, claim, tag, asking_since)
             VALUES (p_pool, p_instance, now(), now() + make_interval(secs => p_ttl),
                     greatest(p_demand, 0), p_holding, v_share, v_grant, v_claim, p_tag,
                     CASE WHEN p_demand > 0 AND v_grant = 0 THEN now() END)
        ON CONFLICT (pool_name, instance_id) DO UPDATE SET
            heartbeat_at = EXCLUDED.heartbeat_at, expires_at = EXCLUDED.expires_at,
            demand = EXCLUDED.demand, holding = EXCLUDED.holding, share = EXCLUDED.share,
            granted = EXCLUDED.granted, claim = EXCLUDED.claim, tag = EXCLUDED.tag,
            -- asking without a grant: since when (kept across heartbeats until served)
            asking_since = CASE WHEN EXCLUDED.asking_since IS NULL THEN NULL
                                ELSE coalesce(l.asking_since, EXCLUDED.asking_since) END;
    END IF;
    v_claimed := v_others + v_claim;
    UPDATE {c} SET claimed = v_claimed, total = v_total WHERE pool_name = p_pool;

    RETURN QUERY SELECT v_status, v_share, v_grant, v_total, v_live, v_claimed, v_view,
        v_observed, v_departed, v_db_total, v_db_others + v_claim;
END
$fn$"""
