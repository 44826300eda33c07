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
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from spendgate.pricing import cards
from spendgate.pricing.rates import HELD_SOURCE_PREFIX, REPORTED_SOURCE, Pricer, PriceResult
from spendgate.store import rollups, sql
from spendgate.store.engine import duckdb
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
    old_card: str | None = None  # rate card ids (spendgate.pricing.cards): the detail before and after
    new_card: str | None = None
    new_card_json: str | None = None

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
    variant = None if modifiers else row.get("variant") or _variant(row.get("price_detail"))  # rows before modifiers
    usage = _usage(row)
    if memo is None:
        return pricer.price(row["provider"], row["model"], usage, ts, variant, modifiers)
    key = (row["provider"], row["model"], ts.astimezone(UTC).date(), variant, tuple(sorted(modifiers.items())),
           tuple(int(row[f] or 0) for f in USAGE_FIELDS))
    found = memo.get(key)
    if found is None:
        found = memo[key] = pricer.price(row["provider"], row["model"], usage, ts, variant, modifiers)
    return found


_STORED = Decimal("1E-10")  # DECIMAL(20, 10): what a cost becomes when stored


def _stored(v: Decimal | None) -> Decimal | None:
    """A cost as the ledger stores it (compared with stored costs: no change from rounding alone)."""
    return None if v is None else v.quantize(_STORED, rounding=ROUND_HALF_UP)


def _money_of(card: dict[str, Any]) -> tuple:
    """What in a card decides the money (not its source labels): variant, rates, multipliers."""
    return (card["variant"], sorted((k, Decimal(p["base"]), [(int(a), Decimal(b)) for a, b in p["tiers"]])
                                    for k, p in card["rates"].items()),
            sorted((m["name"], m["value"], Decimal(m["factor"])) for m in card.get("multipliers") or ()))


_PROBE = Usage(input_tokens=1, output_tokens=1)  # prices to see the rates in force (any usage gives them all)

# Rows of an unchanged-rates group whose money is settled as plan() would leave it (cost, charge,
# outcome and notional follow from the cost alone): only rows outside it are priced one by one.
_SETTLED = """outcome <> 'unpriced' AND (
    (coalesce(billing_basis, 'api') <> 'subscription' AND cost_usd IS NOT NULL AND charged_usd = cost_usd)
    OR (billing_basis = 'subscription' AND cost_usd = 0 AND notional_usd IS NOT NULL
        AND (charged_usd = notional_usd OR (charged_usd = 0 AND notional_usd <> 0))))"""


def has_cards(cur: duckdb.DuckDBPyConnection) -> bool:
    """Whether the ledger has rate cards (migration 9); a ledger opened read-only may predate it."""
    return bool(cur.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'price_cards' "
                            "AND NOT temporary").fetchone()[0])


def unchanged_groups(
    cur: duckdb.DuckDBPyConnection, pricer: Pricer, where: str, params: list[Any]
) -> tuple[int, list[tuple[str, str, str | None, Any, str | None]]]:
    """(rows examined, (card, provider, model, UTC day, modifiers) groups whose rates are the same now).

    Rows are grouped in SQL by the rate card they were priced with and what picks the rates
    (provider, model, UTC day, modifiers); each group is priced once with a probe usage, and
    when the rates in force now equal the card's (same numbers; labels may differ), no row of
    the group can change cost: `compute()` is a function of rates and usage alone.
    """
    groups = cur.execute(f"""
        SELECT r.price_card, r.provider, r.model, CAST(timezone('UTC', r.ts) AS DATE) AS day, r.modifiers,
               any_value(c.card), count(*)
        FROM requests r LEFT JOIN price_cards c ON c.card_id = r.price_card
        WHERE {where} GROUP BY ALL""", params).fetchall()
    examined = sum(g[-1] for g in groups)
    same = []
    for card_id, provider, model, day, mods, card_json, _n in groups:
        if not card_id or not card_json or not model:
            continue
        card = json.loads(card_json)
        if card.get("reported"):
            continue  # skipped row by row (price_source)
        modifiers = _modifiers(mods)
        at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        try:
            probe = pricer.price(provider, model, _PROBE, at, None if modifiers else card["variant"], modifiers)
        except Exception:  # priced row by row, where an error is reported as a change
            continue
        now = cards.card_of(probe)
        if now is not None and _money_of(now) == _money_of(card):
            same.append((card_id, provider, model, day, mods))
    return examined, same


