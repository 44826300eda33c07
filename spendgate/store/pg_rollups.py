"""The PostgreSQL store's ledger at scale: `requests` partitioned by UTC month, and rollups kept
by a trigger (the same tables and meaning as spendgate/store/rollups.py for DuckDB).

* **Partitions**: `requests` is `PARTITION BY RANGE (ts)`, one partition per UTC month named
  `requests_YYYY_MM`, plus `requests_default` for rows outside every month created so far (a
  laptop's row with a years-old clock): nothing is ever refused for its timestamp.
  `spendgate_ensure_partitions(n, from)` creates the n + 1 months from `from`'s; with last
  month (late rows) to two months ahead, `spendgate store migrate` and every replica's lease keeper (every 10 minutes) call
  it, so a month's partition exists long before its first row. Old months can be detached or
  dropped as a whole (retention) without a long DELETE.
* **Uniqueness**: a partitioned table's primary key must hold the partition column, so it is
  (request_id, ts). Exactly-once settlement never relied on the key alone: `spendgate_settle`
  locks the reservation (or finds the row by request id) before inserting.
* **Rollups**: `rollup_day` and `rollup_month` (UTC buckets; one row per bucket and
  dimensions, `UNIQUE NULLS NOT DISTINCT`) are updated by an AFTER INSERT/UPDATE/DELETE row
  trigger on `requests`, in the transaction that changes the row: settlement, the reaper's
  `interrupted` row and its later correction, re-pricing updates and rows ingested from
  laptops all keep them exact, whatever the row's age. A group whose last row goes away is
  deleted; its `max_ts` is recomputed when the row that held it goes.
"""

from __future__ import annotations

from spendgate.store.rollups import DIMS, FAMILIES, GRAINS, MEASURES, TOKENS, USD

_DIMS = ", ".join(DIMS)
_MEAS = [m[0] for m in MEASURES]


def _table(name: str, dims: tuple[str, ...] = DIMS) -> str:
    cols = [f"{d} TEXT" for d in dims]
    cols += [f"{t} NUMERIC(38, 0) NOT NULL" for t in ("requests", *TOKENS, "cost_null")]  # sums never overflow
    cols += [f"{u} NUMERIC(38, 10)" for u in USD]
    cols += ["max_ts TIMESTAMPTZ NOT NULL"]
    body = ",\n    ".join(["bucket TIMESTAMPTZ NOT NULL", *cols])
    # dimensions first in the key: a group's buckets are one index range (max_ts recomputes, drill-downs)
    return (f"CREATE TABLE {name} (\n    {body},\n    UNIQUE NULLS NOT DISTINCT ({', '.join(dims)}, bucket)\n);\n"
            f"CREATE INDEX {name}_bucket ON {name} (bucket);")


def _upsert(grain: str, rec: str, sign: str, fam: str = "") -> str:
    """Add (sign 1) or take away (sign -1) row `rec` in rollup_<grain><fam>."""
    dims = FAMILIES[fam]
    vals = [f"{rec}.{d}" for d in dims]
    meas = {"requests": sign, "cost_null": f"({rec}.cost_usd IS NULL)::int * {sign}", "max_ts": f"{rec}.ts"}
    for t in TOKENS:
        meas[t] = f"coalesce({rec}.{t}, 0) * {sign}"
    for u in USD:
        meas[u] = f"{rec}.{u} * {sign}"
    sets = []
    for m in _MEAS:
        if m == "max_ts":
            sets.append("max_ts = greatest(x.max_ts, excluded.max_ts)")
        elif m in USD:
            sets.append(f"{m} = coalesce(x.{m} + excluded.{m}, x.{m}, excluded.{m})")
        else:
            sets.append(f"{m} = x.{m} + excluded.{m}")
    bucket = f"date_trunc('{grain}', {rec}.ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    return (f"INSERT INTO rollup_{grain}{fam} AS x (bucket, {', '.join(dims)}, {', '.join(_MEAS)}) VALUES ({bucket}, "
            f"{', '.join(vals)}, {', '.join(meas[m] for m in _MEAS)}) "
            f"ON CONFLICT ({', '.join(dims)}, bucket) DO UPDATE SET {', '.join(sets)}")


