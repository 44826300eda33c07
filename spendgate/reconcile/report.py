"""Metered vs billed: the gateway's ledger next to what the providers say they charged.

For each provider and UTC day with billing data, one billing source is used (the API cost report,
else a console cost export, else a usage report priced by us), so overlapping imports never count
twice. A positive delta (billed > metered) means traffic reached the provider without passing the
gateway; a negative one means our prices are off (`spendgate prices check`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from spendgate.reconcile.formats import model_key
from spendgate.store import rollups, sql
from spendgate.store.engine import duckdb

BY = ("day", "model", "key", "workspace")
# lower is preferred: the provider's own dollars first, our pricing of its token counts last
SOURCE_RANK = {
    "anthropic_cost_report": 0, "openai_costs": 0,
    "anthropic_cost_csv": 1, "openai_cost_csv": 1,
    "anthropic_usage_report": 2, "openai_usage_completions": 2,
}  # fmt: skip
ZERO = Decimal(0)
NOTES = {
    "ok": "within tolerance",
    "bypass": "billed more than metered: traffic is bypassing the gateway (or requests went unpriced)",
    "pricing": "metered more than billed: our prices look off; run `spendgate prices check`",
    "unbilled": "no billing imported for this provider and day",
    "unmapped": "provider id not mapped to a key/workspace in the policy",
    "unpriced": "usage report for a model we have no price for",
}


@dataclass(frozen=True)
class IdMap:
    """Provider ids (apikey_..., wrkspc_..., proj_...) -> our key fingerprints and workspace names."""

    keys: dict[str, str] = field(default_factory=dict)
    workspaces: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_policy(cls, raw: dict[str, Any] | None) -> IdMap:
        raw = raw or {}
        keys = {k["provider_key_id"]: fp for fp, k in (raw.get("keys") or {}).items() if k.get("provider_key_id")}
        ws = {
            pid: name
            for name, w in (raw.get("workspaces") or {}).items()
            for pid in (w.get("provider_ids") or [])
        }
        return cls(keys, ws)


def _billing(cur: duckdb.DuckDBPyConnection, since: date | None, until: date | None) -> list[dict[str, Any]]:
    where, params = sql.where(("day >= ?", since), ("day <= ?", until))
    res = cur.execute(
        f"""SELECT provider, source, day, model, workspace, api_key, sum(amount_usd) AS amount,
                   count(*) FILTER (WHERE amount_usd IS NULL) AS unpriced, sum(requests) AS requests
            FROM billing_lines {where} GROUP BY 1, 2, 3, 4, 5, 6""",  # positional: PostgreSQL has no GROUP BY ALL
        params,
    )
    return sql.dicts(res)


# per grouping, the columns the report keeps apart; the rest are summed over in SQL (NULL here)
_METERED_DIMS = {"day": (), "model": ("model",), "key": ("key_fingerprint",), "workspace": ("workspace",)}


def _metered(cur: duckdb.DuckDBPyConnection, since: date | None, until: date | None,
             by: str | None = None) -> list[dict[str, Any]]:
    """API rows only: subscription traffic (covered by seats) is on no provider's per-token bill.

    Grouped per (provider, UTC day) and the `by` grouping's own column only: the report sums
    these groups anyway, so grouping finer (every model x key x workspace) only made Python sum
    hundreds of thousands of rows over a year. None keeps every column apart.
    """
    keep = ("model", "key_fingerprint", "workspace") if by is None else _METERED_DIMS[by]
    cols = ", ".join(c if c in keep else f"NULL AS {c}" for c in ("model", "key_fingerprint", "workspace"))
    src, params = rollups.source(cur, *sql.day_bounds(since, until), by_day=True,  # whole UTC days: no raw edge
                                 dims=("provider", *keep, "billing_basis", "outcome"))
    res = cur.execute(
        f"""SELECT provider, day, {cols},
                   coalesce(sum(cost_usd), 0) AS amount, sum(requests) AS requests,
                   coalesce(sum(cost_null) FILTER (WHERE outcome NOT IN ('blocked')), 0) AS unpriced
            FROM {src} r WHERE billing_basis = 'api' GROUP BY {", ".join(("provider", "day", *keep))}""",
        params,
    )
    return sql.dicts(res)


def _choose_sources(billing: list[dict[str, Any]], dim: str | None) -> dict[tuple[str, date], str]:
    """Per (provider, day): the best source, preferring one that carries the grouping dimension."""
    present: dict[tuple[str, date], set[str]] = defaultdict(set)
    with_dim: dict[tuple[str, date], set[str]] = defaultdict(set)
    for b in billing:
        k = (b["provider"], b["day"])
        present[k].add(b["source"])
        if dim and b.get(dim):
            with_dim[k].add(b["source"])
    rank = lambda s: (SOURCE_RANK.get(s, 9), s)  # noqa: E731
    return {k: min(with_dim.get(k) or srcs, key=rank) for k, srcs in present.items()}


def _group(by: str, provider: str, day: date, model: str | None, key: str | None, ws: str | None) -> tuple:
    if by == "day":
        return (day.isoformat(), provider, "")
    if by == "model":
        return (day.isoformat(), provider, model_key(model))
    if by == "key":
        return ("", provider, key or "(no key)")
    return ("", provider, ws or "(none)")


def status(billed: Decimal | None, metered: Decimal, tolerance_pct: Decimal, min_usd: Decimal) -> str:
    """ok / bypass / pricing for one comparison."""
    if billed is None:
        return "unpriced"
    delta = billed - metered
    if abs(delta) <= max(min_usd, abs(billed) * tolerance_pct / 100):
        return "ok"
    return "bypass" if delta > 0 else "pricing"


def reconcile(
    cur: duckdb.DuckDBPyConnection,
    *,
    since: date | None = None,
    until: date | None = None,
    by: str = "day",
    ids: IdMap | None = None,
    tolerance_pct: Decimal = Decimal(2),
    min_usd: Decimal = Decimal("0.01"),
    subscriptions: bool = True,
) -> dict[str, Any]:
    """Rows of metered vs billed grouped by day/model/key/workspace, plus per-provider totals;
    `subscriptions=False` leaves out the per-plan-and-user usage (callers that want only totals)."""
    if by not in BY:
        raise ValueError(f"unknown grouping {by!r} (one of {', '.join(BY)})")
    ids = ids or IdMap()
    dim = {"key": "api_key", "workspace": "workspace"}.get(by)
    billing = _billing(cur, since, until)
    chosen = _choose_sources(billing, dim)
    acc: dict[tuple, dict[str, Any]] = {}

    def slot(g: tuple) -> dict[str, Any]:
        return acc.setdefault(g, {"metered": ZERO, "billed": ZERO, "billed_unpriced": 0, "metered_requests": 0,
                                  "metered_unpriced": 0, "billed_requests": None, "sources": set(),
                                  "covered": False, "mapped": True})  # fmt: skip

    for b in billing:
        if chosen[(b["provider"], b["day"])] != b["source"]:
            continue
        key = ids.keys.get(b["api_key"], b["api_key"]) if b["api_key"] else None
        ws = ids.workspaces.get(b["workspace"], b["workspace"]) if b["workspace"] else None
        s = slot(_group(by, b["provider"], b["day"], b["model"], key, ws))
        s["covered"] = True
        s["sources"].add(b["source"])
        s["billed"] += b["amount"] or ZERO
        s["billed_unpriced"] += b["unpriced"]
        if b["requests"] is not None:
            s["billed_requests"] = (s["billed_requests"] or 0) + int(b["requests"])
        if by == "key" and b["api_key"] and b["api_key"] not in ids.keys:
            s["mapped"] = False
        if by == "workspace" and b["workspace"] and b["workspace"] not in ids.workspaces:
            s["mapped"] = False
    covered_days = set(chosen)
    for m in _metered(cur, since, until, by):
        is_covered = (m["provider"], m["day"]) in covered_days
        if by in ("key", "workspace") and not is_covered:
            continue  # a period total must compare like with like: only days the provider reported
        workspaces = (m["workspace"] or "").split(",") if by == "workspace" else [None]
        for ws in [w for w in workspaces if w] or [None]:
            s = slot(_group(by, m["provider"], m["day"], m["model"], m["key_fingerprint"], ws))
            s["covered"] = s["covered"] or is_covered
            s["metered"] += Decimal(m["amount"])
            s["metered_requests"] += m["requests"]
            s["metered_unpriced"] += m["unpriced"]
            if by == "key" and m["key_fingerprint"] and m["key_fingerprint"] not in ids.keys.values():
                s["mapped"] = False
            if by == "workspace" and ws and ws not in ids.workspaces.values():
                s["mapped"] = False
    rows = [_row(g, s, by, tolerance_pct, min_usd) for g, s in acc.items()]
    rows.sort(key=lambda r: (r.get("day") or "", r["provider"], -abs(r["delta_usd"] or 0), r.get("group") or ""))
    return {"by": by, "since": since and since.isoformat(), "until": until and until.isoformat(),
            "rows": rows, "totals": _totals(rows, tolerance_pct, min_usd),
            "subscriptions": subscription_usage(cur, since, until) if subscriptions else []}  # fmt: skip


def subscription_usage(cur: duckdb.DuckDBPyConnection, since: date | None, until: date | None) -> list[dict[str, Any]]:
    """Subscription usage per plan and user over the same UTC days: not compared with any bill (the
    seat is what is billed), listed for plan limits and seat value."""
    src, params = rollups.source(cur, *sql.day_bounds(since, until),
                                 dims=("plan", '"user"', "provider", "billing_basis"))
    return sql.many_rows(  # a year: thousands of (plan, user, provider) rows
        cur,
        f"""SELECT coalesce(plan, '(no plan)') AS plan, "user", provider, sum(requests) AS requests,
                   sum(input_tokens)::BIGINT AS input_tokens, sum(output_tokens)::BIGINT AS output_tokens,
                   coalesce(sum(notional_usd), 0) AS notional_usd
            FROM {src} r WHERE billing_basis = 'subscription'
            GROUP BY 1, 2, 3 ORDER BY plan, notional_usd DESC, "user", provider""",
        params,
    )


def _pct(delta: Decimal, billed: Decimal) -> float | None:
    return float(round(delta / billed * 100, 2)) if billed else None


def _row(g: tuple, s: dict[str, Any], by: str, tol: Decimal, min_usd: Decimal) -> dict[str, Any]:
    day, provider, group = g
    billed = s["billed"] if s["covered"] else None
    if not s["covered"]:
        st = "unbilled"
    elif by in ("key", "workspace") and not s["mapped"]:
        st = "unmapped"
    elif s["billed_unpriced"] and not s["billed"]:
        st = "unpriced"
    else:
        st = status(billed, s["metered"], tol, min_usd)
    delta = (billed - s["metered"]) if billed is not None else None
    row: dict[str, Any] = {"provider": provider}
    if day:
        row["day"] = day
    if by != "day":
        row["group"] = group
    note = NOTES[st]
    if s["metered_unpriced"]:
        note += f"; {s['metered_unpriced']} metered requests had no price"
    row.update({
        "metered_usd": float(s["metered"]), "billed_usd": None if billed is None else float(billed),
        "delta_usd": None if delta is None else float(delta), "delta_pct": _pct(delta, billed) if billed else None,
        "metered_requests": s["metered_requests"], "billed_requests": s["billed_requests"],
        "basis": ",".join(sorted(s["sources"])) or None, "status": st, "note": note,
    })  # fmt: skip
    return row


def _totals(rows: list[dict[str, Any]], tol: Decimal, min_usd: Decimal) -> list[dict[str, Any]]:
    """Per provider over the days the provider reported (unbilled days left out)."""
    out = []
    for provider in sorted({r["provider"] for r in rows}):
        mine = [r for r in rows if r["provider"] == provider and r["status"] != "unbilled"]
        metered = sum((Decimal(str(r["metered_usd"])) for r in mine), ZERO)
        billed = sum((Decimal(str(r["billed_usd"] or 0)) for r in mine), ZERO)
        delta = billed - metered
        st = status(billed, metered, tol, min_usd) if mine else "unbilled"
        out.append({"provider": provider, "metered_usd": float(metered), "billed_usd": float(billed),
                    "delta_usd": float(delta), "delta_pct": _pct(delta, billed), "status": st,
                    "note": NOTES[st]})  # fmt: skip
    return out


def parse_day(text: str | None) -> date | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).date() if "T" in text else date.fromisoformat(text)
