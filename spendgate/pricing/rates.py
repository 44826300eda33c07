"""Turn normalized usage into dollars, with a line-by-line account of how.

Rates come from two places: the pinned genai-prices catalogue (`pricing/catalogue.json`, see
pricing_catalogue) and `pricing/overrides.yaml` (contracted rates and corrections, dated, per
provider and model). Both are reduced to one `Rates` shape, where every rate carries its own
source, and priced by one function, `compute()`, so an explanation always matches the charge.

Correctness rules (each one a bug seen in other gateways):
* an unknown model has cost None and the row is `unpriced`: never a silent $0;
* tiers are cliffs: past the threshold every token of the request takes the tier rate, and the
  threshold is compared with ALL input (uncached + cache reads + cache writes);
* 1-hour cache writes have their own rate; 5-minute writes theirs;
* reasoning tokens are output tokens; web searches and request fees are per unit;
* variants (batch, priority, flex) are looked up most specific first: the override's variant,
  the catalogue's variant, the override's standard rate, the catalogue's standard rate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from genai_prices import types as gp

from spendgate.pricing import catalogue as pricing_catalogue
from spendgate.usage import Usage
from spendgate.yamlcheck import Problem, load_yaml_with_marks, mark, schema_problems

log = logging.getLogger(__name__)

MTOK = Decimal(1_000_000)
CATALOGUE_PROVIDER = {"anthropic": "anthropic", "openai": "openai", "gemini": "google"}
VARIANTS = ("standard", "batch", "priority", "flex")
# how genai-prices names each variant in its price_context
VARIANT_CONTEXT: dict[str, dict[str, str]] = {
    "batch": {"processing": "batch"},
    "priority": {"service_tier": "priority"},
    "flex": {"service_tier": "flex"},
}
DETAIL_VERSION = 2


def variant_for_tier(service_tier: str | None) -> str:
    """The price variant a provider's reported service tier bills at (default/standard/auto: standard)."""
    tier = (service_tier or "").lower()
    return tier if tier in VARIANTS else "standard"

# Rate names, per million tokens except the per-unit fees.
RATE_KEYS = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",  # 5-minute cache writes
    "cache_write_1h_mtok",
    "web_search",  # USD per search
    "request",  # USD per request
)
PER_UNIT = {"web_search", "request"}


@dataclass(frozen=True, slots=True)
class Price:
    """One rate: a base price, optional cliff tiers, and where it came from."""

    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...] = ()  # (above_input_tokens, price), ascending
    source: str = ""

    def at(self, total_input_tokens: int) -> tuple[Decimal, int | None]:
        """The price for a request with this much input, and the tier threshold applied if any."""
        for start, price in reversed(self.tiers):
            if total_input_tokens > start:
                return price, start
        return self.base, None


@dataclass(frozen=True, slots=True)
class Rates:
    """The prices of one model, on one day, for one variant; every rate knows its source."""

    prices: dict[str, Price]
    model_id: str = ""
    variant: str = "standard"
    notes: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return " + ".join(sorted({p.source for p in self.prices.values()}))

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "variant": self.variant,
            "notes": list(self.notes),
            "rates": {
                k: {"base": str(p.base), "tiers": [[s, str(v)] for s, v in p.tiers], "source": p.source}
                for k, p in self.prices.items()
            },
        }


@dataclass(frozen=True, slots=True)
class PriceLine:
    label: str
    quantity: int
    rate: Decimal  # per MTok for tokens, per unit otherwise
    per: Decimal
    rate_name: str  # the rate actually used (after cache fallbacks)
    cost: Decimal
    source: str = ""
    tier_above: int | None = None  # the tier threshold this rate came from, None for the base rate


