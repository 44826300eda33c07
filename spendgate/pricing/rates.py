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
* variants (batch, priority, flex, fast) are looked up most specific first: the override's variant,
  the catalogue's variant, the override's standard rate, the catalogue's standard rate;
* what the provider reports about how it served a request changes the price (docs/pricing.md,
  "Price modifiers"): Anthropic `speed: fast` takes the fast-mode variant, `service_tier` its
  variant, `inference_geo` a dated multiplier from the overrides;
* tokens of a kind with its own rate (audio, image, video input and output, cached audio) take that
  rate; where none is listed they take the generic rate and the row says so (a note, and
  `spendgate prices check` lists it), never silently.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genai_prices import types as gp

from spendgate.policy.parse_cache import private_stamp, remember_stamp, schema_stamp
from spendgate.pricing import catalogue as pricing_catalogue
from spendgate.pricing import copilot
from spendgate.usage import Usage
from spendgate.yamlcheck import Problem, load_yaml_with_marks, mark, schema_problems

if TYPE_CHECKING:  # annotations only: jsonschema is imported when an overrides file needs checking
    import jsonschema

log = logging.getLogger(__name__)

MTOK = Decimal(1_000_000)
# spendgate provider (the service a request went to) -> genai-prices providers to look the model up
# in, in order. A later entry is a list-price fallback for ids the service's own table lacks
# (Copilot model names, Bedrock ids of Anthropic models), after normalize_model() for it.
CATALOGUE_PROVIDER: dict[str, tuple[str, ...]] = {
    "anthropic": ("anthropic",),
    "openai": ("openai",),
    "gemini": ("google",),
    "bedrock": ("aws", "anthropic"),
    "vertex": ("google", "anthropic"),
    "code-assist": ("google",),
    "azure": ("azure", "openai"),
    "copilot": ("github-copilot", "anthropic", "openai", "google"),
    "openrouter": ("openrouter",),
    "deepseek": ("deepseek",),
    "mistral": ("mistral",),
    "xai": ("x-ai",),
    "groq": ("groq",),
    "together": ("together",),
    "fireworks": ("fireworks",),
}
_site_providers: dict[str, tuple[str, ...]] = {}  # site-added hosts: provider -> price_as


def set_site_providers(mapping: dict[str, str]) -> None:
    """Providers a site added in config, each priced as a catalogue provider (or only by overrides)."""
    global _site_providers
    _site_providers = {p: tuple(CATALOGUE_PROVIDER.get(v, (v,))) for p, v in mapping.items()}


_BEDROCK_PREFIX = re.compile(r"^(?:us|eu|apac|jp|au|ca|us-gov|global)\.")
_BEDROCK_SUFFIX = re.compile(r"-v\d+(?::\d+)?$")


def normalize_model(catalogue_provider: str, model: str) -> str:
    """A service's model id as the given catalogue provider names it.

    Bedrock: ARNs keep their last segment (``.../us.anthropic.claude-...``); for the anthropic
    table the region prefix, ``anthropic.`` and ``-v1:0`` go (``claude-sonnet-4-5-20250929``).
    Vertex: the ``@20250929`` version suffix goes. Copilot: ``claude-sonnet-4.5`` is Anthropic's
    ``claude-sonnet-4-5``.
    """
    m = model.strip()
    if m.startswith("arn:"):
        m = m.rsplit("/", 1)[-1]
    if catalogue_provider == "aws":
        return m
    if catalogue_provider == "anthropic":
        bare = _BEDROCK_PREFIX.sub("", m)
        if bare.startswith("anthropic."):  # a Bedrock id
            m = _BEDROCK_SUFFIX.sub("", bare.removeprefix("anthropic."))
        m = m.split("@", 1)[0]
        if m.startswith("claude-"):
            m = re.sub(r"(\d)\.(\d)", r"\1-\2", m)
        return m
    return m.split("@", 1)[0] if "@" in m and catalogue_provider == "google" else m