def plan(
    cur: duckdb.DuckDBPyConnection, pricer: Pricer, since: datetime, until: datetime | None = None
) -> tuple[int, list[RowChange]]:
    """(rows examined, rows whose cost, charge or outcome would change) with current prices.

    Groups whose rates did not change are settled in SQL (`unchanged_groups`); the other rows are
    priced with `Pricer.price` once per distinct (provider, model, day, variant, modifiers, usage).
    """
    cols = ["request_id", "ts", "provider", "model", "user", "key_fingerprint", "workspace", "outcome", "estimated",
            "cost_usd", "charged_usd", "price_source", "price_detail", "billing_basis", "plan", "notional_usd",
            "modifiers", "price_card", *USAGE_FIELDS]  # fmt: skip
    where = "r.ts >= ? AND list_contains(?, r.outcome)" + (" AND r.ts < ?" if until else "")
    params: list[Any] = [since, list(REPRICEABLE)] + ([until] if until else [])
    if not has_cards(cur):  # an old ledger read as it is: every row priced (per distinct shape)
        cols.remove("price_card")
        select = ", ".join(f'r."{c}"' for c in cols)
        res = cur.execute(f"SELECT {select}, NULL FROM requests r WHERE {where} ORDER BY r.ts", params).fetchall()
        return len(res), _changes(pricer, cols, res, reported=True)
    examined, same = unchanged_groups(cur, pricer, where, params)
    select = ", ".join(f'r."{c}"' for c in cols)
    keys = [list(k) for k in zip(*same)] if same else [[], [], [], [], []]
    res = cur.execute(f"""
        WITH k AS (SELECT unnest(?::VARCHAR[]) AS card, unnest(?::VARCHAR[]) AS provider,
                          unnest(?::VARCHAR[]) AS model, unnest(?::DATE[]) AS day, unnest(?::VARCHAR[]) AS mods)
        SELECT {select}, c.card FROM requests r
        LEFT JOIN k ON k.card = r.price_card AND k.provider = r.provider AND k.model = r.model
             AND k.day = CAST(timezone('UTC', r.ts) AS DATE) AND k.mods IS NOT DISTINCT FROM r.modifiers
        LEFT JOIN price_cards c ON c.card_id = r.price_card
        WHERE {where} AND NOT starts_with(coalesce(r.price_source, ''), '{REPORTED_SOURCE}')
          AND NOT starts_with(coalesce(r.price_source, ''), '{HELD_SOURCE_PREFIX}')
          AND (k.card IS NULL OR NOT ({_SETTLED.replace("outcome", "r.outcome")}))
        ORDER BY r.ts""", [*keys, *params]).fetchall()
    return examined, _changes(pricer, cols, res)


