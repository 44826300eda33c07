"""Small helpers every read-side query uses: WHERE clauses from optional filters, rows as JSON-able dicts, times."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from spendgate.store.engine import duckdb

Condition = str | tuple[str, Any]  # fixed SQL, or (SQL with one ?, value) skipped when value is None or ""


def where(*conditions: Condition) -> tuple[str, list[Any]]:
    """`WHERE a AND b ...` and its parameters, leaving out filters whose value is None or empty."""
    parts, params = [], []
    for c in conditions:
        if isinstance(c, str):
            parts.append(c)
        elif c[1] is not None and c[1] != "":
            parts.append(c[0])
            params.append(c[1])
    return (f"WHERE {' AND '.join(parts)}" if parts else ""), params


def ts_range(since: datetime | date | None = None, until: datetime | date | None = None,
             column: str = "ts") -> tuple[Condition, Condition]:
    """The one time filter every ledger query uses: the half-open range [since, until) on the bare column.

    A plain comparison on `ts` lets DuckDB skip whole row groups by their min/max (zone maps); an
    expression around the column (`CAST(timezone('UTC', ts) AS DATE) >= ?`) makes it read every
    row. A `date` bound means that UTC day's midnight, so `until=date` excludes that day: pass the
    day after the last one wanted (see `day_range`). None leaves that side open.
    """
    return (f"{column} >= ?", _instant(since)), (f"{column} < ?", _instant(until))


def day_range(first: date | None, last: date | None, column: str = "ts") -> tuple[Condition, Condition]:
    """`ts_range` for whole UTC days, both ends included: [first 00:00 UTC, last + 1 day 00:00 UTC)."""
    return ts_range(first, last + timedelta(days=1) if last else None, column)


def day_bounds(first: date | None, last: date | None) -> tuple[datetime | None, datetime | None]:
    """`day_range` as the instants [first 00:00 UTC, last + 1 day 00:00 UTC) (None: open)."""
    return _instant(first), _instant(last + timedelta(days=1)) if last else None


def _instant(v: datetime | date | None) -> datetime | None:
    if v is None or isinstance(v, datetime):
        return v
    return datetime(v.year, v.month, v.day, tzinfo=UTC)


def dialect(cur: Any) -> str:
    """The SQL dialect of a report's cursor: "duckdb" (a ledger file) or "postgresql" (the shared
    store's `store.pg_read.ReadCursor`). Reports keep one query each and ask this only where the
    two differ."""
    return getattr(cur, "dialect", "duckdb")


def time_bucket(cur: Any, col: str, secs: int) -> str:
    """SQL grouping `col` into `secs`-wide buckets aligned on the UTC epoch; `bucket_epoch` turns
    the grouped value into the bucket start in whole epoch seconds. DuckDB computes the epoch
    directly; PostgreSQL groups by `date_bin` (its epoch arithmetic is NUMERIC, ~3x slower per row)
    and converts once per bucket."""
    if dialect(cur) == "postgresql":
        return f"date_bin(INTERVAL '{secs} seconds', {col}, TIMESTAMPTZ '1970-01-01 00:00:00+00')"
    return f"(epoch_us({col}) // {secs * 1_000_000}) * {secs}"


def bucket_epoch(cur: Any, col: str) -> str:
    """SQL for the epoch seconds of a `time_bucket` value."""
    if dialect(cur) == "postgresql":
        return f"extract(epoch FROM {col})::BIGINT"
    return col


FETCH_ROWS = 500  # rows converted to Python per step (see dicts)


def dicts(res: duckdb.DuckDBPyConnection, convert: Callable[[Any], Any] | None = None) -> list[dict[str, Any]]:
    """The rows of an executed query as dicts, each value passed through `convert` if given.

    Fetched FETCH_ROWS at a time with `time.sleep(0)` between steps: converting rows holds the
    GIL, and in the gateway the proxy's event loop then gets it back at once rather than after
    Python's 5 ms switch interval (a dashboard query never stalls traffic for a whole result).
    """
    names = [d[0] for d in res.description]
    out: list[dict[str, Any]] = []
    while batch := res.fetchmany(FETCH_ROWS):
        if convert is None:
            out.extend(dict(zip(names, row)) for row in batch)
        else:
            out.extend({n: convert(v) for n, v in zip(names, row)} for row in batch)
        if len(batch) < FETCH_ROWS:
            break
        time.sleep(0)
    return out


def jsonable(value: Any) -> Any:
    """Decimal -> float, datetime -> ISO 8601 UTC with Z; anything else unchanged."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def rows(cur: duckdb.DuckDBPyConnection, query: str, params: list[Any]) -> list[dict[str, Any]]:
    """Run `query` and return its rows as JSON-able dicts."""
    return dicts(cur.execute(query, params), jsonable)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def many_rows(cur: duckdb.DuckDBPyConnection, query: str, params: list[Any]) -> list[dict[str, Any]]:
    """`rows` for results of thousands of rows (spend per user, subscriptions per plan and user):
    the same dicts, built ~2x faster. DuckDB's own conversion of DECIMAL to Python `Decimal`, of
    HUGEINT, and of TIMESTAMPTZ to zone-aware `datetime` costs more than the query: here the query
    is wrapped so DECIMAL columns arrive as their exact text (then `float`, correctly rounded like
    `float(Decimal)`), TIMESTAMPTZ as epoch microseconds (then the same ISO 8601 ...Z text
    `jsonable` gives) and HUGEINT as BIGINT (with a text twin, NULL unless the value does not fit).
    One DESCRIBE finds the column types, once per query text in a process (a DuckDB statement's
    planning is ~2-4 ms; the dashboard asks the same queries every poll); small results use `rows`."""
    if dialect(cur) == "postgresql":  # DESCRIBE and the casts below are DuckDB's; psycopg's own conversion
        return rows(cur, query, params)
    key = (query, tuple(type(p) for p in params))
    cached = _DESCRIBED.get(key)
    try:
        wrapped, plan = cached or _describe(cur, key, params)
        res = cur.execute(wrapped, params)
    except duckdb.Error:
        if cached is None:
            raise
        # another database with another schema in this process (a test, a CLI reading two files)
        wrapped, plan = _describe(cur, key, params)
        res = cur.execute(wrapped, params)
    out: list[dict[str, Any]] = []
    while batch := res.fetchmany(FETCH_ROWS):  # in steps, yielding the GIL between them (see dicts)
        for row in batch:
            d: dict[str, Any] = {}
            for name, kind, i in plan:
                v = row[i]
                if kind == 0 or v is None and kind != 3:
                    d[name] = jsonable(v) if kind == 0 else v
                elif kind == 1:
                    d[name] = float(v)  # correctly rounded, as float(Decimal(v)) is
                elif kind == 2:
                    d[name] = (_EPOCH + timedelta(microseconds=v)).isoformat().replace("+00:00", "Z")
                else:
                    big = row[i + 1]
                    d[name] = int(big) if big is not None else v
            out.append(d)
        if len(batch) < FETCH_ROWS:
            break
        time.sleep(0)
    return out


