"""Rollups: the ledger summed per UTC day and per UTC month, kept exact by the ledger writer.

Reports over a month of a 10M-row ledger read ~830k raw rows; the same report over the month
rollup reads one row per (month, user, key, model, provider, client, workspace, outcome, billing
basis, plan, credential) actually seen: ~100k. Two tables, same columns:

* `rollup_day`   bucket = the UTC day's midnight,
* `rollup_month` bucket = the UTC month's first midnight,

each with the sums a report needs (requests, tokens, cost/charged/notional USD, how many rows had
no cost) and the latest `ts` of the group (`max_ts`, for "last seen"). Blocked and unpriced counts
are `requests` of the `outcome` groups of that name.

**Exact, not approximate.** Sums are DECIMAL(38, 10) over the rows' DECIMAL(20, 10), so a sum of
rollups equals the sum of the rows, bit for bit. The writer appends each batch's sums in the same
transaction as the row insert (`apply_rows`, called by `ledger.write_rows`), by row whatever its
timestamp (late rows from a laptop land in their own old bucket); a group may so have several
rows until `compact` folds them (the writer does, every 10 minutes): readers always sum.
Anything that changes rows in place (re-pricing, corrections) calls `rebuild(cur, since, until)`
in the transaction of the change: it recomputes the touched days from the rows and the touched
months from the days.

**Windows not on bucket edges.** `source(since, until)` answers any half-open range [since,
until) exactly: whole months from `rollup_month`, whole days from `rollup_day`, and the partial
days at either edge from raw rows (a plain `ts` range: zone maps keep that cheap). Policy time
zones (a month starting 22:00 UTC in Paris, 18:30 UTC in Kolkata) are just such edges. A report
selects from `source()` instead of `requests`; with `USE = False` (tests) or a file not yet
migrated, `source()` is the raw rows alone, so the same query computes the same report from raw
rows -- which is how tests/unit/test_rollups.py proves them identical.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from spendgate.store import sql

log = logging.getLogger(__name__)

USE = True  # False: every report reads raw rows (the tests compare both ways)

# the dimensions reports group or filter by (spendgate.reports.queries.GROUPS, unpriced, subscriptions)
# origin: the laptop gateway an ingested row came from (spendgate.central); one per laptop, and a
# laptop serves one user, so it adds almost no groups
DIMS = ('"user"', "key_fingerprint", "model", "provider", "client", "workspace", "outcome", "billing_basis",
        "plan", "credential", "origin")  # fmt: skip
TOKENS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens",
          "reasoning_tokens", "web_search_requests")  # fmt: skip
USD = ("cost_usd", "charged_usd", "notional_usd")
# every measure: (rollup column, its type, how one raw row contributes, how rollup rows combine)
MEASURES: tuple[tuple[str, str, str], ...] = (
    ("requests", "HUGEINT NOT NULL", "1::BIGINT"),  # HUGEINT: a sum of BIGINTs never overflows
    *((t, "HUGEINT NOT NULL", f"{t}::BIGINT") for t in TOKENS),
    *((u, "DECIMAL(38, 10)", f"{u}::DECIMAL(38, 10)") for u in USD),
    # via INTEGER: PostgreSQL casts a boolean to INTEGER only (the reports' raw edges run there too)
    ("cost_null", "HUGEINT NOT NULL", "(cost_usd IS NULL)::INTEGER::BIGINT"),  # rows without a cost (unpriced, blocked)
    ("max_ts", "TIMESTAMPTZ NOT NULL", "ts"),
)
# narrower families of the same sums, so a report reads the fewest rows that still hold its dimensions:
# per user (every per-user attribute and the provider, no model) and per model (no user). "" is all.
FAMILIES: dict[str, tuple[str, ...]] = {
    "_model": ("provider", "model", "outcome", "billing_basis", "plan", "credential"),
    "_user": ('"user"', "key_fingerprint", "provider", "client", "workspace", "outcome", "billing_basis", "plan",
              "credential"),
    "": DIMS,
}
GRAINS = ("day", "month")
TABLES = tuple(f"rollup_{g}{f}" for f in FAMILIES for g in GRAINS)


def _agg(col: str, *, of_rows: bool) -> str:
    """The aggregate of a measure over raw rows (of_rows) or over rollup rows."""
    if col == "max_ts":
        return f"max({'ts' if of_rows else 'max_ts'})"
    if of_rows:
        expr = dict((m[0], m[2]) for m in MEASURES)[col]
        if col == "requests":
            return "count(*)"
        return f"sum({expr})" if col in USD else f"coalesce(sum({expr}), 0)"
    return f"sum({col})" if col in USD else f"coalesce(sum({col}), 0)"


def bucket_sql(grain: str, col: str = "ts") -> str:
    """The UTC day or month start holding `col`, whatever the session's time zone."""
    return f"timezone('UTC', date_trunc('{grain}', timezone('UTC', {col})))"


