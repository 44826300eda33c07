"""Named read-side queries: one table shared by the CLI and the admin API.

Both go through `run_query`, so a CLI answer is the same whether it read the ledger file itself
or asked the running gateway that holds it. Params are strings from a URL or values from the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb

from spendgate.pricing import reprice
from spendgate.reports import dashboard, queries
from spendgate.reports.dashboard import opt_time

Query = Callable[[duckdb.DuckDBPyConnection, dict[str, Any]], Any]

QUERIES: dict[str, Query] = {
    "ledger": lambda cur, p: queries.ledger(cur, int(p.get("limit") or 50), user=p.get("user")),
    "spend": lambda cur, p: queries.spend(
        cur, p.get("by") or "user", p.get("window") or None, opt_time(p.get("since")), user=p.get("user")
    ),
    **dashboard.QUERIES,  # overview, series, blocks, unpriced
    # one row with its price detail and re-pricing history, for `spendgate explain`
    "price_request": lambda cur, p: reprice.request_row(cur, str(p.get("request_id") or "")),
    # unpriced models and fallback-charged rows, for `spendgate prices check`
    "price_check": lambda cur, p: reprice.unpriced_report(cur, opt_time(p.get("since"))),
}


def run_query(cur: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> Any:
    """Run the named query; raises KeyError for an unknown name, ValueError for bad params."""
    fn = QUERIES.get(name)
    if fn is None:
        raise KeyError(f"unknown query {name!r}")
    return fn(cur, params)
