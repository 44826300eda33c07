"""Two small helpers every read-side query uses: a WHERE clause from optional filters, and rows as dicts."""

from __future__ import annotations

from collections.abc import Callable
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