def ddl() -> str:
    out = []
    for fam, dims in FAMILIES.items():
        cols = ",\n".join([f"    {d} VARCHAR" for d in dims] + [f"    {m[0]} {m[1]}" for m in MEASURES])
        for g in GRAINS:
            out.append(f"CREATE TABLE IF NOT EXISTS rollup_{g}{fam} (\n    bucket TIMESTAMPTZ NOT NULL,\n{cols}\n);")
    return "\n".join(out)


def _aggregate_rows(grain: str, table: str, where: str = "", dims: tuple[str, ...] = DIMS) -> str:
    """SELECT bucket, dims, sums FROM raw rows of `table` grouped by `grain` bucket."""
    aggs = ", ".join(f"{_agg(m[0], of_rows=True)} AS {m[0]}" for m in MEASURES)
    return f"SELECT {bucket_sql(grain)} AS bucket, {', '.join(dims)}, {aggs} FROM {table} {where} GROUP BY ALL"


def _regroup(grain: str, source: str, dims: tuple[str, ...], where: str = "") -> str:
    """Rollup rows of `source` summed to `grain` buckets and `dims` (months from days, narrow from wide)."""
    aggs = ", ".join(f"{_agg(m[0], of_rows=False)} AS {m[0]}" for m in MEASURES)
    return (f"SELECT {bucket_sql(grain, 'bucket')} AS bucket, {', '.join(dims)}, {aggs} FROM {source} {where} "
            "GROUP BY ALL")


def _fill() -> list[str]:
    """Statements filling every table from the rows (day, wide), then the rest from rollups."""
    out = [f"INSERT INTO rollup_day {_aggregate_rows('day', 'requests')} ORDER BY bucket"]
    for fam, dims in FAMILIES.items():
        if fam:
            out.append(f"INSERT INTO rollup_day{fam} {_regroup('day', 'rollup_day', dims)} ORDER BY bucket")
        out.append(f"INSERT INTO rollup_month{fam} {_regroup('month', f'rollup_day{fam}', dims)} ORDER BY bucket")
    return out


def migration_sql() -> str:
    """The DuckDB migration: the tables, filled from the rows already there."""
    clear = " ".join(f"DELETE FROM {t};" for t in TABLES)
    fill = ";\n        ".join(_fill())
    return f"""
        {ddl()}
        CREATE TABLE IF NOT EXISTS rollup_meta (built_at TIMESTAMPTZ NOT NULL);
        {clear} DELETE FROM rollup_meta;
        {fill};
        INSERT INTO rollup_meta VALUES (now());
    """


QUANTUM = Decimal("1E-10")  # the ledger's DECIMAL(20, 10): amounts are stored at this precision


def exact(v: Any) -> Any:
    """An amount as the ledger stores it (10 decimal places, half away from zero), so a sum made in
    Python equals the sum DuckDB makes of the stored values."""
    if not isinstance(v, Decimal):  # a str, int or float some caller passed: what the column would read
        try:
            v = Decimal(str(v)) if v is not None else None
        except (InvalidOperation, ValueError):
            return v
    if v is None or not v.is_finite() or v.as_tuple().exponent >= -10:
        return v
    try:
        return v.quantize(QUANTUM, rounding=ROUND_HALF_UP)
    except InvalidOperation:  # too many digits for any column: the write cleans it (ledger.storable)
        return v


_DIM_ATTRS = tuple(d.strip('"') for d in DIMS)
_FAM_INDEX = {fam: tuple(DIMS.index(d) for d in dims) for fam, dims in FAMILIES.items()}