def _changes(pricer: Pricer, cols: list[str], res: list[tuple], reported: bool = False) -> list[RowChange]:
    """The rows of `res` (values in `cols` order, then the card JSON) whose money changes now."""
    changes = []
    memo: dict[tuple, PriceResult] = {}
    variants: dict[str, str] = {}
    for values in res:
        row = dict(zip(cols, values))
        if reported and (row["price_source"] or "").startswith(REPORTED_SOURCE):
            continue  # the provider said what it charged (OpenRouter usage.cost): prices do not change it
        if (row["price_source"] or "").startswith(HELD_SOURCE_PREFIX):
            continue  # a background response's held estimate, or its fetch less it: not its price alone
        card_json = values[-1]
        if row.get("price_card") and card_json:
            if row["price_card"] not in variants:
                variants[row["price_card"]] = json.loads(card_json).get("variant") or "standard"
            row["variant"] = variants[row["price_card"]]
        new = _new_row_price(pricer, row, memo)
        old_cost, old_charged = row["cost_usd"], row["charged_usd"]
        new_cost = _stored(new.cost)
        # charged_usd is what budgets counted: the cost when there is one, else the old charge
        # (the unpriced fallback rate), so a model that is still unknown keeps its fallback.
        new_charged = new_cost if new_cost is not None else old_charged
        sub = row["billing_basis"] == "subscription"
        old_notional, new_notional = row["notional_usd"], None
        if sub:  # covered by a seat: the invoice stays 0; the list-price equivalent moves
            new_notional, new_cost = _stored(new.cost), Decimal(0)
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
        new_card, new_card_json = cards.of_result(new)
        changes.append(RowChange(
            row["request_id"], row["ts"], row["user"], row["model"], row["key_fingerprint"], row["workspace"],
            old_cost, new_cost, old_charged, new_charged, row["outcome"], new_outcome, row["price_source"],
            new_source, row["price_detail"], None, row["billing_basis"] or "api", row["plan"], old_notional,
            new_notional, row.get("price_card"), new_card, new_card_json,
        ))  # fmt: skip
    return changes