def catalogue_candidates(provider: str, model: str) -> list[tuple[str, str]]:
    """(catalogue provider, model id) pairs to try, in order, for a request's provider and model."""
    pids = _site_providers.get(provider) or CATALOGUE_PROVIDER.get(provider, (provider,))
    out: list[tuple[str, str]] = []
    for pid in pids:
        pair = (pid, normalize_model(pid, model))
        if pair not in out:
            out.append(pair)
    return out
VARIANTS = ("standard", "batch", "priority", "flex", "fast")
# how genai-prices names each variant in its price_context
VARIANT_CONTEXT: dict[str, dict[str, str]] = {
    "batch": {"processing": "batch"},
    "priority": {"service_tier": "priority"},
    "flex": {"service_tier": "flex"},
    "fast": {"speed": "fast"},  # Anthropic fast mode (usage.speed)
}
DETAIL_VERSION = 3
# modifier values that mean "as usual": no variant, no multiplier, nothing to say
PLAIN_MODIFIER_VALUES = frozenset({"", "standard", "default", "auto", "global", "not_available", "normal"})
REPORTED_SOURCE = "provider-reported"  # price_source prefix of a cost the provider's response stated
# price_source prefix of a background response's charges that are not its cost: the estimate held
# while it runs, a fetch charged its cost less that (budgets.admission); re-pricing leaves them alone
HELD_SOURCE_PREFIX = "background response:"


def variant_for_tier(service_tier: str | None) -> str:
    """The price variant a provider's reported service tier bills at (default/standard/auto: standard)."""
    tier = (service_tier or "").lower()
    return tier if tier in VARIANTS and tier != "fast" else "standard"


def variant_for(modifiers: dict[str, str] | None) -> str:
    """The price variant of a request from what the provider reported about serving it.

    Fast mode (`speed: fast`) is the most specific; otherwise the service tier decides.
    """
    modifiers = modifiers or {}
    if (modifiers.get("speed") or "").lower() == "fast":
        return "fast"
    return variant_for_tier(modifiers.get("service_tier"))

# Rate names, per million tokens except the per-unit fees.
RATE_KEYS = (
    "input_mtok",
    "output_mtok",
    "cache_read_mtok",
    "cache_write_mtok",  # 5-minute cache writes
    "cache_write_1h_mtok",
    "web_search",  # USD per search
    "grounded_prompt",  # USD per request that searched, however many searches (Gemini 2.5 and older)
    "request",  # USD per request
    # tokens of a kind with its own rate (genai-prices names); absent: the generic rate, with a note
    "input_audio_mtok",
    "input_image_mtok",
    "input_video_mtok",
    "cache_audio_read_mtok",
    "output_audio_mtok",
    "output_image_mtok",
    "output_video_mtok",
    # billed per time or text, not per token (genai-prices names): USD per hour of input audio
    # (whisper), USD per million input characters (tts-1)
    "audio_hours",
    "input_mchars",
    # generated media (not in genai-prices: pricing/overrides.yaml): USD per image (Imagen, dall-e),
    # USD per second of video (Sora, Veo) and per second above 720p where that costs more (Sora 2 Pro)
    "image",
    "video_second",
    "video_second_high_res",
)
PER_UNIT = {"web_search", "grounded_prompt", "request"}
HOUR_SECONDS = Decimal(3600)
MODALITY_KEYS = ("input_audio_mtok", "input_image_mtok", "input_video_mtok", "cache_audio_read_mtok",
                 "output_audio_mtok", "output_image_mtok", "output_video_mtok")