_KIND = {"DECIMAL": 1, "TIMESTAMP WITH TIME ZONE": 2, "HUGEINT": 3}  # many_rows: how a column converts
# (query text, parameter types) -> (the wrapping SELECT, (name, kind, index of its first column) per
# column). A query's column types follow from its text, its parameters' types and the schema, which
# a gateway never changes once migrated; a plan that no longer binds is described again.
_DESCRIBED: dict[tuple[str, tuple[type, ...]], tuple[str, list[tuple[str, int, int]]]] = {}
_DESCRIBED_MAX = 256  # distinct query texts kept (a report builds a handful; filters add variants)


def _describe(cur: duckdb.DuckDBPyConnection, key: tuple[str, tuple[type, ...]], params: list[Any]
              ) -> tuple[str, list[tuple[str, int, int]]]:
    query = key[0]
    described = cur.execute(f"DESCRIBE {query}", params).fetchall()  # (name, type, ...)
    exprs: list[str] = []
    plan: list[tuple[str, int, int]] = []
    for name, typ, *_ in described:
        col = '"' + name.replace('"', '""') + '"'
        plan.append((name, _KIND.get(typ.split("(")[0], 0), len(exprs)))
        if typ.startswith("DECIMAL"):
            exprs.append(f"CAST({col} AS VARCHAR)")
        elif typ == "TIMESTAMP WITH TIME ZONE":
            exprs.append(f"epoch_us({col})")
        elif typ == "HUGEINT":
            exprs += [f"TRY_CAST({col} AS BIGINT)",
                      f"CASE WHEN TRY_CAST({col} AS BIGINT) IS NULL THEN CAST({col} AS VARCHAR) END"]
        else:
            exprs.append(col)
    if len(_DESCRIBED) >= _DESCRIBED_MAX:
        _DESCRIBED.clear()
    _DESCRIBED[key] = out = (f"SELECT {', '.join(exprs)} FROM ({query}) AS q", plan)
    return out


def parse_time(text: str) -> datetime:
    """ISO 8601 date or time; naive values are taken as UTC. Raises ValueError."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)