def deltas(rows: Iterable[Any]) -> dict[str, list[tuple]]:
    """Per rollup table, the rows' sums per (bucket, dimensions): (bucket, *dims, *measures) in
    MEASURES order. `rows` are LedgerRow-like objects whose amounts went through `exact`.

    The rows are summed once per (day, all dimensions) -- a batch holds few such groups -- and
    every table's groups are summed from those (exact: integer and Decimal sums well within the
    context's 28 digits, and max, do not depend on the order)."""
    wide: dict[tuple, list] = {}  # (day, *dims) -> measures, and the month alongside
    months: dict[datetime, datetime] = {}
    for r in rows:
        ts = r.ts if r.ts.tzinfo else r.ts.replace(tzinfo=UTC)
        day = floor_day(ts)
        key = (day, *(getattr(r, a) for a in _DIM_ATTRS))
        m = wide.get(key)
        tokens = [getattr(r, t) or 0 for t in TOKENS]
        usd = [getattr(r, u) for u in USD]
        if m is None:
            wide[key] = [1, *tokens, *usd, int(r.cost_usd is None), ts]
            if day not in months:
                months[day] = day.replace(day=1)
            continue
        _add(m, [1, *tokens, *usd, int(r.cost_usd is None), ts])
    acc: dict[str, dict[tuple, list]] = {f"rollup_{g}{f}": {} for f in FAMILIES for g in GRAINS}
    for key, m in wide.items():
        day, dims = key[0], key[1:]
        for fam, idx in _FAM_INDEX.items():
            key_dims = tuple(dims[i] for i in idx)
            for g, bucket in (("day", day), ("month", months[day])):
                groups = acc[f"rollup_{g}{fam}"]
                k = (bucket, *key_dims)
                have = groups.get(k)
                if have is None:
                    groups[k] = list(m)
                else:
                    _add(have, m)
    return {t: [(*k, *m) for k, m in groups.items()] for t, groups in acc.items()}


_USD_AT = range(1 + len(TOKENS), 1 + len(TOKENS) + len(USD))  # where the USD sums sit in a measures list


def _add(into: list, m: list) -> None:
    """Add measures `m` to `into` (same layout): counts and tokens summed, USD summed skipping
    None (NULL: unknown, like SQL's sum), max_ts the later one."""
    for i in range(len(into) - 1):
        if i in _USD_AT:
            if m[i] is not None:
                into[i] = m[i] if into[i] is None else into[i] + m[i]
        else:
            into[i] += m[i]
    into[-1] = max(into[-1], m[-1])


def apply_rows(cur: Any, rows: Iterable[Any], appenders: Any = None) -> None:
    """Add `rows` (just appended to `requests`, amounts through `exact`) to every rollup.

    Call inside the transaction that inserted them, so rows and rollups commit together. By row:
    rows of any age go to their own bucket. Each batch's sums are appended as rows of their own
    with an Appender (no lookup of the rows already there: a MERGE had to scan the current month's
    on every write); readers sum rows anyway, and `compact` folds them in later. `appenders`: a
    `spendgate.store.ledger.Appenders` of `cur` to reuse (the writer thread's; creating the six
    Appenders cost ~4 ms of CPU per commit), None to create them here.
    """
    for table, out in deltas(rows).items():
        cols = _COLS_OF[table]
        app = appenders.get(table, cols) if appenders is not None else cur.appender(table, columns=list(cols))
        app.append_rows(out)
        app.flush()


_DIM_ATTRS_OF = {fam: [d.strip('"') for d in dims] for fam, dims in FAMILIES.items()}
_COLS_OF = {f"rollup_{g}{fam}": ("bucket", *_DIM_ATTRS_OF[fam], *(m[0] for m in MEASURES))
            for fam in FAMILIES for g in GRAINS}


def compact(cur: Any, days: Iterable[datetime], months: Iterable[datetime]) -> None:
    """Fold the rows of the given buckets into one row per group (same sums: reports do not change).

    The ledger's writer calls it for the buckets it touched, every few minutes and at close; run
    it in a transaction (the caller's), so no reader sees a bucket half rewritten."""
    for grain, buckets in (("day", sorted(set(days))), ("month", sorted(set(months)))):
        if not buckets:
            continue
        cond = f"WHERE bucket IN ({', '.join('?' * len(buckets))})"
        for fam, dims in FAMILIES.items():
            table = f"rollup_{grain}{fam}"
            cur.execute(f"CREATE OR REPLACE TEMP TABLE _rollup_compact AS {_regroup(grain, table, dims, cond)}",
                        buckets)
            cur.execute(f"DELETE FROM {table} {cond}", buckets)
            cur.execute(f"INSERT INTO {table} SELECT * FROM _rollup_compact ORDER BY bucket")
    cur.execute("DROP TABLE IF EXISTS _rollup_compact")


