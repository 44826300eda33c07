"""Small helpers every read-side query uses: WHERE clauses from optional filters, rows as JSON-able dicts, times."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb

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


def parse_time(text: str) -> datetime:
    """ISO 8601 date or time; naive values are taken as UTC. Raises ValueError."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)
