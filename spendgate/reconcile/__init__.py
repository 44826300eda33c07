"""Account for spend that never passes the gateway: provider billing, seat plans, opaque clients.

`formats` reads the providers' billing reports, `fetch` gets them from the admin APIs, `store`
upserts them into the ledger file, `report` compares metered with billed. `queries` below are the
read side shared by the CLI (file open locally) and the gateway's admin API (file held by it):
the same function answers both ways, with the policy that applies.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from spendgate.metering import opaque
from spendgate.reconcile import store
from spendgate.reconcile.report import IdMap, parse_day, reconcile, subscription_usage
from spendgate.store import sql
from spendgate.store.engine import duckdb

if TYPE_CHECKING:  # the policy model (and plans, which need it) load only where a query reads them
    from spendgate.policy.model import Policy


def _since_day(params: dict[str, Any]) -> date | None:
    return parse_day(params.get("since") or None)


def report_query(cur: duckdb.DuckDBPyConnection, params: dict[str, Any], policy: Policy | None,
                 subscriptions: bool = True) -> dict[str, Any]:
    return reconcile(
        cur, since=_since_day(params), until=parse_day(params.get("until") or None), by=params.get("by") or "day",
        ids=IdMap.from_policy(policy.raw if policy else None),
        tolerance_pct=Decimal(str(params.get("tolerance") or 2)), min_usd=Decimal(str(params.get("min_usd") or "0.01")),
        subscriptions=subscriptions,
    )  # fmt: skip


def plan_period(params: dict[str, Any], today: date | None = None) -> tuple[date, date]:
    """[first, last] days for plan proration: --since (default: this month's first day) to today."""
    today = today or datetime.now(UTC).date()
    first = _since_day(params) or today.replace(day=1)
    last = parse_day(params.get("until") or None) or today
    return first, last


def plans_query(cur: duckdb.DuckDBPyConnection, params: dict[str, Any], policy: Policy | None) -> dict[str, Any]:
    if policy is None:
        return {"first": None, "last": None, "rows": []}
    first, last = plan_period(params)
    by = params.get("by") or "user"
    from spendgate.budgets import plans

    rows = plans.plan_spend(policy, first, last, by=by)
    if rows and cur is not None and by in ("user", "plan"):  # what each seat was used for, at list price
        usage: dict[tuple[str, str | None], list[dict[str, Any]]] = {}  # (plan, user or None) -> rows
        for u in subscription_usage(cur, first, last):
            usage.setdefault((u["plan"], None if by == "plan" else u["user"]), []).append(u)
        for r in rows:
            mine = usage.get((r["plan"], None if by == "plan" else r["group"]), [])
            r["usage_requests"] = sum(u["requests"] for u in mine)
            r["usage_notional_usd"] = round(sum(u["notional_usd"] for u in mine), 6)
    return {"first": first.isoformat(), "last": last.isoformat(), "rows": rows}


def opaque_query(cur: duckdb.DuckDBPyConnection, params: dict[str, Any], policy: Policy | None) -> list[dict]:
    if sql.dialect(cur) == "postgresql":
        return []  # opaque connections stay in each replica's file (the store has no such table)
    since = params.get("since") or None
    start = datetime.combine(parse_day(since), datetime.min.time(), UTC) if since else None
    return opaque.summary(cur, by=params.get("by") or "user", since=start, user=params.get("user") or None)


def spend_extras(cur: duckdb.DuckDBPyConnection, params: dict[str, Any], policy: Policy | None) -> dict[str, Any]:
    """What `spendgate spend` shows beside metered spend: plans, opaque clients, billed vs metered."""
    by = params.get("by") or "user"
    out: dict[str, Any] = {"plans": plans_query(cur, {**params, "by": by if by in ("user", "workspace") else "plan"},
                                                policy)}  # fmt: skip
    out["opaque"] = opaque_query(cur, {**params, "by": by}, policy) if by in opaque.GROUPS else []
    out["reconciliation"] = report_query(cur, {"since": params.get("since")}, policy, subscriptions=False)["totals"]
    return out


QUERIES = {
    "reconcile/report": report_query,
    "reconcile/plans": plans_query,
    "reconcile/opaque": opaque_query,
    "reconcile/spend_extras": spend_extras,
}


def run(cur: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any], policy: Policy | None) -> Any:
    return QUERIES[name](cur, params, policy)


def _posted_lines(params: dict[str, Any]) -> list[dict[str, Any]]:
    lines = params.get("lines")
    if not isinstance(lines, list):
        raise ValueError("body must be {\"lines\": [...]} as sent by `spendgate reconcile import`")
    return lines


def import_lines(cur: duckdb.DuckDBPyConnection, params: dict[str, Any]) -> dict[str, int]:
    """The admin API's import into the gateway's ledger file: {new, updated, unchanged, lines}."""
    return store.import_json_lines(cur, _posted_lines(params))


def import_lines_store(shared: Any, params: dict[str, Any]) -> dict[str, int]:
    """The same into a shared PostgreSQL store's `billing_lines` (a replica's admin API)."""
    return store.upsert_store(shared, [store.line_from_json(d) for d in _posted_lines(params)])


__all__ = ["QUERIES", "import_lines", "import_lines_store", "run"]