def rebuild(cur: Any, since: datetime | None = None, until: datetime | None = None) -> None:
    """Recompute the rollups of the days touching [since, until) from the rows (None: all time),
    and the months holding them from the days. For whatever changed rows in place (re-pricing,
    corrections, bulk loads); run it in the same transaction as the change to stay exact."""
    lo = floor_day(since) if since else None
    hi = ceil_day(until) if until else None
    cond, params = _range("bucket", lo, hi)
    raw_cond, raw_params = _range("ts", lo, hi)
    mcond, mparams = _range("bucket", floor_month(lo) if lo else None, ceil_month(hi) if hi else None)
    for fam in FAMILIES:
        cur.execute(f"DELETE FROM rollup_day{fam} {cond}", params)
        cur.execute(f"DELETE FROM rollup_month{fam} {mcond}", mparams)
    cur.execute(f"INSERT INTO rollup_day {_aggregate_rows('day', 'requests', raw_cond)} ORDER BY bucket", raw_params)
    for fam, dims in FAMILIES.items():
        if fam:
            cur.execute(f"INSERT INTO rollup_day{fam} {_regroup('day', 'rollup_day', dims, cond)} ORDER BY bucket",
                        params)
        cur.execute(f"INSERT INTO rollup_month{fam} {_regroup('month', f'rollup_day{fam}', dims, mcond)} "
                    "ORDER BY bucket", mparams)


def heal(cur: Any) -> bool:
    """Rebuild every rollup when they do not count the ledger's rows (rows inserted or deleted
    behind the writer's back: an older spendgate, a tool's INSERT). The gateway calls it at start;
    ~25 ms when all is well (a count of the rows and of the smallest rollup). True if it rebuilt."""
    rows = cur.execute("SELECT count(*) FROM requests").fetchone()[0]
    counted = cur.execute("SELECT coalesce(sum(requests), 0) FROM rollup_month_model").fetchone()[0]
    if rows == counted:
        return False
    log.warning("spendgate: the rollups count %d rows, the ledger has %d: rebuilding them", counted, rows)
    cur.execute("BEGIN")
    try:
        rebuild(cur)
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    return True


def available(cur: Any) -> bool:
    """True when reports may read the rollups: USE is on and this file has them (a ledger opened
    read-only before its migration has not)."""
    if not USE:
        return False
    if sql.dialect(cur) == "postgresql":  # the store's schema is checked when it opens (pg_rollups: same tables)
        return True
    return bool(cur.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'rollup_meta' "
                            "AND schema_name = 'main'").fetchone()[0])


_CHECKED: ContextVar[bool | None] = ContextVar("spendgate_rollups_checked", default=None)


@contextmanager
def checked(cur: Any) -> Iterator[bool]:
    """Ask `available` once for a group of reports on one connection (the overview runs a dozen;
    each catalogue look-up is ~1 ms): `source` calls inside the block reuse the answer."""
    token = _CHECKED.set(available(cur))
    try:
        yield bool(_CHECKED.get())
    finally:
        _CHECKED.reset(token)


# -- reading -------------------------------------------------------------------------------------


def _range(col: str, lo: datetime | None, hi: datetime | None) -> tuple[str, list[Any]]:
    parts, params = [], []
    if lo is not None:
        parts.append(f"{col} >= ?")
        params.append(lo)
    if hi is not None:
        parts.append(f"{col} < ?")
        params.append(hi)
    return (f"WHERE {' AND '.join(parts)}" if parts else ""), params


def floor_day(t: datetime) -> datetime:
    t = t.astimezone(UTC)
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def ceil_day(t: datetime) -> datetime:
    f = floor_day(t)
    return f if f == t else f + timedelta(days=1)


def floor_month(t: datetime) -> datetime:
    return floor_day(t).replace(day=1)


def ceil_month(t: datetime) -> datetime:
    f = floor_month(t)
    if f == t:
        return f
    return f.replace(year=f.year + 1, month=1) if f.month == 12 else f.replace(month=f.month + 1)


def _raw(lo: datetime | None, hi: datetime | None, day: bool, dims: tuple[str, ...] = DIMS,
         measures: tuple[tuple[str, str, str], ...] = MEASURES) -> tuple[str, list[Any]]:
    cond, params = _range("ts", lo, hi)
    extra = ", CAST(timezone('UTC', ts) AS DATE) AS day" if day else ""
    cols = [*dims, *(f"{m[2]} AS {m[0]}" for m in measures), "ts AS t0"]
    return f"SELECT {', '.join(cols)}{extra} FROM requests {cond}", params