def _match(rec: str, table: str = "", dims: tuple[str, ...] = DIMS) -> str:
    p = f"{table}." if table else ""
    return " AND ".join(f"{p}{d} IS NOT DISTINCT FROM {rec}.{d}" for d in dims)


def _remove(grain: str, fam: str = "") -> str:
    """Take OLD away from rollup_<grain><fam>: drop the group if it was its last row, else
    recompute max_ts if OLD held it (from the rows for a day, from the days for a month)."""
    dims = FAMILIES[fam]
    bucket = f"date_trunc('{grain}', OLD.ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    if grain == "day":
        recompute = (f"SELECT max(ts) FROM requests q WHERE q.ts >= v_bucket AND q.ts < v_bucket + interval '1 day' "
                     f"AND {_match('OLD', 'q', dims)}")
    else:
        recompute = (f"SELECT max(max_ts) FROM rollup_day{fam} q WHERE q.bucket >= v_bucket "
                     f"AND q.bucket < v_bucket + interval '1 month' AND {_match('OLD', 'q', dims)}")
    return f"""
        v_bucket := {bucket};
        {_upsert(grain, 'OLD', '-1', fam)};
        DELETE FROM rollup_{grain}{fam} x WHERE x.bucket = v_bucket AND {_match('OLD', 'x', dims)} AND x.requests = 0;
        IF NOT FOUND THEN
            -- coalesce: nothing left to see means the statement's own later events empty the group
            UPDATE rollup_{grain}{fam} x SET max_ts = coalesce(({recompute}), x.max_ts)
            WHERE x.bucket = v_bucket AND {_match('OLD', 'x', dims)} AND x.max_ts = OLD.ts;
        END IF;"""


def _of_rows() -> str:
    """The measures over raw rows, in _MEAS order."""
    out = {"requests": "count(*)", "cost_null": "count(*) FILTER (WHERE cost_usd IS NULL)", "max_ts": "max(ts)"}
    out |= {t: f"coalesce(sum({t}), 0)" for t in TOKENS} | {u: f"sum({u})" for u in USD}
    return ", ".join(out[m] for m in _MEAS)


def _of_days() -> str:
    out = {m: f"sum({m})" for m in _MEAS} | {"max_ts": "max(max_ts)"}
    return ", ".join(out[m] for m in _MEAS)


def tables() -> tuple[str, ...]:
    """Every rollup table the store keeps (after every migration)."""
    return tuple(f"rollup_{g}{f}" for f in FAMILIES for g in GRAINS)


def fill_sql(families: tuple[str, ...] = ("",)) -> str:
    """Statements summing the rows into empty rollup tables of `families` (the wide one first:
    the narrow ones are regrouped from its days): what the migrations do once, and what a bulk
    load that bypassed the trigger (scripts/bench_pg_read.py) runs afterwards."""
    out = []
    if "" in families:
        out.append(f"""
        INSERT INTO rollup_day (bucket, {_DIMS}, {', '.join(_MEAS)})
        SELECT date_trunc('day', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', {_DIMS}, {_of_rows()}
        FROM requests GROUP BY 1, {_DIMS};""")
    for fam in families:
        dims = ", ".join(FAMILIES[fam])
        if fam:
            out.append(f"""
        INSERT INTO rollup_day{fam} (bucket, {dims}, {', '.join(_MEAS)})
        SELECT bucket, {dims}, {_of_days()} FROM rollup_day GROUP BY bucket, {dims};""")
        out.append(f"""
        INSERT INTO rollup_month{fam} (bucket, {dims}, {', '.join(_MEAS)})
        SELECT date_trunc('month', bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', {dims}, {_of_days()}
        FROM rollup_day{fam} GROUP BY 1, {dims};""")
    return "".join(out)