@dataclass(frozen=True, slots=True)
class Price:
    """One rate: a base price, optional cliff tiers, and where it came from."""

    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...] = ()  # (above_input_tokens, price), ascending
    source: str = ""  # machine label: catalogue version, or override:FILE@DAY#FILE-SHA256-PREFIX
    ref: str = ""  # an override entry's own `source:` (the contract or correction it came from), else its note

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
    ref: str = ""  # the override entry's own `source:` text, when the rate came from one


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
    modifiers: tuple[dict[str, str], ...] = ()  # {name, value, effect, source}: how serving changed the price
    fallbacks: tuple[dict[str, Any], ...] = ()  # {kind, tokens, rate_used}: modality tokens without their own rate
    alternatives: dict[str, Any] = field(default_factory=dict)  # side-by-side views, e.g. list_price, copilot
    # what the lines were computed from (spendgate.pricing.cards stores them once per distinct card,
    # so a row keeps only the card's id and the detail is recomputed exactly from its usage)
    rates: Rates | None = field(default=None, compare=False, repr=False)
    multipliers: tuple[Multiplier, ...] = field(default=(), compare=False, repr=False)
    late_notes: tuple[str, ...] = field(default=(), compare=False, repr=False)  # notes added after compute()
    reported_as: tuple[str, str] | None = field(default=None, compare=False, repr=False)  # (provider, field)

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
            "modifiers": list(self.modifiers),
            "fallbacks": list(self.fallbacks),
            **({"alternatives": self.alternatives} if self.alternatives else {}),
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
                    **({"ref": ln.ref} if ln.ref else {}),
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


def search_part(r: dict[str, Price], searches: int) -> tuple[str, int, tuple[str, Price]] | None:
    """(label, quantity, rate) of a request's search fee, or None when no rate is known.

    A model with a `grounded_prompt` rate bills a request that searched once, however many queries
    it ran (Gemini 2.5 and older: USD per grounded prompt); otherwise each search is billed at
    `web_search` (Gemini 3: USD per search query; https://ai.google.dev/gemini-api/docs/pricing,
    "Grounding with Google Search").
    """
    if "grounded_prompt" in r:
        return "grounded prompt", 1, ("grounded_prompt", r["grounded_prompt"])
    found = _pick(r, "web_search")
    return None if found is None else ("web search", searches, found)


@dataclass(frozen=True, slots=True)
class Multiplier:
    """A factor on every token rate, from a serving modifier (e.g. inference_geo us: 1.1)."""

    name: str
    value: str
    factor: Decimal
    source: str  # override:FILE@DAY#sha, like every override rate
    reference: str | None = None  # the entry's `source:` (where the provider publishes it)


def _modality_parts(r: dict[str, Price], usage: Usage) -> tuple[list, list[dict[str, Any]]]:
    """Price parts for tokens of a kind with its own rate, and the kinds that fell back to the
    generic rate (reported, never silent)."""
    parts: list = []
    fallbacks: list[dict[str, Any]] = []
    uncached_audio = max(usage.input_audio_tokens - usage.cache_read_audio_tokens, 0)
    for label, qty, own, generic in (
        ("input audio", uncached_audio, "input_audio_mtok", "input_mtok"),
        ("input image", usage.input_image_tokens, "input_image_mtok", "input_mtok"),
        ("input video", usage.input_video_tokens, "input_video_mtok", "input_mtok"),
        ("cache read audio", usage.cache_read_audio_tokens, "cache_audio_read_mtok", "cache_read_mtok"),
        ("output audio", usage.output_audio_tokens, "output_audio_mtok", "output_mtok"),
        ("output image", usage.output_image_tokens, "output_image_mtok", "output_mtok"),
        ("output video", usage.output_video_tokens, "output_video_mtok", "output_mtok"),
    ):
        if not qty:
            continue
        found = _pick(r, own) or _pick(r, generic, "input_mtok")
        if found[0] != own:
            fallbacks.append({"kind": own.removesuffix("_mtok"), "tokens": qty, "rate_used": found[0]})
            label = f"{label} (no {own.removesuffix('_mtok')} rate: {found[0].removesuffix('_mtok')} rate)"
        parts.append((label, qty, found, MTOK))
    return parts, fallbacks


def _unknown(rates: Rates, source: str, notes: tuple[str, ...], catalogue: str | None, overrides: str | None,
             input_tokens: int = 0) -> PriceResult:
    """compute()'s answer when a part of the usage has no rate: cost None (unknown, never $0), the
    missing rate said in the notes."""
    return PriceResult(None, source, rates.model_id, variant=rates.variant, input_tokens=input_tokens, notes=notes,
                       catalogue=catalogue, overrides=overrides)