def apply(cur: duckdb.DuckDBPyConnection, changes: list[RowChange], price_version: str) -> str:
    """Write the audit records, then the new costs, in one transaction. Returns the run id.

    The audit keeps the row's old card (its old detail is that card with the row's usage, which
    re-pricing never changes) and, for rows written before cards, the old stored detail verbatim.
    """
    run_id = uuid.uuid4().hex[:12]
    if not changes:
        return run_id
    now = datetime.now(UTC)
    cur.execute("BEGIN")
    try:
        new_cards = {c.new_card: c.new_card_json for c in changes if c.new_card and c.new_card_json}
        if new_cards:
            cur.executemany("INSERT INTO price_cards (card_id, card) VALUES (?, ?) ON CONFLICT DO NOTHING",
                            list(new_cards.items()))
        cur.executemany(
            "INSERT INTO price_audit (repriced_at, run_id, request_id, ts, \"user\", model, old_cost_usd, new_cost_usd, "
            "old_charged_usd, new_charged_usd, old_outcome, new_outcome, old_price_source, new_price_source, "
            "old_price_detail, price_version, old_notional_usd, new_notional_usd, old_price_card, new_price_card) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(now, run_id, c.request_id, c.ts, c.user, c.model, c.old_cost, c.new_cost, c.old_charged,
              c.new_charged, c.old_outcome, c.new_outcome, c.old_source, c.new_source, c.old_detail, price_version,
              c.old_notional, c.new_notional, c.old_card, c.new_card)
             for c in changes],
        )  # fmt: skip
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS _reprice (request_id VARCHAR, cost DECIMAL(20, 10), "
                    "charged DECIMAL(20, 10), outcome VARCHAR, source VARCHAR, card VARCHAR, "
                    "notional DECIMAL(20, 10))")  # fmt: skip
        cur.execute("DELETE FROM _reprice")
        cur.executemany("INSERT INTO _reprice VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(c.request_id, c.new_cost, c.new_charged, c.new_outcome, c.new_source, c.new_card,
                          c.new_notional) for c in changes])  # fmt: skip
        cur.execute(
            "UPDATE requests SET cost_usd = r.cost, charged_usd = r.charged, outcome = r.outcome, "
            "price_source = r.source, price_card = r.card, price_detail = NULL, notional_usd = r.notional "
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
    return answer(run_id, dry_run, pricer, since, until, examined, changes)


def answer(run_id: str | None, dry_run: bool, pricer: Pricer, since: datetime, until: datetime | None,
           examined: int, changes: list[RowChange]) -> dict[str, Any]:
    """The JSON a re-pricing answers (file or shared store): what was examined and changed, in USD."""
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
    card = cur.execute("SELECT card FROM price_cards WHERE card_id = ?", [row["price_card"]]).fetchone() \
        if row.get("price_card") else None
    if row.get("price_card") and card is None:
        raise ValueError(f"request {row['request_id']} points at rate card {row['price_card']}, which is missing "
                         "from price_cards: its detail cannot be recomputed")
    detail = cards.row_detail(row, card[0] if card else None)
    # the detail is recomputed from the rate card and the row's usage (slim rows), or was stored
    # on the row (written before cards): `price_detail_from` says which
    row["price_detail"] = json.dumps(detail) if detail is not None else None
    row["price_detail_from"] = (f"rate card {row['price_card']} with this row's usage (recomputed)" if card
                                else "stored on the row" if detail is not None else None)
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

    Read from each row's price detail: stored on rows written before rate cards, recomputed from
    the card once per distinct (card, modality usage) for the others.
    """
    found: list[tuple[str, str, dict[str, Any], int]] = []  # (provider, model, detail, rows)
    res = cur.execute(f"""
        SELECT provider, coalesce(model, '(unknown)'), price_detail FROM requests
        WHERE price_detail IS NOT NULL AND (price_detail LIKE '%"fallbacks": [{{%'
              OR price_detail LIKE '%"effect": "none known"%') {cond}""", params or [])
    for provider, model, raw in res.fetchall():
        try:
            found.append((provider, model, json.loads(raw), 1))
        except ValueError:
            continue
    modality = ("input_audio_tokens", "input_image_tokens", "input_video_tokens", "cache_read_audio_tokens",
                "output_audio_tokens", "output_image_tokens", "output_video_tokens")
    if not has_cards(cur):
        return _modifier_summary(found)
    cols = ", ".join(f"r.{c}" for c in USAGE_FIELDS)
    res = cur.execute(f"""
        WITH c AS (SELECT card_id, card, card LIKE '%"effect":"none known"%' AS unknown FROM price_cards)
        SELECT r.provider, coalesce(r.model, '(unknown)'), c.card, {cols}, count(*)
        FROM requests r JOIN c ON c.card_id = r.price_card
        WHERE (c.unknown OR {" OR ".join(f"r.{m} > 0" for m in modality)})
              {cond.replace("ts ", "r.ts ")} GROUP BY ALL""", params or [])
    for provider, model, card, *rest in res.fetchall():
        usage, n = Usage(*(int(v or 0) for v in rest[:-1])), rest[-1]
        try:
            found.append((provider, model, cards.detail(json.loads(card), usage, Decimal(0)), n))
        except (KeyError, ValueError, TypeError, ArithmeticError):
            continue
    return _modifier_summary(found)


def _modifier_summary(found: list[tuple[str, str, dict[str, Any], int]]) -> dict[str, Any]:
    kinds: dict[tuple[str, str, str, str], list[int]] = {}
    unknown: dict[tuple[str, str, str, str], int] = {}
    for provider, model, detail, n in found:
        for fb in detail.get("fallbacks") or []:
            acc = kinds.setdefault((provider, model, str(fb.get("kind")), str(fb.get("rate_used"))), [0, 0])
            acc[0] += n
            acc[1] += int(fb.get("tokens") or 0) * n
        for m in detail.get("modifiers") or []:
            if m.get("effect") == "none known":
                key = (provider, model, str(m.get("name")), str(m.get("value")))
                unknown[key] = unknown.get(key, 0) + n
    generic = [{"provider": p, "model": m, "kind": k, "rate_used": used, "requests": n, "tokens": t}
               for (p, m, k, used), (n, t) in sorted(kinds.items(), key=lambda kv: -kv[1][1])]
    modifiers = [{"provider": p, "model": m, "modifier": name, "value": v, "requests": n}
                 for (p, m, name, v), n in sorted(unknown.items(), key=lambda kv: -kv[1])]
    return {"generic_rate_tokens": generic, "unknown_modifiers": modifiers}