def _rolled(grain: str, lo: datetime | None, hi: datetime | None, day: bool, dims: tuple[str, ...],
            measures: tuple[tuple[str, str, str], ...] = MEASURES) -> tuple[str, list[Any]]:
    fam = next(f for f, have in FAMILIES.items() if set(dims) <= set(have))  # the narrowest that has them
    cond, params = _range("bucket", lo, hi)
    extra = ", CAST(timezone('UTC', bucket) AS DATE) AS day" if day else ""
    cols = [*dims, *(m[0] for m in measures), "bucket AS t0"]
    return f"SELECT {', '.join(cols)}{extra} FROM rollup_{grain}{fam} {cond}", params


def pieces(since: datetime | None, until: datetime | None, *, by_day: bool = False
           ) -> list[tuple[str, datetime | None, datetime | None]]:
    """How [since, until) splits into (source, lo, hi): 'raw' edges, whole 'day's, whole 'month's.

    by_day: no months (the caller groups by day). None is an open end.
    """
    s = since.astimezone(UTC) if since else None
    u = until.astimezone(UTC) if until else None
    if s is not None and u is not None and s >= u:
        return []
    d_lo = ceil_day(s) if s else None
    d_hi = floor_day(u) if u else None
    if d_lo is not None and d_hi is not None and d_lo >= d_hi:  # inside one day (or two partial ones)
        return [("raw", s, u)]
    out: list[tuple[str, datetime | None, datetime | None]] = []
    if s is not None and s < d_lo:
        out.append(("raw", s, d_lo))
    if by_day:
        out.append(("day", d_lo, d_hi))
    else:
        m_lo = ceil_month(d_lo) if d_lo else None
        m_hi = floor_month(d_hi) if d_hi else None
        if m_lo is not None and m_hi is not None and m_lo >= m_hi:
            out.append(("day", d_lo, d_hi))
        else:
            if d_lo is not None and d_lo < m_lo:
                out.append(("day", d_lo, m_lo))
            out.append(("month", m_lo, m_hi))
            if d_hi is not None and m_hi < d_hi:
                out.append(("day", m_hi, d_hi))
    if u is not None and d_hi < u:
        out.append(("raw", d_hi, u))
    return out


def raw_source(since: datetime | None = None, until: datetime | None = None, *, by_day: bool = False,
               dims: Iterable[str] | None = None, measures: Iterable[str] | None = None) -> tuple[str, list[Any]]:
    """`source` from the raw rows only: for ranges finer than a day (the latest hours, minutes)."""
    sql, params = _raw(since, until, by_day, _dims(dims), _measures(measures))
    return f"({sql})", params


def _dims(dims: Iterable[str] | None) -> tuple[str, ...]:
    if dims is None:
        return DIMS
    want = set(dims)
    unknown = want - set(DIMS)
    if unknown:
        raise ValueError(f"not a rollup dimension: {', '.join(sorted(unknown))}")
    return tuple(d for d in DIMS if d in want)


def _measures(names: Iterable[str] | None) -> tuple[tuple[str, str, str], ...]:
    if names is None:
        return MEASURES
    want = set(names)
    unknown = want - {m[0] for m in MEASURES}
    if unknown:
        raise ValueError(f"not a rollup measure: {', '.join(sorted(unknown))}")
    return tuple(m for m in MEASURES if m[0] in want)


def source(cur: Any, since: datetime | None = None, until: datetime | None = None, *,
           by_day: bool = False, dims: Iterable[str] | None = None, measures: Iterable[str] | None = None
           ) -> tuple[str, list[Any]]:
    """A subquery (with its parameters) yielding the ledger in [since, until) as rows of
    (dims..., measures..., t0[, day]) -- rollup rows where whole buckets fit, raw rows at the
    edges. Sum its measures; never count its rows. `t0` is the bucket start or the row's ts.
    `dims`: the dimensions the caller uses (None: all); each piece comes from the narrowest
    rollup family holding them. `measures`: the MEASURES columns the caller sums (None: all);
    naming only those keeps DuckDB's binding of the union short (~25% of a small report's time).

    Raw rows throughout when the rollups are unavailable (see `available`)."""
    d, ms = _dims(dims), _measures(measures)
    known = _CHECKED.get()
    if not (available(cur) if known is None else known):
        return raw_source(since, until, by_day=by_day, dims=d, measures=measures)
    parts, params = [], []
    for kind, lo, hi in pieces(since, until, by_day=by_day):
        q, p = _raw(lo, hi, by_day, d, ms) if kind == "raw" else _rolled(kind, lo, hi, by_day, d, ms)
        parts.append(q)
        params += p
    if not parts:  # an empty range
        return raw_source(since, until, by_day=by_day, dims=d, measures=measures)
    return "(" + " UNION ALL ".join(parts) + ")", params
