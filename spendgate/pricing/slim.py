"""Convert a ledger written before slim rows: the price detail stored on each row becomes a rate
card id (spendgate.pricing.cards), one row at a time verified, then the file is compacted.

Migration 9 adds the `price_card` column and the `price_cards` table; rows written before it keep
their ~1.1 KB `price_detail`. `convert` moves them to cards without losing anything: for each row
it builds the card the pricing files give for the row's provider, model, day, variant and
modifiers, recomputes the detail from that card and the row's usage, and clears the stored detail
ONLY when the recomputation is identical to it (JSON-equal, every line, rate, source and note).
Rows that do not match (priced with other pricing files, or a pricing bug since fixed) keep their
stored detail verbatim, and are counted. Runs on the file directly (not while a gateway holds
it), a day of rows at a time so memory stays flat.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from spendgate.pricing import cards
from spendgate.pricing.rates import Pricer, PriceResult, reported
from spendgate.store.engine import duckdb
from spendgate.usage import USAGE_FIELDS, Usage

log = logging.getLogger(__name__)


@dataclass
class SlimReport:
    rows: int = 0  # rows that had a stored detail
    converted: int = 0  # now a card id, detail cleared
    kept: int = 0  # detail kept verbatim: the recomputation differed
    cards: int = 0  # distinct cards written
    kept_examples: list[str] = field(default_factory=list)  # request ids, a few

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "converted": self.converted, "kept": self.kept, "cards": self.cards,
                "kept_examples": self.kept_examples}


_COLS = ["request_id", "ts", "provider", "model", "modifiers", "billing_basis", "cost_usd", "notional_usd",
         "price_detail", *USAGE_FIELDS]


def _card_for(pricer: Pricer, row: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any] | None:
    """The card the pricing files give for this row, shaped like its stored detail (variant,
    modifiers, a provider-reported cost, side-by-side views); None when they do not price it."""
    ts = row["ts"] if row["ts"].tzinfo else row["ts"].replace(tzinfo=UTC)
    try:
        mods = json.loads(row["modifiers"]) if row["modifiers"] else {}
    except ValueError:
        mods = {}
    variant = None if mods else stored.get("variant") or "standard"
    price: PriceResult = pricer.price(row["provider"], row["model"], Usage(**{f: int(row[f] or 0) for f in USAGE_FIELDS}),
                                      ts, variant, mods or None)
    alternatives = dict(stored.get("alternatives") or {})
    listed = alternatives.pop("list_price", None)
    if listed is not None:  # the provider stated the cost; the list price sat alongside
        price = reported(price, Decimal(0), row["provider"], _reported_field(stored))
    if alternatives:
        price = replace(price, alternatives={**price.alternatives, **alternatives})
    return cards.card_of(price)


def _reported_field(stored: dict[str, Any]) -> str:
    for ln in stored.get("lines") or []:
        if ln.get("label") == "provider-reported cost":
            return ln.get("rate_name") or "usage.cost"
    return "usage.cost"


def convert(con: duckdb.DuckDBPyConnection, pricer: Pricer,
            progress: Callable[[SlimReport], None] | None = None) -> SlimReport:
    """Move stored details to cards where the recomputation is identical (see the module doc)."""
    report = SlimReport()
    days = [d for (d,) in con.execute(
        "SELECT DISTINCT CAST(timezone('UTC', ts) AS DATE) AS d FROM requests "
        "WHERE price_detail IS NOT NULL AND price_card IS NULL ORDER BY d").fetchall()]
    known = {c for (c,) in con.execute("SELECT card_id FROM price_cards").fetchall()}
    memo: dict[tuple, str | None] = {}  # (detail, key fields) -> card id or None (kept)
    card_memo: dict[tuple, tuple | None] = {}  # what picks the card -> (card, id, JSON, its rates)
    select = ", ".join(f'"{c}"' for c in _COLS)
    for day in days:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = datetime.fromordinal(day.toordinal() + 1).replace(tzinfo=UTC)
        if len(memo) > 100_000:  # keys hold whole details: memory stays bounded
            memo.clear()
        if len(card_memo) > 10_000:
            card_memo.clear()
        rows = con.execute(f"SELECT {select} FROM requests WHERE ts >= ? AND ts < ? AND price_detail IS NOT NULL "
                           "AND price_card IS NULL", [start, end]).fetchall()
        updates: list[tuple[str, str]] = []
        new_cards: dict[str, str] = {}
        for values in rows:
            row = dict(zip(_COLS, values))
            report.rows += 1
            basis = row["billing_basis"] or "api"
            cost = row["notional_usd"] if basis == "subscription" else row["cost_usd"]
            key = (row["price_detail"], row["provider"], row["model"], row["modifiers"], basis, cost,
                   *(row[f] for f in USAGE_FIELDS))
            if key not in memo:
                memo[key] = _verified(pricer, row, cost, new_cards, card_memo)
            card_id = memo[key]
            if card_id is None:
                report.kept += 1
                if len(report.kept_examples) < 5:
                    report.kept_examples.append(row["request_id"])
                continue
            updates.append((row["request_id"], card_id))
        con.execute("BEGIN")
        try:
            fresh = [(k, v) for k, v in new_cards.items() if k not in known]
            if fresh:
                con.executemany("INSERT INTO price_cards (card_id, card) VALUES (?, ?) ON CONFLICT DO NOTHING", fresh)
                known.update(k for k, _ in fresh)
                report.cards += len(fresh)
            if updates:
                ids, card_ids = zip(*updates)
                con.execute("""UPDATE requests SET price_card = u.card, price_detail = NULL
                               FROM (SELECT unnest(?::VARCHAR[]) AS id, unnest(?::VARCHAR[]) AS card) u
                               WHERE requests.request_id = u.id AND requests.ts >= ? AND requests.ts < ?""",
                            [list(ids), list(card_ids), start, end])  # the ts range: only this day's row groups
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        report.converted += len(updates)
        if progress:
            progress(report)
    return report


def _verified(pricer: Pricer, row: dict[str, Any], cost: Any, new_cards: dict[str, str],
              card_memo: dict[tuple, tuple | None]) -> str | None:
    """The card id whose recomputed detail equals the row's stored one, else None."""
    try:
        stored = json.loads(row["price_detail"])
        day = (row["ts"] if row["ts"].tzinfo else row["ts"].replace(tzinfo=UTC)).astimezone(UTC).date()
        pick = (day, row["provider"], row["model"], row["modifiers"], stored.get("variant"),
                json.dumps(stored.get("alternatives"), sort_keys=True), _reported_field(stored))
        if pick not in card_memo:
            made = _card_for(pricer, row, stored)
            card_memo[pick] = (made, *cards.encode(made), cards.rates_of(made)) if made is not None else None
        if card_memo[pick] is None:
            return None
        card, card_id, text, parsed = card_memo[pick]
        usage = Usage(**{f: int(row[f] or 0) for f in USAGE_FIELDS})
        again = cards.recompute(card, usage, None if cost is None else Decimal(str(cost)), parsed).detail()
    except Exception:  # a detail we cannot read or reproduce stays as it is
        log.debug("slim: row %s kept", row["request_id"], exc_info=True)
        return None
    if json.loads(json.dumps(again)) != stored:
        return None
    new_cards[card_id] = text
    return card_id


def compact(path: Path) -> tuple[int, int]:
    """Rewrite the DuckDB file so space freed by cleared details is returned (DuckDB reuses free
    blocks but never shrinks a file). Copies into `path.slim` and renames it over `path`
    (same directory, 0600). Returns (bytes before, bytes after). The file must not be open."""
    before = path.stat().st_size
    tmp = path.with_name(path.name + ".slim")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS src (READ_ONLY)", [str(path)])
        con.execute("ATTACH ? AS dst", [str(tmp)])
        con.execute("COPY FROM DATABASE src TO dst")
        con.execute("DETACH dst")
        con.execute("DETACH src")
    finally:
        con.close()
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return before, path.stat().st_size
