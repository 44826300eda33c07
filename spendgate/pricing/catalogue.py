"""The pinned price catalogue: genai-prices data in its own JSON format, kept in `pricing/`.

Prices change; a catalogue that silently moves with a package upgrade makes last month's costs
unreproducible. So the catalogue in use is a file in the repository (`pricing/catalogue.json`,
genai-prices' published data format, trimmed to the providers spendgate meters) plus a lock
(`pricing/catalogue.lock.json`: sha256, where it came from, when). `spendgate prices update`
replaces both only after a person saw the diff. Without the file, genai-prices' bundled data is
used and says so in every row's price source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices import data_snapshot, types

from spendgate import fsutil, outbound

log = logging.getLogger(__name__)

CATALOGUE_FILE = "catalogue.json"
LOCK_FILE = "catalogue.lock.json"
# genai-prices provider ids for what spendgate meters (see CATALOGUE_PROVIDER in rates.py for which
# service each prices); google also carries Claude-on-Vertex and falls back to anthropic, azure falls
# back to openai/anthropic/deepseek/x-ai, so those stay together.
KEPT_PROVIDERS = (
    "anthropic", "openai", "google",
    "aws",  # Bedrock
    "azure",  # Azure OpenAI / AI Foundry
    "github-copilot",  # Copilot, list-price equivalent
    "openrouter", "deepseek", "mistral", "x-ai", "groq", "together", "fireworks",
)
FORMAT = "genai-prices data v2"
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024


class CatalogueError(ValueError):
    """A catalogue file we cannot use; the message says which and why."""


@dataclass(frozen=True)
class Catalogue:
    """Parsed providers plus the version that every price taken from them is labelled with."""

    providers: list[types.Provider]
    version: str  # e.g. "genai-prices data sha256:1a2b3c4d5e6f" or "genai-prices 0.2.3 bundled"
    sha256: str | None = None

    @cached_property
    def snapshot(self) -> data_snapshot.DataSnapshot:
        """A genai-prices lookup over these providers (it caches model matches, so keep one)."""
        return data_snapshot.DataSnapshot(providers=self.providers, from_auto_update=False)


# --- dataclasses <-> genai-prices JSON ---------------------------------------------------------


def _to_raw(value: Any) -> Any:
    """genai-prices' in-memory types back to the JSON shape its loader reads."""
    if isinstance(value, types.ModelPrice):
        return {k: _to_raw(v) for k, v in value.__dict__.items() if v is not None and not k.startswith("_")}
    if isinstance(value, (types.ClauseOr, types.ClauseAnd)):
        name = "or" if isinstance(value, types.ClauseOr) else "and"
        return {name: [_to_raw(c) for c in (value.or_ if name == "or" else value.and_)]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            if f.name.startswith("_"):
                continue
            v = getattr(value, f.name)
            if v is not None:
                out[f.name] = _to_raw(v)
        return out
    if isinstance(value, list):
        return [_to_raw(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_raw(v) for k, v in value.items()}
    if isinstance(value, (date, time)):
        return value.isoformat()
    return value


class _DecimalEncoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, Decimal):
            # shortest float repr round-trips for the <=15 significant digits prices have
            return int(o) if o == o.to_integral_value() else float(o)
        return super().default(o)


def dumps(raw: list[dict[str, Any]]) -> str:
    return json.dumps(raw, cls=_DecimalEncoder, separators=(",", ":"), ensure_ascii=False) + "\n"


def providers_to_raw(providers: list[types.Provider]) -> list[dict[str, Any]]:
    return [_to_raw(p) for p in providers]


def parse_raw(raw: Any, where: str) -> list[types.Provider]:
    """Validate with genai-prices' own loader (the one UpdatePrices uses)."""
    if not isinstance(raw, list):
        raise CatalogueError(f"{where}: expected a JSON array of providers ({FORMAT})")
    try:
        return types._providers_from_raw(raw)  # noqa: SLF001 - genai-prices' own parser for this format
    except Exception as e:  # pydantic.ValidationError and friends
        first = str(e).splitlines()[:6]
        raise CatalogueError(f"{where}: not genai-prices data: {' '.join(first)}") from None


def trim(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the providers spendgate meters (and their fallbacks), in a stable order."""
    keep = [p for p in raw if isinstance(p, dict) and p.get("id") in KEPT_PROVIDERS]
    return sorted(keep, key=lambda p: KEPT_PROVIDERS.index(p["id"]))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def version_label(sha: str) -> str:
    return f"genai-prices data sha256:{sha[:12]}"


# --- loading ---------------------------------------------------------------------------------


def bundled() -> Catalogue:
    """genai-prices' data shipped inside the installed package (a fallback, not the pin)."""
    return Catalogue(data_snapshot._bundled_snapshot().providers, f"genai-prices {genai_prices.__version__} bundled")  # noqa: SLF001


def load_file(path: Path) -> Catalogue:
    text = path.read_text()
    try:
        raw = json.loads(text, parse_float=Decimal)
    except ValueError as e:
        raise CatalogueError(f"{path}: not JSON: {e}") from None
    sha = sha256_text(text)
    return Catalogue(parse_raw(raw, str(path)), version_label(sha), sha)


def load(pricing_dir: Path | None) -> Catalogue:
    """The pinned catalogue in `pricing_dir`, else the bundled one."""
    if pricing_dir is not None and (pricing_dir / CATALOGUE_FILE).exists():
        return load_file(pricing_dir / CATALOGUE_FILE)
    return bundled()


def read_lock(pricing_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((pricing_dir / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}


def fetch(source: str) -> str:
    """Read a catalogue from a file path or an http(s) URL (a mirror, or the upstream data.json)."""
    if source.startswith(("http://", "https://")):
        req = urllib.request.Request(source, headers={"User-Agent": "spendgate prices update"})
        with outbound.open_url(req, timeout=30) as resp:  # environment proxies; loopback direct
            data = resp.read(MAX_DOWNLOAD_BYTES + 1)
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise CatalogueError(f"{source}: larger than {MAX_DOWNLOAD_BYTES} bytes")
        return data.decode()
    return Path(source).expanduser().read_text()


def prepare(text: str, where: str) -> tuple[str, Catalogue]:
    """Parse a downloaded catalogue and produce the trimmed text we would pin."""
    try:
        raw = json.loads(text, parse_float=Decimal)
    except ValueError as e:
        raise CatalogueError(f"{where}: not JSON: {e}") from None
    parse_raw(raw, where)  # the whole file must be valid, not just the part we keep
    kept = trim(raw)
    if not kept:
        raise CatalogueError(f"{where}: has none of the providers spendgate meters ({', '.join(KEPT_PROVIDERS)})")
    out = dumps(kept)
    sha = sha256_text(out)
    return out, Catalogue(parse_raw(json.loads(out, parse_float=Decimal), where), version_label(sha), sha)


def write(pricing_dir: Path, text: str, source: str, previous: str | None) -> dict[str, Any]:
    """Pin a catalogue: the data file and its lock, each replaced atomically."""
    sha = sha256_text(text)
    lock = {
        "format": FORMAT,
        "sha256": sha,
        "version": version_label(sha),
        "source": source,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "previous": previous,
        "providers": list(KEPT_PROVIDERS),
    }
    pricing_dir.mkdir(parents=True, exist_ok=True)
    for name, content in ((CATALOGUE_FILE, text), (LOCK_FILE, json.dumps(lock, indent=2) + "\n")):
        fsutil.write_atomic(pricing_dir / name, content.encode(), 0o644)  # public price data, shared
    return lock


# --- what changed ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    provider: str
    model: str
    field: str  # e.g. "input_mtok", "output_mtok >200000", "batch: input_mtok", "(model)"
    old: str | None
    new: str | None
    effective: str  # the date the new price applies from ("always" when undated)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fmt(v: Any) -> str:
    return format(v.normalize(), "f") if isinstance(v, Decimal) else str(v)


def _flatten_price(mp: types.ModelPrice, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in mp.__dict__.items():
        if value is None or key.startswith("_"):
            continue
        if isinstance(value, types.TieredPrices):
            out[prefix + key] = _fmt(value.base)
            for t in value.tiers:
                out[f"{prefix}{key} >{t.start}"] = _fmt(t.price)
        else:
            out[prefix + key] = _fmt(value)
    return out


def _starts(m: types.ModelInfo) -> set[date]:
    """Every date on which some price of this model (standard or variant) starts."""
    conds = [] if isinstance(m.prices, types.ModelPrice) else m.prices
    out = {c.constraint.start_date for c in conds if isinstance(c.constraint, types.StartDateConstraint)}
    out |= {v.constraint.start_date for v in m.price_variants or () if isinstance(v.constraint, types.StartDateConstraint)}
    return out


def _in_force(m: types.ModelInfo | None, day: date | None) -> dict[str, str]:
    """Every price of a model on a day (None: before any dated change), variants included."""
    if m is None:
        return {}
    at = datetime(1970, 1, 1, tzinfo=UTC) if day is None else datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    out = _flatten_price(m.get_prices(at))
    for v in m.price_variants or ():
        label = ",".join(f"{k}={val}" for k, val in sorted(v.when.items()))
        resolved = _flatten_price(m.get_prices(at, v.when), f"{label}: ")
        out.update({k: val for k, val in resolved.items() if out.get(k.split(": ", 1)[1]) != val})
    return out


def _models(cat: Catalogue) -> Iterator[tuple[str, str, types.ModelInfo]]:
    for p in cat.providers:
        if p.id in KEPT_PROVIDERS:
            for m in p.models:
                yield p.id, m.id, m


def diff(old: Catalogue, new: Catalogue) -> list[Change]:
    """Model-by-model, field-by-field differences, with the date each new price applies from."""
    a = {(p, mid): m for p, mid, m in _models(old)}
    b = {(p, mid): m for p, mid, m in _models(new)}
    changes: list[Change] = []
    for key in sorted(a.keys() | b.keys()):
        prov, mid = key
        if key not in a:
            changes.append(Change(prov, mid, "(model)", None, "added", "always"))
            continue
        if key not in b:
            changes.append(Change(prov, mid, "(model)", "listed", None, "-"))
            continue
        days = [None, *sorted(_starts(a[key]) | _starts(b[key]))]
        reported: dict[str, tuple[str | None, str | None]] = {}
        for day in days:
            fa, fb = _in_force(a[key], day), _in_force(b[key], day)
            for f in sorted(fa.keys() | fb.keys()):
                pair = (fa.get(f), fb.get(f))
                if pair[0] != pair[1] and reported.get(f) != pair:
                    changes.append(Change(prov, mid, f, *pair, day.isoformat() if day else "always"))
                if pair[0] != pair[1]:
                    reported[f] = pair
                else:
                    reported.pop(f, None)
    return changes