def _trigger_function(families: tuple[str, ...], replace: bool = False) -> str:
    """spendgate_rollup(): the row trigger's function keeping the rollups of `families`."""
    same_group = " AND ".join([f"NEW.{d} IS NOT DISTINCT FROM OLD.{d}" for d in DIMS] + ["NEW.ts = OLD.ts"])
    # an UPDATE that keeps the row in its group (re-pricing a cost): only the measures change
    delta_sets = ", ".join([f"{t} = x.{t} + coalesce(NEW.{t}, 0) - coalesce(OLD.{t}, 0)" for t in TOKENS]
                           + [f"{u} = coalesce(x.{u}, 0) + coalesce(NEW.{u}, 0) - coalesce(OLD.{u}, 0)" for u in USD]
                           + ["cost_null = x.cost_null + (NEW.cost_usd IS NULL)::int - (OLD.cost_usd IS NULL)::int"])
    delta = "\n".join(
        f"UPDATE rollup_{g}{f} x SET {delta_sets} WHERE x.bucket = date_trunc('{g}', NEW.ts AT TIME ZONE 'UTC') "
        f"AT TIME ZONE 'UTC' AND {_match('NEW', 'x', FAMILIES[f])};" for f in families for g in ("day", "month"))
    removes = "".join(_remove(g, f) for f in families for g in ("day", "month"))
    adds = "".join(f"\n                {_upsert(g, 'NEW', '1', f)};" for f in families for g in ("day", "month"))
    return f"""
        {"CREATE OR REPLACE" if replace else "CREATE"} FUNCTION spendgate_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            v_bucket TIMESTAMPTZ;
        BEGIN
            IF TG_OP = 'UPDATE' AND {same_group} THEN
                {delta}
                RETURN NULL;
            END IF;
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                {removes}
            END IF;
            IF TG_OP IN ('UPDATE', 'INSERT') THEN
                {adds}
            END IF;
            RETURN NULL;
        END;
        $$;
    """


def migration_sql() -> str:
    return f"""
        -- the ledger partitioned by UTC month (rows move once, here)
        ALTER TABLE requests RENAME TO requests_unpartitioned;
        ALTER INDEX requests_ts RENAME TO requests_unpartitioned_ts;
        ALTER TABLE requests_unpartitioned RENAME CONSTRAINT requests_pkey TO requests_unpartitioned_pkey;
        CREATE TABLE requests (LIKE requests_unpartitioned INCLUDING DEFAULTS) PARTITION BY RANGE (ts);
        ALTER TABLE requests ADD PRIMARY KEY (request_id, ts);
        CREATE INDEX requests_ts ON requests (ts);
        CREATE INDEX requests_request_id ON requests (request_id);
        CREATE INDEX requests_user_ts ON requests ("user", ts);
        CREATE TABLE requests_default PARTITION OF requests DEFAULT;

        CREATE FUNCTION spendgate_ensure_partitions(p_ahead INT DEFAULT 2, p_from TIMESTAMPTZ DEFAULT now())
        RETURNS INT LANGUAGE plpgsql AS $$
        DECLARE
            v_start TIMESTAMPTZ := date_trunc('month', p_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
            v_name TEXT;
            v_made INT := 0;
        BEGIN
            FOR i IN 0 .. p_ahead LOOP
                v_name := 'requests_' || to_char(v_start AT TIME ZONE 'UTC', 'YYYY_MM');
                IF to_regclass(v_name) IS NULL THEN
                    PERFORM pg_advisory_xact_lock(hashtext(v_name));  -- replicas take turns
                    IF to_regclass(v_name) IS NULL THEN
                        BEGIN
                            EXECUTE format('CREATE TABLE %I PARTITION OF requests FOR VALUES FROM (%L) TO (%L)',
                                           v_name, v_start, v_start + interval '1 month');
                            v_made := v_made + 1;
                        EXCEPTION WHEN check_violation THEN  -- rows of that month already in the default
                            RAISE WARNING 'spendgate: month % stays in requests_default (it holds rows of it)',
                                v_name;
                        END;
                    END IF;
                END IF;
                v_start := v_start + interval '1 month';
            END LOOP;
            RETURN v_made;
        END;
        $$;
        SELECT spendgate_ensure_partitions(
            (extract(year FROM age(date_trunc('month', now()), date_trunc('month', m)))::int * 12
             + extract(month FROM age(date_trunc('month', now()), date_trunc('month', m)))::int) + 2, m)
        FROM (SELECT min(ts) AS m FROM requests_unpartitioned HAVING min(ts) < now()) AS oldest;
        SELECT spendgate_ensure_partitions(3, now() - interval '1 month');  -- last month (late rows) to 2 ahead
        INSERT INTO requests SELECT * FROM requests_unpartitioned;
        DROP TABLE requests_unpartitioned;

        -- settlement and the reaper insert with ON CONFLICT on the new key (request id and ts)
        DO $do$
        DECLARE f TEXT;
        BEGIN
            FOR f IN SELECT pg_get_functiondef(p.oid) FROM pg_proc p
                     WHERE p.proname IN ('spendgate_settle', 'spendgate_reap_one') LOOP
                EXECUTE replace(f, 'ON CONFLICT (request_id) DO NOTHING', 'ON CONFLICT DO NOTHING');
            END LOOP;
        END;
        $do$;

        -- rollups, kept by a trigger in the transaction of every row change
        {_table('rollup_day')}
        {_table('rollup_month')}
        {_trigger_function(("",))}
        {fill_sql()}
        CREATE TRIGGER requests_rollup AFTER INSERT OR UPDATE OR DELETE ON requests
            FOR EACH ROW EXECUTE FUNCTION spendgate_rollup();
    """


