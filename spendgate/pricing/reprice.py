"""Price audits on the ledger: re-pricing stored usage, explaining a row, finding unpriced spend.

Every row keeps its usage breakdown (the token columns) and how it was priced (`price_source`,
`price_detail`, including the variant), so a cost can be recomputed whenever prices are
corrected. Re-pricing never loses history: each changed row's previous cost goes into the
append-only `price_audit` table first, in the same transaction as the update.

These functions take a DuckDB cursor and a `Pricer`; they run in the CLI (file not held) or in
the gateway's admin API thread (file held by the gateway), never on the proxy's event loop.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import duckdb

from spendgate.pricing.rates import REPORTED_SOURCE, Pricer, PriceResult
from spendgate.store import rollups, sql
from spendgate.usage import USAGE_FIELDS, Usage

# Outcomes whose usage was (or may have been) billed; everything else is charged $0 by design
# (blocked, upstream_error, free) or has no usage to price (interrupted rows carry a reservation).
REPRICEABLE = ("ok", "estimated", "unpriced")


@dataclass(frozen=True, slots=True)
class RowChange:
    request_id: str
    ts: datetime
    user: str
    model: str | None
    key_fingerprint: str | None
    workspace: str | None
    old_cost: Decimal | None
    new_cost: Decimal | None
    old_charged: Decimal | None
    new_charged: Decimal | None
    old_outcome: str
    new_outcome: str
    old_source: str
    new_source: str
    old_detail: str | None
    new_detail: str | None
    basis: str = "api"
    plan: str | None = None
    old_notional: Decimal | None = None  # subscription rows: the list-price equivalent (cost stays 0)
    new_notional: Decimal | None = None

    @property
    def charged_delta(self) -> Decimal:
        return (self.new_charged or Decimal(0)) - (self.old_charged or Decimal(0))


def _usage(row: dict[str, Any]) -> Usage:
    return Usage(**{f: int(row[f] or 0) for f in USAGE_FIELDS})


def _variant(detail: str | None) -> str:
    """The variant (batch, priority...) a row was priced as, kept in its price detail."""
    if not detail:
        return "standard"
    try:
        return (json.loads(detail) or {}).get("variant") or "standard"
    except ValueError:
        return "standard"


def _modifiers(raw: str | None) -> dict[str, str]:
    try:
        found = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _new_row_price(pricer: Pricer, row: dict[str, Any], memo: dict[tuple, PriceResult] | None = None) -> PriceResult:
    """The row's price now. With `memo`, rows of one group (provider, model, UTC day, variant,
    modifiers, usage) are priced once: `Pricer.price` depends on the time only through the UTC
    day (dated rates), so the group's rows share one PriceResult."""
    ts = row["ts"] if row["ts"].tzinfo else row["ts"].replace(tzinfo=UTC)
    modifiers = _modifiers(row.get("modifiers"))
    variant = None if modifiers else _variant(row["price_detail"])  # rows from before modifiers were kept
    usage = _usage(row)
    if memo is None:
        return pricer.price(row["provider"], row["model"], usage, ts, variant, modifiers)
    key = (row["provider"], row["model"], ts.astimezone(UTC).date(), variant, tuple(sorted(modifiers.items())),
           tuple(int(row[f] or 0) for f in USAGE_FIELDS))
    found = memo.get(key)
    if found is None:
        found = memo[key] = pricer.price(row["provider"], row["model"], usage, ts, variant, modifiers)
    return found


def plan(
    cur: duckdb.DuckDBPyConnection, pricer: Pricer, since: datetime, until: datetime | None = None
) -> tuple[int, list[RowChange]]:
    """(rows examined, rows whose cost, charge or outcome would change) with current prices."""
    cols = ["request_id", "ts", "provider", "model", "user", "key_fingerprint", "workspace", "outcome", "estimated",
            "cost_usd", "charged_usd", "price_source", "price_detail", "billing_basis", "plan", "notional_usd",
            "modifiers", *USAGE_FIELDS]  # fmt: skip
    where = "ts >= ? AND list_contains(?, outcome)" + (" AND ts < ?" if until else "")
    params: list[Any] = [since, list(REPRICEABLE)] + ([until] if until else [])
    select = ", ".join(f'"{c}"' for c in cols)
    res = cur.execute(f"SELECT {select} FROM requests WHERE {where} ORDER BY ts", params).fetchall()
    changes = []
    memo: dict[tuple, PriceResult] = {}
    for values in res:
        row = dict(zip(cols, values))
        if (row["price_source"] or "").startswith(REPORTED_SOURCE):
            continue  # the provider said what it charged (OpenRouter usage.cost): prices do not change it
        new = _new_row_price(pricer, row, memo)
        old_cost, old_charged = row["cost_usd"], row["charged_usd"]
        new_cost = new.cost
        # charged_usd is what budgets counted: the cost when there is one, else the old charge
        # (the unpriced fallback rate), so a model that is still unknown keeps its fallback.
        new_charged = new_cost if new_cost is not None else old_charged
        sub = row["billing_basis"] == "subscription"
        old_notional, new_notional = row["notional_usd"], None
        if sub:  # covered by a seat: the invoice stays 0; the list-price equivalent moves
            new_notional, new_cost = new.cost, Decimal(0)
            if old_charged == 0 and old_notional:  # not counted (subscription_usage: ignore): stays so
                new_charged = old_charged
        new_outcome = row["outcome"]
        if row["outcome"] == "unpriced" and new_cost is not None:
            new_outcome = "estimated" if row["estimated"] else "ok"
        elif row["outcome"] != "unpriced" and new.cost is None:
            new_outcome = "unpriced"
        if sub and row["outcome"] == "unpriced" and new.cost is not None:
            new_outcome = "estimated" if row["estimated"] else "ok"
        new_source = new.source
        if (new_cost, new_charged, new_outcome, new_notional) == (old_cost, old_charged, row["outcome"], old_notional
                                                                  if sub else None):
            continue  # same money: the stored detail still explains it, no audit noise
        changes.append(RowChange(
            row["request_id"], row["ts"], row["user"], row["model"], row["key_fingerprint"], row["workspace"],
            old_cost, new_cost, old_charged, new_charged, row["outcome"], new_outcome, row["price_source"],
            new_source, row["price_detail"], json.dumps(new.detail()) if new.lines else None,
            row["billing_basis"] or "api", row["plan"], old_notional, new_notional,
        ))  # fmt: skip
    return len(res), changes