def compute(rates: Rates, usage: Usage, multipliers: tuple[Multiplier, ...] = (), *,
            catalogue: str | None = None, overrides: str | None = None) -> PriceResult:
    """Price usage with these rates. The one place a cost is calculated.

    Modality tokens (audio, image, video) are carved out of the text totals and priced at their
    own rates; `multipliers` scale every token rate (not per-unit fees) and are listed in the detail.
    `catalogue` and `overrides` label the result (the pricer's versions), as its fields of those names.
    """
    r = rates.prices
    units_only = not usage.input_tokens and not usage.output_tokens and bool(
        usage.audio_seconds or usage.input_characters or usage.output_images or usage.output_video_seconds)
    for qty, key, what in ((usage.audio_seconds, "audio_hours", "seconds of audio"),
                           (usage.input_characters, "input_mchars", "input characters"),
                           (usage.output_images, "image", "images generated"),
                           (usage.output_video_seconds, "video_second", "seconds of video generated")):
        if qty and key not in r:  # billed by a unit we have no rate for: unknown, never $0
            return _unknown(rates, rates.source or "unknown", (*rates.notes, f"{qty:,} {what} used but no {key} "
                            "rate is known"), catalogue, overrides)
    if not units_only and ("input_mtok" not in r or ("output_mtok" not in r and usage.output_tokens)):
        return _unknown(rates, rates.source or "unknown", (*rates.notes, "the model has no input or output rate"),
                        catalogue, overrides)
    total_in = usage.input_tokens
    uncached_text = max(usage.uncached_input_tokens - max(usage.input_audio_tokens - usage.cache_read_audio_tokens, 0)
                        - usage.input_image_tokens - usage.input_video_tokens, 0)
    output_text = max(usage.output_tokens - usage.output_audio_tokens - usage.output_image_tokens
                      - usage.output_video_tokens, 0)
    reasoning = min(usage.reasoning_tokens, output_text)
    parts: list[tuple[str, int, tuple[str, Price] | None, Decimal]] = [
        ("uncached input", uncached_text, _pick(r, "input_mtok"), MTOK),
        ("cache read", max(usage.cache_read_tokens - usage.cache_read_audio_tokens, 0),
         _pick(r, "cache_read_mtok", "input_mtok"), MTOK),
        ("cache write 5m", usage.cache_write_5m_tokens, _pick(r, "cache_write_mtok", "input_mtok"), MTOK),
        ("cache write 1h", usage.cache_write_1h_tokens,
         _pick(r, "cache_write_1h_mtok", "cache_write_mtok", "input_mtok"), MTOK),
        (f"output (incl. {reasoning:,} reasoning)" if reasoning else "output",
         output_text, _pick(r, "output_mtok"), MTOK),
    ]  # fmt: skip
    fallbacks: list[dict[str, Any]] = []
    if usage.modality_tokens or usage.cache_read_audio_tokens:
        extra, fallbacks = _modality_parts(r, usage)
        parts.extend(extra)
    notes = list(rates.notes)
    for fb in fallbacks:
        notes.append(f"{fb['tokens']:,} {fb['kind'].replace('_', ' ')} tokens priced at the "
                     f"{fb['rate_used'].removesuffix('_mtok').replace('_', ' ')} rate: no {fb['kind']} rate is known")
    if usage.web_search_requests:
        search = search_part(r, usage.web_search_requests)
        if search is None:  # searches happened but no rate is known: say so rather than charge $0
            return _unknown(rates, rates.source, (*notes, "web searches used but no web_search rate is known"),
                            catalogue, overrides, input_tokens=total_in)
        parts.append((*search, Decimal(1)))
    if usage.audio_seconds:
        parts.append(("audio seconds", usage.audio_seconds, ("audio_hours", r["audio_hours"]), HOUR_SECONDS))
    if usage.input_characters:
        parts.append(("input characters", usage.input_characters, ("input_mchars", r["input_mchars"]), MTOK))
    if usage.output_images:
        parts.append(("images", usage.output_images, ("image", r["image"]), Decimal(1)))
    if usage.output_video_seconds:
        high = min(usage.output_video_high_res_seconds, usage.output_video_seconds)
        parts.append(("video seconds", usage.output_video_seconds - high, ("video_second", r["video_second"]),
                      Decimal(1)))
        if high:  # no high-resolution rate: the model costs the same at every resolution
            parts.append(("video seconds above 720p", high, _pick(r, "video_second_high_res", "video_second"),
                          Decimal(1)))
    if "request" in r:
        parts.append(("request fee", 1, ("request", r["request"]), Decimal(1)))
    factor = Decimal(1)
    for m in multipliers:
        factor *= m.factor
    lines = []
    tier_used: int | None = None
    for label, qty, found_rate, per in parts:
        if not qty:
            continue
        name, price = found_rate
        rate, tier = price.at(total_in)
        source = price.source
        if factor != 1 and per == MTOK:  # multipliers scale token rates, not per-unit fees
            rate = rate * factor
            label = f"{label} x{factor.normalize()}"
            source = " + ".join([source, *sorted({m.source for m in multipliers})])
        if tier is not None:
            tier_used = max(tier_used or 0, tier)
        lines.append(PriceLine(label, qty, rate, per, name, rate * qty / per, source, tier, price.ref))
    return PriceResult(
        cost=sum((ln.cost for ln in lines), Decimal(0)),
        source=" + ".join(sorted({ln.source for ln in lines})) or rates.source,
        model_id=rates.model_id,
        tier_above=tier_used,
        lines=tuple(lines),
        variant=rates.variant,
        input_tokens=total_in,
        notes=tuple(notes),
        fallbacks=tuple(fallbacks),
        rates=rates,
        multipliers=tuple(multipliers),
        catalogue=catalogue,
        overrides=overrides,
    )


