"""Read-side queries over the ledger, shared by the CLI and the admin API.

Every function takes a DuckDB connection or cursor and returns JSON-able dicts, so the same
answer comes out whether the CLI opened the file itself or asked a running gateway.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb

from spendgate.store import sql

GROUPS = {
    "user": '"user"',
    "key": "coalesce(key_fingerprint, '(no key)')",
    "model": "coalesce(model, '(unknown)')",
    "provider": "provider",
    "client": "client",
    "workspace": "coalesce(workspace, '(none)')",
    "outcome": "outcome",
}
WINDOWS = ("hour", "day", "week", "month")

LEDGER_FIELDS = (
    "ts", "request_id", "provider", "endpoint", "model", "user", "key_fingerprint", "client",
    "session_id", "stream", "status", "outcome", "estimated", "input_tokens", "cache_read_tokens",
    "cache_write_tokens", "cache_write_1h_tokens", "output_tokens", "reasoning_tokens",
    "web_search_requests", "cost_usd", "charged_usd", "price_source", "latency_ms", "ttft_ms",
    "identity_source", "workspace", "note", "input_audio_tokens", "input_image_tokens", "input_video_tokens",
    "cache_read_audio_tokens", "output_audio_tokens", "output_image_tokens", "output_video_tokens", "modifiers",
)  # fmt: skip


def jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def _rows(cur: duckdb.DuckDBPyConnection, query: str, params: list[Any]) -> list[dict[str, Any]]:
    return sql.dicts(cur.execute(query, params), jsonable)


def window_start(window: str, now: datetime | None = None) -> datetime:
    """Start of the current calendar window in UTC (weeks start on Monday)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    match window:
        case "hour":
            return now.replace(minute=0, second=0, microsecond=0)
        case "day":
            return day
        case "week":
            return day - timedelta(days=day.weekday())
        case "month":
            return day.replace(day=1)
    raise ValueError(f"unknown window {window!r} (one of {', '.join(WINDOWS)})")


def parse_time(text: str) -> datetime:
    """ISO 8601 date or time; naive values are taken as UTC."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def ledger(cur: duckdb.DuckDBPyConnection, limit: int = 50, user: str | None = None) -> list[dict[str, Any]]:
    where, params = sql.where(('"user" = ?', user))
    cols = ", ".join(f'"{c}"' for c in LEDGER_FIELDS)
    return _rows(cur, f"SELECT {cols} FROM requests {where} ORDER BY ts DESC, request_id LIMIT ?", [*params, limit])


def spend(
    cur: duckdb.DuckDBPyConnection,
    by: str = "user",
    window: str | None = None,
    since: datetime | None = None,
    user: str | None = None,
) -> list[dict[str, Any]]:
    if by not in GROUPS:
        raise ValueError(f"unknown grouping {by!r} (one of {', '.join(GROUPS)})")
    start = since or (window_start(window) if window else None)
    where, params = sql.where(("ts >= ?", start), ('"user" = ?', user))
    query = f"""
        SELECT {GROUPS[by]} AS "group", count(*) AS requests,
               sum(input_tokens) AS input_tokens, sum(cache_read_tokens) AS cache_read_tokens,
               sum(cache_write_tokens) AS cache_write_tokens, sum(output_tokens) AS output_tokens,
               coalesce(sum(cost_usd), 0) AS cost_usd,
               count(*) FILTER (WHERE outcome = 'unpriced') AS unpriced,
               count(*) FILTER (WHERE outcome = 'blocked') AS blocked
        FROM requests {where} GROUP BY 1 ORDER BY cost_usd DESC, "group"
    """
    rows = _rows(cur, query, params)
    for r in rows:
        for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens"):
            r[k] = int(r[k] or 0)
    return rows


def _opt_time(v: Any) -> datetime | None:
    return parse_time(v) if isinstance(v, str) and v else v or None


# name -> query(cursor, params), params as strings from a URL or values from the CLI. The admin
# API and the CLI both go through `run_query`, so a CLI answer is the same whether it read the
# file or asked a running gateway.
QUERIES: dict[str, Any] = {
    "ledger": lambda cur, p: ledger(cur, int(p.get("limit") or 50), user=p.get("user")),
    "spend": lambda cur, p: spend(
        cur, p.get("by") or "user", p.get("window") or None, _opt_time(p.get("since")), user=p.get("user")
    ),
}


def _dashboard_query(name: str) -> Any:
    """A query from spendgate.reports.dashboard, imported on first use (it builds on this module)."""
    def run(cur: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> Any:
        from spendgate.reports import dashboard

        return dashboard.QUERIES[name](cur, p)

    return run


QUERIES.update({name: _dashboard_query(name) for name in ("overview", "series", "blocks", "unpriced")})


def _price_request(cur: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> Any:
    """One row with its price detail and re-pricing history, for `spendgate explain`."""
    from spendgate.pricing import reprice

    return reprice.request_row(cur, str(p.get("request_id") or ""))


def _price_check(cur: duckdb.DuckDBPyConnection, p: dict[str, Any]) -> Any:
    """Unpriced models and fallback-charged rows, for `spendgate prices check`."""
    from spendgate.pricing import reprice

    return reprice.unpriced_report(cur, _opt_time(p.get("since")))


QUERIES.update({"price_request": _price_request, "price_check": _price_check})


def run_query(cur: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> Any:
    fn = QUERIES.get(name)
    if fn is None:
        raise KeyError(f"unknown query {name!r}")
    return fn(cur, params)
