"""Turn normalized usage into dollars, with a line-by-line account of how.

Rates come from `pricing/overrides.yaml` (contracted rates and corrections, dated) or else from
the genai-prices catalogue bundled with the package (offline). Both are reduced to one `Rates`
shape and priced by one function, so an explanation always matches the charge. An unknown model
is never priced at $0: the result has cost None and the caller records the row as `unpriced`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import yaml
from genai_prices import data_snapshot
from genai_prices.types import TieredPrices

from spendgate.usage import Usage

log = logging.getLogger(__name__)

MTOK = Decimal(1_000_000)
CATALOGUE_PROVIDER = {"anthropic": "anthropic", "openai": "openai", "gemini": "google"}
CATALOGUE_VERSION = f"genai-prices {genai_prices.__version__}"

# Rate names, per million tokens except the per-request fees.
RATE_KEYS = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",
    "cache_write_1h_mtok",
    "web_search",  # USD per search
    "request",  # USD per request
)


@dataclass(frozen=True, slots=True)
class Tier:
    above_input_tokens: int  # cliff: past this many input tokens, ALL tokens take these rates
    rates: dict[str, Decimal]


@dataclass(frozen=True, slots=True)
class Rates:
    """The prices of one model on one day, from one source."""

    base: dict[str, Decimal]
    tiers: tuple[Tier, ...] = ()
    source: str = ""
    model_id: str = ""

    def at(self, total_input_tokens: int) -> tuple[dict[str, Decimal], int | None]:
        """Rates for a request with this much input: the highest tier passed replaces the base."""
        for tier in sorted(self.tiers, key=lambda t: -t.above_input_tokens):
            if total_input_tokens > tier.above_input_tokens:
                return {**self.base, **tier.rates}, tier.above_input_tokens
        return self.base, None


@dataclass(frozen=True, slots=True)
class PriceLine:
    label: str
    quantity: int
    rate: Decimal  # per MTok for tokens, per unit otherwise
    per: Decimal
    rate_name: str
    cost: Decimal


@dataclass(frozen=True, slots=True)
class PriceResult:
    cost: Decimal | None  # None: we do not know the price. Never a silent zero.
    source: str  # "override:<file>@<date>", "genai-prices 0.2.3", "free", "unknown"
    model_id: str | None = None
    tier_above: int | None = None
    lines: tuple[PriceLine, ...] = field(default=())

    def detail(self) -> dict[str, Any]:
        """JSON-able record kept in the ledger so any cost can be explained later."""
        return {
            "source": self.source,
            "model_id": self.model_id,
            "tier_above_input_tokens": self.tier_above,
            "lines": [
                {
                    "label": l.label,
                    "quantity": l.quantity,
                    "rate": str(l.rate),
                    "per": str(l.per),
                    "rate_name": l.rate_name,
                    "cost": str(l.cost),
                }
                for l in self.lines
            ],
        }


def compute(rates: Rates, usage: Usage) -> PriceResult:
    """Price usage. Missing cache rates fall back the way providers bill them (to their parent)."""
    r, tier = rates.at(usage.input_tokens)
    inp = r.get("input_mtok")
    if inp is None or r.get("output_mtok") is None:
        return PriceResult(None, rates.source, rates.model_id)
    read = r.get("cache_read_mtok", inp)
    write = r.get("cache_write_mtok", inp)
    write_1h = r.get("cache_write_1h_mtok", write)
    parts = [
        ("uncached input", usage.uncached_input_tokens, inp, "input_mtok", MTOK),
        ("cache read", usage.cache_read_tokens, read, "cache_read_mtok", MTOK),
        ("cache write 5m", usage.cache_write_5m_tokens, write, "cache_write_mtok", MTOK),
        ("cache write 1h", usage.cache_write_1h_tokens, write_1h, "cache_write_1h_mtok", MTOK),
        ("output (incl. reasoning)", usage.output_tokens, r["output_mtok"], "output_mtok", MTOK),
        ("web search", usage.web_search_requests, r.get("web_search", Decimal(0)), "web_search", Decimal(1)),
    ]
    if "request" in r:
        parts.append(("request fee", 1, r["request"], "request", Decimal(1)))
    lines = tuple(
        PriceLine(label, qty, rate, per, name, rate * qty / per) for label, qty, rate, name, per in parts if qty
    )
    return PriceResult(
        cost=sum((l.cost for l in lines), Decimal(0)),
        source=rates.source,
        model_id=rates.model_id,
        tier_above=tier,
        lines=lines,
    )


# --- the genai-prices catalogue -------------------------------------------------------------

_CATALOGUE_KEYS = {
    "input_mtok": "input_mtok",
    "output_mtok": "output_mtok",
    "cache_read_mtok": "cache_read_mtok",
    "cache_write_mtok": "cache_write_mtok",
    "cache_write_1h_mtok": "cache_write_1h_mtok",
}


def catalogue_rates(provider: str, model: str, at: datetime) -> Rates | None:
    """Rates from genai-prices for this model at this time, or None when it is not listed."""
    pid = CATALOGUE_PROVIDER.get(provider, provider)
    try:
        _, info = data_snapshot.get_snapshot().find_provider_model(model, None, pid, None)
    except LookupError:
        return None
    mp = info.get_prices(at)
    base: dict[str, Decimal] = {}
    tiers: dict[int, dict[str, Decimal]] = {}
    for ours, theirs in _CATALOGUE_KEYS.items():
        value = getattr(mp, theirs, None)
        if isinstance(value, TieredPrices):
            base[ours] = value.base
            for t in value.tiers:
                tiers.setdefault(t.start, {})[ours] = t.price
        elif value is not None:
            base[ours] = value
    searches = getattr(mp, "web_searches_kcount", None)
    if isinstance(searches, Decimal):
        base["web_search"] = searches / 1000
    fee = getattr(mp, "requests_kcount", None)
    if isinstance(fee, Decimal):
        base["request"] = fee / 1000
    return Rates(
        base=base,
        tiers=tuple(Tier(start, rates) for start, rates in sorted(tiers.items())),
        source=CATALOGUE_VERSION,
        model_id=info.id,
    )


# --- overrides -------------------------------------------------------------------------------


class PricingError(ValueError):
    """A broken overrides file; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class Override:
    provider: str
    model: str
    effective_from: date
    rates: Rates