@dataclass(frozen=True, slots=True)
class PriceResult:
    cost: Decimal | None  # None: we do not know the price. Never a silent zero.
    source: str  # e.g. "genai-prices data sha256:1a2b...", "override:overrides.yaml@2026-01-01 + ...", "unknown"
    model_id: str | None = None
    tier_above: int | None = None
    lines: tuple[PriceLine, ...] = field(default=())
    variant: str = "standard"
    input_tokens: int = 0  # what the tier threshold was compared with
    notes: tuple[str, ...] = ()
    catalogue: str | None = None
    overrides: str | None = None  # overrides file and its sha256 prefix

    def detail(self) -> dict[str, Any]:
        """JSON-able record kept in the ledger so any cost can be explained (and re-priced) later."""
        return {
            "v": DETAIL_VERSION,
            "source": self.source,
            "model_id": self.model_id,
            "variant": self.variant,
            "catalogue": self.catalogue,
            "overrides": self.overrides,
            "input_tokens_for_tier": self.input_tokens,
            "tier_above_input_tokens": self.tier_above,
            "notes": list(self.notes),
            "total": None if self.cost is None else str(self.cost),
            "lines": [
                {
                    "label": ln.label,
                    "quantity": ln.quantity,
                    "rate": str(ln.rate),
                    "per": str(ln.per),
                    "rate_name": ln.rate_name,
                    "cost": str(ln.cost),
                    "source": ln.source,
                    "tier_above": ln.tier_above,
                }
                for ln in self.lines
            ],
        }


def _pick(r: dict[str, Price], *names: str) -> tuple[str, Price] | None:
    """The first rate present: how providers bill a part they publish no separate rate for."""
    for n in names:
        if n in r:
            return n, r[n]
    return None


def compute(rates: Rates, usage: Usage) -> PriceResult:
    """Price usage with these rates. The one place a cost is calculated."""
    r = rates.prices
    if "input_mtok" not in r or "output_mtok" not in r:
        return PriceResult(None, rates.source or "unknown", rates.model_id, variant=rates.variant,
                           notes=(*rates.notes, "the model has no input or output rate"))  # fmt: skip
    total_in = usage.input_tokens
    parts: list[tuple[str, int, tuple[str, Price], Decimal]] = [
        ("uncached input", usage.uncached_input_tokens, _pick(r, "input_mtok"), MTOK),
        ("cache read", usage.cache_read_tokens, _pick(r, "cache_read_mtok", "input_mtok"), MTOK),
        ("cache write 5m", usage.cache_write_5m_tokens, _pick(r, "cache_write_mtok", "input_mtok"), MTOK),
        ("cache write 1h", usage.cache_write_1h_tokens,
         _pick(r, "cache_write_1h_mtok", "cache_write_mtok", "input_mtok"), MTOK),
        (f"output (incl. {usage.reasoning_tokens:,} reasoning)" if usage.reasoning_tokens else "output",
         usage.output_tokens, _pick(r, "output_mtok"), MTOK),
    ]  # fmt: skip
    if usage.web_search_requests:
        found = _pick(r, "web_search")
        if found is None:  # searches happened but no rate is known: say so rather than charge $0
            return PriceResult(None, rates.source, rates.model_id, variant=rates.variant, input_tokens=total_in,
                               notes=(*rates.notes, "web searches used but no web_search rate is known"))  # fmt: skip
        parts.append(("web search", usage.web_search_requests, found, Decimal(1)))
    if "request" in r:
        parts.append(("request fee", 1, ("request", r["request"]), Decimal(1)))
    lines = []
    tier_used: int | None = None
    for label, qty, (name, price), per in parts:
        if not qty:
            continue
        rate, tier = price.at(total_in)
        if tier is not None:
            tier_used = max(tier_used or 0, tier)
        lines.append(PriceLine(label, qty, rate, per, name, rate * qty / per, price.source, tier))
    return PriceResult(
        cost=sum((ln.cost for ln in lines), Decimal(0)),
        source=" + ".join(sorted({ln.source for ln in lines})) or rates.source,
        model_id=rates.model_id,
        tier_above=tier_used,
        lines=tuple(lines),
        variant=rates.variant,
        input_tokens=total_in,
        notes=rates.notes,
    )


# --- the genai-prices catalogue -------------------------------------------------------------

_CATALOGUE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")