def apply(cur: duckdb.DuckDBPyConnection, changes: list[RowChange], price_version: str) -> str:
    """Write the audit records, then the new costs, in one transaction. Returns the run id."""
    run_id = uuid.uuid4().hex[:12]
    if not changes:
        return run_id
    now = datetime.now(UTC)
    cur.execute("BEGIN")
    try:
        cur.executemany(
            "INSERT INTO price_audit (repriced_at, run_id, request_id, ts, \"user\", model, old_cost_usd, new_cost_usd, "
            "old_charged_usd, new_charged_usd, old_outcome, new_outcome, old_price_source, new_price_source, "
            "old_price_detail, price_version, old_notional_usd, new_notional_usd) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(now, run_id, c.request_id, c.ts, c.user, c.model, c.old_cost, c.new_cost, c.old_charged,
              c.new_charged, c.old_outcome, c.new_outcome, c.old_source, c.new_source, c.old_detail, price_version,
              c.old_notional, c.new_notional)
             for c in changes],
        )  # fmt: skip
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS _reprice (request_id VARCHAR, cost DECIMAL(20, 10), "
                    "charged DECIMAL(20, 10), outcome VARCHAR, source VARCHAR, detail VARCHAR, "
                    "notional DECIMAL(20, 10))")  # fmt: skip
        cur.execute("DELETE FROM _reprice")
        cur.executemany("INSERT INTO _reprice VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(c.request_id, c.new_cost, c.new_charged, c.new_outcome, c.new_source, c.new_detail,
                          c.new_notional) for c in changes])  # fmt: skip
        cur.execute(
            "UPDATE requests SET cost_usd = r.cost, charged_usd = r.charged, outcome = r.outcome, "
            "price_source = r.source, price_detail = r.detail, notional_usd = r.notional "
            "FROM _reprice r WHERE requests.request_id = r.request_id"
        )
        # the rollups of the days these rows are in, recomputed in the same transaction (exact)
        rollups.rebuild(cur, min(c.ts for c in changes), max(c.ts for c in changes) + timedelta(microseconds=1))
        cur.execute("DELETE FROM _reprice")
        cur.execute("COMMIT")
    except Exception:
        cur.execute("ROLLBACK")
        raise
    return run_id