def _decimal_map(raw: Any, where: str) -> dict[str, Decimal]:
    if not isinstance(raw, dict):
        raise PricingError(f"{where}: expected a mapping of rates")
    out: dict[str, Decimal] = {}
    for key, value in raw.items():
        if key not in RATE_KEYS:
            raise PricingError(f"{where}: unknown rate {key!r} (known: {', '.join(RATE_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise PricingError(f"{where}.{key}: not a number: {value!r}")
        try:
            dec = Decimal(str(value))
        except Exception:
            raise PricingError(f"{where}.{key}: not a number: {value!r}") from None
        if not dec.is_finite() or dec < 0:
            raise PricingError(f"{where}.{key}: must be a non-negative number")
        out[key] = dec
    return out


def load_overrides(path: Path) -> list[Override]:
    """Read pricing/overrides.yaml. Raises PricingError with a precise message when broken."""
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PricingError(f"{path}: {e}") from None
    entries = doc.get("models", []) if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise PricingError(f"{path}: expected `models:` to be a list")
    out = []
    for i, e in enumerate(entries):
        where = f"{path}: models[{i}]"
        if not isinstance(e, dict) or not e.get("provider") or not e.get("model"):
            raise PricingError(f"{where}: needs provider and model")
        eff = e.get("effective_from", date(1970, 1, 1))
        if isinstance(eff, str):
            try:
                eff = date.fromisoformat(eff)
            except ValueError:
                raise PricingError(f"{where}.effective_from: not a date: {eff!r}") from None
        if isinstance(eff, datetime):
            eff = eff.date()
        tiers = tuple(
            Tier(int(t.get("above_input_tokens", 0)), _decimal_map(t.get("rates"), f"{where}.tiers[{j}]"))
            for j, t in enumerate(e.get("tiers") or [])
        )
        source = f"override:{path.name}@{eff.isoformat()}"
        rates = Rates(_decimal_map(e.get("rates"), f"{where}.rates"), tiers, source, str(e["model"]))
        out.append(Override(str(e["provider"]), str(e["model"]).lower(), eff, rates))
    return out


class Pricer:
    """Prices requests. Thread-safe; results cached per model, day and source."""

    def __init__(self, overrides_path: Path | None = None) -> None:
        self.overrides_path = overrides_path
        self.overrides: list[Override] = load_overrides(overrides_path) if overrides_path else []
        self._cache: dict[tuple[str, str, date], Rates | None] = {}
        self._lock = threading.Lock()

    def rates(self, provider: str, model: str, at: datetime) -> Rates | None:
        key = (provider, model.lower(), at.astimezone(UTC).date())
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        found = self._override(provider, model.lower(), key[2]) or catalogue_rates(provider, model, at)
        with self._lock:
            self._cache[key] = found
        return found

    def _override(self, provider: str, model: str, day: date) -> Rates | None:
        best: Override | None = None
        for o in self.overrides:
            if o.provider == provider and o.model == model and o.effective_from <= day:
                if best is None or o.effective_from > best.effective_from:
                    best = o
        return best.rates if best else None

    def price(self, provider: str, model: str | None, usage: Usage, at: datetime) -> PriceResult:
        rates = self.rates(provider, model, at) if model else None
        if rates is None:
            log.warning("no price for %s model %r: recorded as unpriced", provider, model)
            return PriceResult(None, "unknown")
        return compute(rates, usage)