def _model_price_rates(mp: gp.ModelPrice, source: str) -> dict[str, Price]:
    out: dict[str, Price] = {}
    for key in _CATALOGUE_KEYS:
        value = getattr(mp, key, None)
        if isinstance(value, gp.TieredPrices):
            out[key] = Price(value.base, tuple((t.start, t.price) for t in value.tiers), source)
        elif value is not None:
            out[key] = Price(value, (), source)
    for ours, theirs in (("web_search", "web_searches_kcount"), ("request", "requests_kcount")):
        value = getattr(mp, theirs, None)
        if isinstance(value, Decimal):
            out[ours] = Price(value / 1000, (), source)
    return out


def catalogue_rates(
    catalogue: pricing_catalogue.Catalogue, provider: str, model: str, at: datetime, variant: str = "standard"
) -> tuple[str, dict[str, Price], dict[str, Price]] | None:
    """(model id, standard rates, variant-only rates) from the catalogue, or None when not listed."""
    pid = CATALOGUE_PROVIDER.get(provider, provider)
    try:
        _, info = catalogue.snapshot.find_provider_model(model, None, pid, None)
    except LookupError:
        return None
    standard = _model_price_rates(info.get_prices(at), catalogue.version)
    extra: dict[str, Price] = {}
    if variant in VARIANT_CONTEXT:
        label = f"{catalogue.version} ({variant})"
        resolved = _model_price_rates(info.get_prices(at, VARIANT_CONTEXT[variant]), label)
        extra = {k: p for k, p in resolved.items() if k not in standard or (p.base, p.tiers) != (standard[k].base, standard[k].tiers)}
    return info.id, standard, extra


# --- overrides -------------------------------------------------------------------------------