def text_cost(rates: Rates, input_tokens: int, output_tokens: int) -> Decimal | None:
    """USD for plain text tokens only: ``compute(rates, Usage(input_tokens=i, output_tokens=o)).cost``.

    The same sums in the same order, so the same Decimal, without the price detail (lines, notes,
    sources) ``compute`` builds. Admission estimates every request this way on the proxy's event
    loop; a test holds it equal to ``compute`` over the catalogue, tiers and request fees.
    """
    r = rates.prices
    inp, out = r.get("input_mtok"), r.get("output_mtok")
    if inp is None or (out is None and output_tokens):
        return None  # compute: "the model has no input or output rate"
    cost = Decimal(0)
    if input_tokens > 0:
        cost = cost + inp.at(input_tokens)[0] * input_tokens / MTOK
    if output_tokens > 0:
        cost = cost + out.at(input_tokens)[0] * output_tokens / MTOK
    fee = r.get("request")
    if fee is not None:
        cost = cost + fee.at(input_tokens)[0] * 1 / Decimal(1)
    return cost


def guess_provider(model: str) -> str:
    """The provider whose API serves a model name: claude -> anthropic, gemini/gemma -> gemini, else openai."""
    m = model.lower()
    if "claude" in m:
        return "anthropic"
    if "gemini" in m or "gemma" in m:
        return "gemini"
    return "openai"


# --- the genai-prices catalogue -------------------------------------------------------------

_CATALOGUE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok",
                   *MODALITY_KEYS)


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
    for ours, names in (("audio_hours", ("input_audio_hours", "audio_hours")), ("input_mchars", ("input_mchars",))):
        value = next((v for n in names if isinstance(v := getattr(mp, n, None), Decimal)), None)
        if value is not None:  # per hour of input audio / per million input characters
            out[ours] = Price(value, (), source)
    return out


