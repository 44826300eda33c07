"""Rate cards: a price detail without the row's own numbers, stored once, not on every row.

A row's price detail (the line-by-line account `spendgate explain` prints, ~1.1 KB of JSON) is a
pure function of two things: the row's usage (its token columns, kept anyway) and the rates that
applied at its time (model id, variant, every rate with its tiers and source, the multipliers and
modifiers, the catalogue and overrides versions). The second part repeats across thousands of
rows, so the ledger keeps it once per distinct value in `price_cards`, keyed by a hash of its
canonical JSON, and each row keeps only that key (`price_card`, dictionary-compressed by DuckDB).

`detail()` recomputes the detail with `rates.compute()`, the same function that priced the row,
from the card's exact rates (not today's catalogue), so it is identical to what the gateway
computed when it recorded the row; `explain` checks it against the stored cost and says so if not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from decimal import Decimal
from typing import Any

from spendgate.pricing.rates import Multiplier, Price, PriceResult, Rates, compute, reported
from spendgate.usage import Usage

CARD_VERSION = 1


def card_of(result: PriceResult) -> dict[str, Any] | None:
    """The card of a priced result (None when there is nothing to explain: no lines, or no rates)."""
    if not result.lines or result.rates is None:
        return None
    rates = result.rates
    card: dict[str, Any] = {
        "card": CARD_VERSION,
        "model_id": rates.model_id,
        "variant": rates.variant,
        "rate_notes": list(rates.notes),
        "rates": {k: {"base": str(p.base), "tiers": [[s, str(v)] for s, v in p.tiers], "source": p.source,
                      **({"ref": p.ref} if p.ref else {})} for k, p in sorted(rates.prices.items())},
        "multipliers": [{"name": m.name, "value": m.value, "factor": str(m.factor), "source": m.source,
                         "reference": m.reference} for m in result.multipliers],
        "modifiers": list(result.modifiers),
        "late_notes": list(result.late_notes),
        "catalogue": result.catalogue,
        "overrides": result.overrides,
    }
    alternatives = dict(result.alternatives)
    if result.reported_as:
        card["reported"] = list(result.reported_as)
        alternatives.pop("list_price", None)  # recomputed from the rates and usage
    if alternatives:
        card["alternatives"] = alternatives  # per-request views that do not depend on usage (Copilot)
    return card


def encode(card: dict[str, Any]) -> tuple[str, str]:
    """(card id, canonical JSON). The id is the first 32 hex digits of the JSON's SHA-256."""
    text = json.dumps(card, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32], text


def of_result(result: PriceResult) -> tuple[str, str] | tuple[None, None]:
    """(card id, card JSON) for a ledger row, or (None, None) when the result has no detail.

    Remembered per distinct card input (see `_memo_key`): building and hashing the ~1 KB card
    cost ~50 us of CPU per row, yet a gateway sees a handful of distinct cards a day."""
    if not result.lines or result.rates is None:
        return None, None
    key = _memo_key(result)
    hit = _MEMO.get(key)
    if hit is not None and hit[0] is result.rates:  # the very Rates object (an id is reused once freed)
        return hit[1], hit[2]
    card = card_of(result)
    if card is None:
        return None, None
    card_id, text = encode(card)
    if len(_MEMO) >= _MEMO_MAX:  # bounded: a miss only costs building the card again
        _MEMO.clear()
    _MEMO[key] = (result.rates, card_id, text)
    return card_id, text


_MEMO: dict[tuple, tuple[Rates, str, str]] = {}
_MEMO_MAX = 4096


def _memo_key(result: PriceResult) -> tuple:
    """Everything `card_of` reads besides the rates (the Rates object itself, by identity: the
    pricer caches one per model, day and variant, and rates are never changed in place). `repr`
    makes the dicts hashable; equal reprs of these str / Decimal / int values mean equal values."""
    return (id(result.rates), repr((result.multipliers, result.modifiers, result.late_notes, result.catalogue,
                                    result.overrides, result.reported_as, result.alternatives)))


def rates_of(card: dict[str, Any]) -> tuple[Rates, tuple[Multiplier, ...]]:
    """The card's rates and multipliers, as `compute()` takes them."""
    prices = {k: Price(Decimal(p["base"]), tuple((int(s), Decimal(v)) for s, v in p["tiers"]), p["source"],
                       p.get("ref", "")) for k, p in card["rates"].items()}
    rates = Rates(prices, card["model_id"], card["variant"], tuple(card.get("rate_notes") or ()))
    mults = tuple(Multiplier(m["name"], m["value"], Decimal(m["factor"]), m["source"], m.get("reference"))
                  for m in card.get("multipliers") or ())
    return rates, mults


def recompute(card: dict[str, Any], usage: Usage, reported_cost: Decimal | None = None,
              parsed: tuple[Rates, tuple[Multiplier, ...]] | None = None) -> PriceResult:
    """The PriceResult the gateway computed for a row with this card and usage.

    `reported_cost`: the provider-stated cost (the row's cost, or notional for subscription rows)
    when the card says the provider reported it. Raises KeyError/ValueError on a malformed card.
    """
    rates, mults = parsed or rates_of(card)  # `parsed`: rates_of(card), when the caller keeps it
    result = compute(rates, usage, mults)
    result = replace(result, catalogue=card.get("catalogue"), overrides=card.get("overrides"),
                     modifiers=tuple(card.get("modifiers") or ()),
                     notes=(*result.notes, *(card.get("late_notes") or ())))
    if card.get("reported"):
        provider, field_name = card["reported"]
        if reported_cost is None:
            raise ValueError("the card says the provider reported the cost, but the row has none")
        result = reported(result, Decimal(str(reported_cost)), provider, field_name)
    if card.get("alternatives"):
        result = replace(result, alternatives={**result.alternatives, **card["alternatives"]})
    return result


def detail(card: dict[str, Any], usage: Usage, reported_cost: Decimal | None = None) -> dict[str, Any]:
    """The price detail JSON (`PriceResult.detail()`) of a row, recomputed from its card and usage."""
    return recompute(card, usage, reported_cost).detail()


def usage_of(row: dict[str, Any]) -> Usage:
    """A ledger row's usage (its token columns)."""
    return Usage(**{k: int(row.get(k) or 0) for k in Usage.__dataclass_fields__})


def row_detail(row: dict[str, Any], card_json: str | None) -> dict[str, Any] | None:
    """A ledger row's price detail: recomputed from its card, or the detail stored on rows written
    before cards (kept verbatim). None when the row was not priced line by line."""
    if card_json:
        card = json.loads(card_json)
        basis = row.get("billing_basis") or "api"
        cost = row.get("notional_usd") if basis == "subscription" else row.get("cost_usd")
        return detail(card, usage_of(row), None if cost is None else Decimal(str(cost)))
    raw = row.get("price_detail")
    return json.loads(raw) if raw else None