class PricingError(ValueError):
    """A broken overrides file: one FILE:LINE:COL: message per problem."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


@dataclass(frozen=True, slots=True)
class OverridePrices:
    rates: dict[str, Price]
    variants: dict[str, dict[str, Price]]


@dataclass(frozen=True, slots=True)
class Override:
    provider: str
    model: str  # lower-case; a name, a catalogue model id, or a glob such as claude-sonnet-4-2025*
    effective_from: date
    prices: OverridePrices
    line: int = 0
    note: str | None = None

    def matches(self, provider: str, model: str, model_id: str | None) -> bool:
        if provider != self.provider:
            return False
        return any(n and (n == self.model or fnmatchcase(n, self.model)) for n in (model, model_id))


def overrides_schema() -> dict[str, Any]:
    return json.loads(resources.files("spendgate.pricing").joinpath("overrides.schema.json").read_text())


_VALIDATOR = jsonschema.Draft202012Validator(overrides_schema())


def _explain(err: jsonschema.ValidationError, path: tuple, where: str) -> str | None:
    """Override-specific wording for the schema errors people actually make."""
    if err.validator in ("type", "minimum") and path and path[-1] in RATE_KEYS:
        return f"{where}: a rate must be a non-negative number of USD, not {err.instance!r}"
    if err.validator == "pattern" and path and path[-1] == "effective_from":
        return f"{where}: not a date (YYYY-MM-DD): {err.instance!r}"
    if err.validator == "anyOf":
        return f"{where}: give rates, tiers or variants"
    return None


def _prices(raw: dict[str, Any], source: str) -> dict[str, Price]:
    """Override rates plus cliff tiers, reshaped per rate (a tier may name only some rates)."""
    out = {k: Price(Decimal(str(v)), (), source) for k, v in (raw.get("rates") or {}).items()}
    tiered: dict[str, list[tuple[int, Decimal]]] = {}
    for t in raw.get("tiers") or []:
        for k, v in t["rates"].items():
            tiered.setdefault(k, []).append((int(t["above_input_tokens"]), Decimal(str(v))))
    for k, tiers in tiered.items():
        base = out[k].base if k in out else None
        out[k] = Price(base if base is not None else Decimal(-1), tuple(sorted(tiers)), source)
    return out


def parse_overrides(text: str, file: str = "<overrides>") -> list[Override]:
    """Parse and validate overrides; raise PricingError listing every problem with its position."""
    doc, marks, problems = load_yaml_with_marks(text)
    if doc is None or not isinstance(doc, dict):
        raise PricingError(file, problems or [Problem(1, 1, "overrides are a mapping (version: 1, models: [...])")])
    problems += schema_problems(_VALIDATOR, doc, marks, _explain, list_known=True)
    if problems:
        raise PricingError(file, sorted(problems, key=lambda p: (p.line, p.col)))
    name = Path(file).name
    sha = hashlib.sha256(text.encode()).hexdigest()[:12]
    out: list[Override] = []
    seen: dict[tuple[str, str, str], int] = {}
    for i, e in enumerate(doc.get("models") or []):
        eff = e["effective_from"]
        try:
            day = date.fromisoformat(eff)
        except ValueError:
            problems.append(Problem(*mark(marks, ("models", i, "effective_from")), f"not a date: {eff!r}"))
            continue
        key = (e["provider"], e["model"].lower(), eff)
        if key in seen:
            problems.append(Problem(*mark(marks, ("models", i)),
                                    f"{e['provider']} {e['model']} from {eff} is already defined on line {seen[key]}"))
        line = mark(marks, ("models", i))[0]
        seen[key] = line
        source = f"override:{name}@{eff}#{sha}"
        for scope, raw in [("", e), *((f"variants.{v}.", body) for v, body in (e.get("variants") or {}).items())]:
            for j, t in enumerate(raw.get("tiers") or []):
                if j and t["above_input_tokens"] <= raw["tiers"][j - 1]["above_input_tokens"]:
                    path = ("models", i, *(("variants", scope.split(".")[1]) if scope else ()), "tiers", j)
                    problems.append(Problem(*mark(marks, path), "tiers must be listed in increasing above_input_tokens"))
        prices = OverridePrices(
            _prices(e, source),
            {v: _prices(body, f"{source} ({v})") for v, body in (e.get("variants") or {}).items()},
        )
        out.append(Override(e["provider"], e["model"].lower(), day, prices, line, e.get("note")))
    if problems:
        raise PricingError(file, sorted(problems, key=lambda p: (p.line, p.col)))
    return out


def load_overrides(path: Path) -> list[Override]:
    try:
        text = path.read_text()
    except OSError as e:
        raise PricingError(str(path), [Problem(1, 1, f"cannot read: {e.strerror or e}")]) from None
    return parse_overrides(text, str(path))


def _merge(under: dict[str, Price], over: dict[str, Price]) -> dict[str, Price]:
    """Lay `over` on `under` rate by rate; a tier-only rate keeps the base underneath it."""
    out = dict(under)
    for k, p in over.items():
        if p.base < 0:  # tiers without a base: the base comes from below
            below = under.get(k)
            if below is None:
                continue
            p = replace(p, base=below.base, source=f"{below.source} (base), {p.source} (tiers)")
        out[k] = p
    return out


class Pricer:
    """Prices requests. Thread-safe; resolved rates are cached per model, day and variant.

    The cache key includes the day because catalogue prices and overrides are dated; the price
    version (catalogue sha, overrides sha) is fixed for a Pricer's lifetime, and a reload builds
    a new Pricer, so a cached rate can never outlive the files it came from.
    """

    def __init__(
        self,
        overrides_path: Path | None = None,
        *,
        catalogue_dir: Path | None = None,
        catalogue: pricing_catalogue.Catalogue | None = None,
    ) -> None:
        self.overrides_path = overrides_path
        self.overrides: list[Override] = load_overrides(overrides_path) if overrides_path else []
        self.overrides_label: str | None = None
        if overrides_path:
            digest = hashlib.sha256(overrides_path.read_bytes()).hexdigest()[:12]
            self.overrides_label = f"{overrides_path.name} sha256:{digest}"
        if catalogue is None:
            folder = catalogue_dir or (overrides_path.parent if overrides_path else None)
            try:
                catalogue = pricing_catalogue.load(folder)
            except (pricing_catalogue.CatalogueError, OSError) as e:
                raise PricingError(str(folder), [Problem(1, 1, f"catalogue: {e}")]) from None
        self.catalogue = catalogue
        self._cache: dict[tuple[str, str, date, str], Rates | None] = {}
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.catalogue.version + (f"; overrides {self.overrides_label}" if self.overrides_label else "")

    def rates(self, provider: str, model: str, at: datetime, variant: str = "standard") -> Rates | None:
        variant = variant if variant in VARIANTS else "standard"
        key = (provider, model.lower(), at.astimezone(UTC).date(), variant)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        found = self._resolve(provider, model, at, variant)
        with self._lock:
            self._cache[key] = found
        return found

    def _resolve(self, provider: str, model: str, at: datetime, variant: str) -> Rates | None:
        cat = catalogue_rates(self.catalogue, provider, model, at, variant)
        model_id, standard, cat_variant = cat if cat else (None, {}, {})
        override = self.override_for(provider, model.lower(), model_id, at.astimezone(UTC).date())
        notes: list[str] = []
        prices = dict(standard)
        if override:
            prices = _merge(prices, override.prices.rates)
        prices = _merge(prices, cat_variant)
        if override and variant in override.prices.variants:
            prices = _merge(prices, override.prices.variants[variant])
        if not prices:
            return None
        if variant != "standard" and not cat_variant and not (override and variant in override.prices.variants):
            notes.append(f"no {variant} rates are listed for this model: standard rates used")
        return Rates(prices, model_id or model, variant, tuple(notes))

    def override_for(self, provider: str, model: str, model_id: str | None, day: date) -> Override | None:
        """The latest override in force on `day` for this model (by request name or catalogue id)."""
        best: Override | None = None
        for o in self.overrides:
            if o.effective_from <= day and o.matches(provider, model, model_id):
                if best is None or o.effective_from > best.effective_from:
                    best = o
        return best

    def price(
        self, provider: str, model: str | None, usage: Usage, at: datetime, variant: str | None = None
    ) -> PriceResult:
        rates = self.rates(provider, model, at, variant or "standard") if model else None
        if rates is None:
            log.warning("no price for %s model %r: recorded as unpriced", provider, model)
            return PriceResult(None, "unknown", catalogue=self.catalogue.version, overrides=self.overrides_label)
        return replace(compute(rates, usage), catalogue=self.catalogue.version, overrides=self.overrides_label)


# --- audits ----------------------------------------------------------------------------------


def _flat(prices: dict[str, Price]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for k, p in prices.items():
        if p.base >= 0:
            out[k] = p.base
        for start, v in p.tiers:
            out[f"{k} >{start}"] = v
    return out


def compare_overrides(pricer: Pricer, today: date | None = None) -> list[dict[str, Any]]:
    """Each override rate next to the catalogue's rate for the same model, variant and day.

    status: "differs" (a contracted rate or a correction: check it is still meant), "catalogue
    lacks" (the override adds what the catalogue does not list), "same" (redundant now: the
    catalogue caught up, the override can go).
    """
    today = today or datetime.now(UTC).date()
    out: list[dict[str, Any]] = []
    for o in pricer.overrides:
        day = max(o.effective_from, today)  # the rate in force now, or when the override starts
        at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        sets = [("standard", o.prices.rates), *o.prices.variants.items()]
        for variant, mine in sets:
            found = catalogue_rates(pricer.catalogue, o.provider, o.model, at, variant)
            if found is None:
                out.append({"provider": o.provider, "model": o.model, "effective_from": o.effective_from.isoformat(),
                            "variant": variant, "field": "(model)", "override": "listed", "catalogue": None,
                            "status": "catalogue lacks"})  # fmt: skip
                continue
            theirs = _flat(found[2] if variant != "standard" else found[1])  # a variant: only what it lists
            for fld, value in _flat(mine).items():
                cat = theirs.get(fld)
                status = "catalogue lacks" if cat is None else ("same" if cat == value else "differs")
                out.append({"provider": o.provider, "model": o.model, "catalogue_id": found[0],
                            "effective_from": o.effective_from.isoformat(), "variant": variant, "field": fld,
                            "override": str(value), "catalogue": None if cat is None else str(cat),
                            "status": status})  # fmt: skip
    return out