def catalogue_rates(
    catalogue: pricing_catalogue.Catalogue, provider: str, model: str, at: datetime, variant: str = "standard"
) -> tuple[str, dict[str, Price], dict[str, Price]] | None:
    """(model id, standard rates, variant-only rates) from the catalogue, or None when not listed."""
    for pid, name in catalogue_candidates(provider, model):
        try:
            _, info = catalogue.snapshot.find_provider_model(name, None, pid, None)
            break
        except LookupError:
            continue
    else:
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
    multipliers: tuple[Multiplier, ...] = ()  # factors for serving modifiers (inference_geo us: 1.1)

    @property
    def has_prices(self) -> bool:
        return bool(self.prices.rates or self.prices.variants)

    def matches(self, provider: str, model: str, model_id: str | None) -> bool:
        if provider != self.provider:
            return False
        return any(n and (n == self.model or fnmatchcase(n, self.model)) for n in (model, model_id))


_SCHEMA_TEXT = resources.files("spendgate.pricing").joinpath("overrides.schema.json").read_text()


def overrides_schema() -> dict[str, Any]:
    return json.loads(_SCHEMA_TEXT)


@functools.cache
def _validator() -> Any:
    """The overrides schema's validator, built (and jsonschema imported, ~40-100 ms) on the first
    check a stamp does not answer: a start with unchanged overrides skips both (issue 18)."""
    import jsonschema

    return jsonschema.Draft202012Validator(overrides_schema())


def _explain(err: jsonschema.ValidationError, path: tuple, where: str) -> str | None:
    """Override-specific wording for the schema errors people actually make."""
    if err.validator in ("type", "minimum") and path and path[-1] in RATE_KEYS:
        return f"{where}: a rate must be a non-negative number of USD, not {err.instance!r}"
    if err.validator == "pattern" and path and path[-1] == "effective_from":
        return f"{where}: not a date (YYYY-MM-DD): {err.instance!r}"
    if err.validator == "anyOf":
        return f"{where}: give rates, tiers or variants"
    return None


def _prices(raw: dict[str, Any], source: str, ref: str = "") -> dict[str, Price]:
    """Override rates plus cliff tiers, reshaped per rate (a tier may name only some rates)."""
    out = {k: Price(Decimal(str(v)), (), source, ref) for k, v in (raw.get("rates") or {}).items()}
    tiered: dict[str, list[tuple[int, Decimal]]] = {}
    for t in raw.get("tiers") or []:
        for k, v in t["rates"].items():
            tiered.setdefault(k, []).append((int(t["above_input_tokens"]), Decimal(str(v))))
    for k, tiers in tiered.items():
        base = out[k].base if k in out else None
        out[k] = Price(base if base is not None else Decimal(-1), tuple(sorted(tiers)), source, ref)
    return out