def summary(changes: Iterable[RowChange]) -> list[dict[str, Any]]:
    """The change per user and model, biggest first."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for c in changes:
        g = groups.setdefault((c.user, c.model or "(unknown)"), {
            "user": c.user, "model": c.model or "(unknown)", "requests": 0,
            "old_usd": Decimal(0), "new_usd": Decimal(0), "delta_usd": Decimal(0),
        })  # fmt: skip
        g["requests"] += 1
        g["old_usd"] += c.old_charged or Decimal(0)
        g["new_usd"] += c.new_charged or Decimal(0)
        g["delta_usd"] += c.charged_delta
    rows = sorted(groups.values(), key=lambda g: (-abs(g["delta_usd"]), g["user"], g["model"]))
    return [{**g, **{k: float(g[k]) for k in ("old_usd", "new_usd", "delta_usd")}} for g in rows]


def run(
    cur: duckdb.DuckDBPyConnection,
    pricer: Pricer,
    since: datetime,
    until: datetime | None = None,
    *,
    dry_run: bool = True,
    on_applied: Callable[[list[RowChange]], None] | None = None,
) -> dict[str, Any]:
    """Plan, and unless `dry_run` apply, a re-pricing; the JSON answer both CLI paths print."""
    examined, changes = plan(cur, pricer, since, until)
    run_id = None
    if not dry_run and changes:
        run_id = apply(cur, changes, pricer.version)
        if on_applied:
            on_applied(changes)
    return {
        "run_id": run_id,
        "dry_run": dry_run,
        "price_version": pricer.version,
        "since": since.isoformat(),
        "until": until.isoformat() if until else None,
        "examined": examined,
        "changed": len(changes),
        "delta_usd": float(sum((c.charged_delta for c in changes), Decimal(0))),
        "by_user_model": summary(changes),
    }


# --- read side: explain and check -----------------------------------------------------------


def request_row(cur: duckdb.DuckDBPyConnection, request_id: str) -> dict[str, Any] | None:
    """One ledger row with its price detail and its re-pricing history (a unique id prefix works)."""
    if not request_id:
        raise ValueError("request_id is required")
    res = cur.execute(
        "SELECT * FROM requests WHERE request_id = ? OR starts_with(request_id, ?) ORDER BY request_id = ? DESC LIMIT 2",
        [request_id, request_id, request_id],
    )
    rows = sql.dicts(res, sql.jsonable)
    if not rows:
        return None
    if len(rows) > 1 and rows[0]["request_id"] != request_id:
        raise ValueError(f"{request_id!r} matches several requests; give more of the id")
    row = rows[0]
    hist = cur.execute(
        "SELECT repriced_at, run_id, old_cost_usd, new_cost_usd, old_charged_usd, new_charged_usd, old_price_source, "
        "new_price_source, price_version FROM price_audit WHERE request_id = ? ORDER BY repriced_at",
        [row["request_id"]],
    )
    row["reprice_history"] = sql.dicts(hist, sql.jsonable)
    return row


def unpriced_report(cur: duckdb.DuckDBPyConnection, since: datetime | None = None) -> dict[str, Any]:
    """Models seen in traffic without a price (requests, tokens, what the fallback rate charged to
    budgets in USD), and rows whose budget charge came from a fallback rate."""
    cond, params = ("AND ts >= ?", [since]) if since else ("", [])
    missing = sql.rows(cur, f"""
        SELECT provider, coalesce(model, '(unknown)') AS model, count(*) AS requests,
               min(ts) AS first_seen, max(ts) AS last_seen,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               coalesce(sum(charged_usd), 0) AS fallback_charged_usd
        FROM requests WHERE outcome = 'unpriced' {cond} GROUP BY ALL ORDER BY requests DESC, model""", params)
    fallback = sql.rows(cur, f"""
        SELECT provider, coalesce(model, '(unknown)') AS model, outcome, count(*) AS requests,
               sum(charged_usd) AS charged_usd
        FROM requests WHERE cost_usd IS NULL AND charged_usd IS NOT NULL {cond}
        GROUP BY ALL ORDER BY charged_usd DESC, model""", params)  # fmt: skip
    for r in missing:
        r["input_tokens"], r["output_tokens"] = int(r["input_tokens"] or 0), int(r["output_tokens"] or 0)
    return {"unpriced_models": missing, "fallback_charged": fallback, **modifier_report(cur, cond, params)}


def modifier_report(cur: duckdb.DuckDBPyConnection, cond: str = "", params: list | None = None) -> dict[str, Any]:
    """Tokens priced at a generic rate because their kind had none of its own (e.g. output image
    tokens of a model without an output_image rate), and serving modifiers with no known effect.

    Read from each row's price detail, where the pricer recorded them.
    """
    res = cur.execute(f"""
        SELECT provider, coalesce(model, '(unknown)'), price_detail FROM requests
        WHERE price_detail IS NOT NULL AND (price_detail LIKE '%"fallbacks": [{{%'
              OR price_detail LIKE '%"effect": "none known"%') {cond}""", params or [])
    kinds: dict[tuple[str, str, str, str], list[int]] = {}
    unknown: dict[tuple[str, str, str, str], int] = {}
    for provider, model, raw in res.fetchall():
        try:
            detail = json.loads(raw)
        except ValueError:
            continue
        for fb in detail.get("fallbacks") or []:
            acc = kinds.setdefault((provider, model, str(fb.get("kind")), str(fb.get("rate_used"))), [0, 0])
            acc[0] += 1
            acc[1] += int(fb.get("tokens") or 0)
        for m in detail.get("modifiers") or []:
            if m.get("effect") == "none known":
                key = (provider, model, str(m.get("name")), str(m.get("value")))
                unknown[key] = unknown.get(key, 0) + 1
    generic = [{"provider": p, "model": m, "kind": k, "rate_used": used, "requests": n, "tokens": t}
               for (p, m, k, used), (n, t) in sorted(kinds.items(), key=lambda kv: -kv[1][1])]
    modifiers = [{"provider": p, "model": m, "modifier": name, "value": v, "requests": n}
                 for (p, m, name, v), n in sorted(unknown.items(), key=lambda kv: -kv[1])]
    return {"generic_rate_tokens": generic, "unknown_modifiers": modifiers}