def families_migration_sql() -> str:
    """The narrow rollup families DuckDB has too (per model, per user: spendgate/store/rollups.py
    FAMILIES), so a report reads the fewest rollup rows holding its dimensions: a month's spend by
    model is a few hundred rows, not the ~150k (user, model, ...) groups of the wide rollup.
    Filled from the wide rollup's days; the trigger then keeps all six tables."""
    narrow = tuple(f for f in FAMILIES if f)
    tables = "\n".join(_table(f"rollup_{g}{f}", FAMILIES[f]) for f in narrow for g in GRAINS)
    # the unpriced report counts distinct users per model among a few unpriced groups of the wide
    # rollup: a partial index finds them without reading the month's ~120k other groups
    return f"""
        {tables}
        CREATE INDEX rollup_day_unpriced ON rollup_day (bucket) WHERE outcome = 'unpriced';
        CREATE INDEX rollup_month_unpriced ON rollup_month (bucket) WHERE outcome = 'unpriced';
        {fill_sql(narrow)}
        {_trigger_function(tuple(FAMILIES), replace=True)}
    """


def report_indexes_sql() -> str:
    """Partial covering indexes for the unpriced report, which counts distinct users per model
    among the wide rollups' unpriced groups: an index-only scan reads them from the index alone
    (`/api/unpriced` for a year at 10M rows 109 -> 26 ms); the old indexes on `(bucket)` found the
    groups, then read ~25,000 heap pages for their columns. The indexed columns are grouping
    columns only, which the trigger's upserts never change, so its updates stay HOT (an index on a
    measure would make every upsert of the table write all its indexes, whatever the predicate).

    The tables are locked first, in the order the row trigger takes them (`tables()`): a settlement
    running meanwhile waits for the migration instead of deadlocking with it."""
    out = [f"LOCK TABLE {', '.join(tables())} IN ACCESS EXCLUSIVE MODE;"]
    for grain in GRAINS:
        out.append(f"""
        DROP INDEX IF EXISTS rollup_{grain}_unpriced;
        CREATE INDEX IF NOT EXISTS rollup_{grain}_unpriced_users ON rollup_{grain} (bucket)
            INCLUDE (provider, model, "user") WHERE outcome = 'unpriced';""")
    return "\n".join(out)