def parse_overrides(text: str, file: str = "<overrides>") -> list[Override]:
    """Parse and validate overrides; raise PricingError listing every problem with its position."""
    doc, marks, problems = load_yaml_with_marks(text)
    if doc is None or not isinstance(doc, dict):
        raise PricingError(file, problems or [Problem(1, 1, "overrides are a mapping (version: 1, models: [...])")])
    stamp = schema_stamp(text, _SCHEMA_TEXT, "overrides-valid")  # this text passed this schema before
    if stamp is None or not private_stamp(stamp):
        problems += schema_problems(_validator(), doc, marks, _explain, list_known=True)
        if not problems and stamp is not None:
            remember_stamp(stamp)
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
        ref = (e.get("source") or e.get("note") or "").strip()  # what people wrote the entry from
        prices = OverridePrices(
            _prices(e, source, ref),
            {v: _prices(body, f"{source} ({v})", ref) for v, body in (e.get("variants") or {}).items()},
        )
        mults = tuple(Multiplier(name, str(value).lower(), Decimal(str(f)), source, e.get("source"))
                      for name, values in (e.get("multipliers") or {}).items() for value, f in values.items())
        out.append(Override(e["provider"], e["model"].lower(), day, prices, line, e.get("note"), mults))
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
        overrides_data: bytes | None = None,
    ) -> None:
        """`overrides_data`: the overrides file's bytes as the caller already read them (a reload)."""
        self.overrides_path = overrides_path
        self.overrides: list[Override] = []
        self.overrides_label: str | None = None
        self.overrides_sha256: str | None = None  # of the bytes these overrides were parsed from
        if overrides_path:
            try:  # read once: the label's hash is the hash of exactly what was parsed
                data = overrides_path.read_bytes() if overrides_data is None else overrides_data
            except OSError as e:
                raise PricingError(str(overrides_path), [Problem(1, 1, f"cannot read: {e.strerror or e}")]) from None
            self.overrides = parse_overrides(data.decode("utf-8", errors="replace"), str(overrides_path))
            self.overrides_sha256 = hashlib.sha256(data).hexdigest()
            self.overrides_label = f"{overrides_path.name} sha256:{self.overrides_sha256[:12]}"
        if catalogue is None:
            folder = catalogue_dir or (overrides_path.parent if overrides_path else None)
            try:
                catalogue = pricing_catalogue.load(folder)
            except (pricing_catalogue.CatalogueError, OSError) as e:
                raise PricingError(str(folder), [Problem(1, 1, f"catalogue: {e}")]) from None
        self.catalogue = catalogue
        self.copilot = copilot.load(catalogue_dir or (overrides_path.parent if overrides_path else None))
        self._cache: dict[tuple[str, str, date, str], Rates | None] = {}
        self._model_ids: frozenset[str] | None = None  # model_ids(), made on first use
        self._mult_cache: dict[tuple[str, str, date], dict[tuple[str, str], Multiplier]] = {}  # dict ops: atomic
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.catalogue.version + (f"; overrides {self.overrides_label}" if self.overrides_label else "")

    def catalogue_models(self, provider: str, glob: str) -> list[str]:
        """Model ids in the service's own catalogue table whose id matches `glob` (case-insensitive)."""
        pid = catalogue_candidates(provider, glob)[0][0]
        g = glob.lower()
        return [m.id for p in self.catalogue.providers if p.id == pid for m in p.models
                if fnmatch.fnmatchcase(m.id.lower(), g)]

    def model_ids(self) -> frozenset[str]:
        """Every model id of every provider in the catalogue, lower-case (policy checks' globs)."""
        if self._model_ids is None:
            self._model_ids = frozenset(m.id.lower() for p in self.catalogue.providers for m in p.models)
        return self._model_ids

    def context_window(self, provider: str, model: str) -> int | None:
        """The model's context window in tokens, from the catalogue (None: unknown or not listed)."""
        for pid, name in catalogue_candidates(provider, model):
            try:
                _, info = self.catalogue.snapshot.find_provider_model(name, None, pid, None)
            except LookupError:
                continue
            return getattr(info, "context_window", None)
        return None

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
        """The latest override with rates in force on `day` for this model (by request name or catalogue id)."""
        best: Override | None = None
        for o in self.overrides:
            if o.has_prices and o.effective_from <= day and o.matches(provider, model, model_id):
                if best is None or o.effective_from > best.effective_from:
                    best = o
        return best

    def multipliers_for(self, provider: str, model: str, model_id: str | None, day: date) -> dict[tuple[str, str], Multiplier]:
        """(modifier, value) -> the latest multiplier in force on `day` for this model."""
        best: dict[tuple[str, str], tuple[date, Multiplier]] = {}
        for o in self.overrides:
            if o.multipliers and o.effective_from <= day and o.matches(provider, model, model_id):
                for m in o.multipliers:
                    key = (m.name, m.value)
                    if key not in best or o.effective_from > best[key][0]:
                        best[key] = (o.effective_from, m)
        return {k: m for k, (_, m) in best.items()}

    def price(
        self,
        provider: str,
        model: str | None,
        usage: Usage,
        at: datetime,
        variant: str | None = None,
        modifiers: dict[str, str] | None = None,
    ) -> PriceResult:
        """Price a request. `modifiers` are what the provider reported about serving it (speed,
        inference_geo, service_tier); they pick the variant (unless `variant` is given) and the
        multipliers, and each one is listed in the result with its effect and source."""
        if modifiers:
            modifiers = {k: str(v).lower() for k, v in modifiers.items() if v}
        variant = variant or (variant_for(modifiers) if modifiers else "standard")
        rates = self.rates(provider, model, at, variant) if model else None
        if rates is None:
            log.warning("no price for %s model %r: recorded as unpriced", provider, model)
            return PriceResult(None, "unknown", catalogue=self.catalogue.version, overrides=self.overrides_label)
        if not modifiers:  # the common case: nothing reported about serving
            return compute(rates, usage, catalogue=self.catalogue.version, overrides=self.overrides_label)
        day = at.astimezone(UTC).date()
        known: dict[tuple[str, str], Multiplier] = {}
        if modifiers and self.overrides:
            mkey = (provider, model.lower(), day)
            cached = self._mult_cache.get(mkey)
            if cached is None:
                cached = self._mult_cache[mkey] = self.multipliers_for(provider, model.lower(), rates.model_id, day)
            known = cached
        applied: list[Multiplier] = []
        described: list[dict[str, str]] = []
        notes: list[str] = []
        for name, value in sorted(modifiers.items()):
            if value in PLAIN_MODIFIER_VALUES:
                continue
            m = known.get((name, value))
            if m is not None:
                applied.append(m)
                described.append({"name": name, "value": value, "effect": f"x{m.factor.normalize()} on token rates",
                                  "source": m.source + (f" ({m.reference})" if m.reference else "")})
            elif variant != "standard" and (name, value) in (("speed", variant), ("service_tier", variant)):
                src = sorted({p.source for p in rates.prices.values() if f"({variant})" in p.source})
                described.append({"name": name, "value": value, "effect": f"{variant} rates",
                                  "source": " + ".join(src) or "none listed: standard rates"})
            elif name != "service_tier":  # tiers keep their old behaviour (a note from rates())
                notes.append(f"{name} {value}: no rate or multiplier is known for it; standard rates used")
                described.append({"name": name, "value": value, "effect": "none known", "source": ""})
        result = compute(rates, usage, tuple(applied), catalogue=self.catalogue.version, overrides=self.overrides_label)
        if not described:  # every value was plain (service_tier standard, ...): nothing to add to the detail
            return result
        return replace(result, modifiers=tuple(described), notes=(*result.notes, *notes), late_notes=tuple(notes))


