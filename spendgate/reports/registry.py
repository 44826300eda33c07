"""Named read-side queries: one table shared by the CLI and the admin API.

Both go through `run_query`, so a CLI answer is the same whether it read the ledger file itself
or asked the running gateway that holds it. Params are strings from a URL or values from the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spendgate.reports import dashboard, queries
from spendgate.reports.dashboard import opt_time
from spendgate.store.engine import duckdb


def _reprice() -> Any:
    """spendgate.pricing.reprice, imported on first use: it loads the price catalogue (genai_prices,
    about half a second), which no other query needs and every CLI start would otherwise pay."""
    from spendgate.pricing import reprice

    return reprice


Query = Callable[[duckdb.DuckDBPyConnection, dict[str, Any]], Any]

QUERIES: dict[str, Query] = {
    "ledger": lambda cur, p: queries.ledger(cur, queries.page_param(p.get("limit"), "limit", 50, 0, queries.LEDGER_MAX),
                                            user=p.get("user"), trace_url=p.get("trace_url")),
    "spend": lambda cur, p: queries.spend(
        cur, p.get("by") or "user", p.get("window") or None, opt_time(p.get("since")), user=p.get("user")
    ),
    # subscription usage per plan and user (notional USD): one page (top 50 by default) and the totals
    "subscriptions": lambda cur, p: queries.subscriptions_page(
        cur, opt_time(p.get("since")), opt_time(p.get("until")), user=p.get("user"),
        limit=queries.page_param(p.get("limit") or p.get("top"), "limit", queries.SUBSCRIPTIONS_TOP, 1,
                                 queries.SUBSCRIPTIONS_MAX),
        offset=queries.page_param(p.get("offset"), "offset", 0, 0, 10**9),
    ),
    **dashboard.QUERIES,  # overview, series, blocks, unpriced
    # one row with its price detail and re-pricing history, for `spendgate explain`
    "price_request": lambda cur, p: _reprice().request_row(cur, str(p.get("request_id") or "")),
    # a laptop reporting to a centre: its outbox (`spendgate outbox`)
    "outbox": lambda cur, p: queries.outbox(cur),
    # a centre: the laptops that called in, and the silent ones (`spendgate laptops`)
    "laptops": lambda cur, p: queries.laptops(cur, float(p.get("silent_hours") or queries.DEFAULT_SILENT_HOURS),
                                              str(p.get("silent") or "").lower() in ("1", "true", "yes")),
    # unpriced models and fallback-charged rows, for `spendgate prices check`
    "price_check": lambda cur, p: _reprice().unpriced_report(cur, opt_time(p.get("since"))),
}


def run_query(cur: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> Any:
    """Run the named query; raises KeyError for an unknown name, ValueError for bad params."""
    fn = QUERIES.get(name)
    if fn is None:
        raise KeyError(f"unknown query {name!r}")
    return fn(cur, params)
