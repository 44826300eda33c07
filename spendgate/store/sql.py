"""Small helpers every read-side query uses: WHERE clauses from optional filters, rows as JSON-able dicts, times."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
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


def dicts(res: duckdb.DuckDBPyConnection, convert: Callable[[Any], Any] | None = None) -> list[dict[str, Any]]:
    """The rows of an executed query as dicts, each value passed through `convert` if given."""
    names = [d[0] for d in res.description]
    if convert is None:
        return [dict(zip(names, row)) for row in res.fetchall()]
    return [{n: convert(v) for n, v in zip(names, row)} for row in res.fetchall()]


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