def reported(list_price: PriceResult, cost: Decimal, provider: str, field_name: str = "usage.cost") -> PriceResult:
    """The cost a provider stated in its response (OpenRouter ``usage.cost``), list price alongside.

    The provider's own figure is what the account is billed, so it wins; the list-price
    equivalent from the catalogue stays in the detail so both can be compared in ``explain``.
    """
    source = f"{REPORTED_SOURCE} ({provider} {field_name})"
    line = PriceLine("provider-reported cost", 1, cost, Decimal(1), field_name, cost, source)
    listed = {"total": None if list_price.cost is None else str(list_price.cost), "source": list_price.source,
              "model_id": list_price.model_id}
    return replace(list_price, cost=cost, source=source, lines=(line,), tier_above=None,
                   notes=(*list_price.notes, f"cost as reported by {provider} in {field_name}"),
                   alternatives={**list_price.alternatives, "list_price": listed}, reported_as=(provider, field_name))


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
        for m in o.multipliers:  # the catalogue has no multipliers: each one is an addition to check
            out.append({"provider": o.provider, "model": o.model, "effective_from": o.effective_from.isoformat(),
                        "variant": "standard", "field": f"multiplier {m.name} {m.value}",
                        "override": f"x{m.factor.normalize()}", "catalogue": None, "status": "catalogue lacks"})
        sets = [("standard", o.prices.rates), *o.prices.variants.items()]
        for variant, mine in sets:
            if not mine:  # a multipliers-only entry, or variants without standard rates
                continue
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
