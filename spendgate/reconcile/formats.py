"""Provider billing reports -> `BillingLine`s: what the provider says it charged, one line per item.

Formats read (documented shapes; see tests/fixtures/billing/README.md for the doc pages):

* Anthropic Admin API `GET /v1/organizations/cost_report`: `amount` is a decimal string in the
  currency's lowest unit (cents), so "123.45" is $1.2345.
* Anthropic Admin API `GET /v1/organizations/usage_report/messages`: tokens only; we price them.
* OpenAI `GET /v1/organization/costs`: `amount.value` in dollars, `line_item` "model, input".
* OpenAI `GET /v1/organization/usage/completions`: tokens only (input includes cached); we price them.
* Console CSV exports (OpenAI cost export, Claude Console cost export), mapped by header name.

Every line carries a natural key (`line_id`), so importing the same report twice, or a restated
report for the same period, replaces lines instead of adding them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from spendgate.usage import Usage

PROVIDERS = ("anthropic", "openai")
CENTS = Decimal(100)
ZERO = Decimal(0)


class BillingFormatError(ValueError):
    """The file is not a billing report we can read; the message says what was expected."""


@dataclass(slots=True)
class BillingLine:
    provider: str
    source: str  # which report: anthropic_cost_report, openai_costs, openai_cost_csv, ...
    kind: str  # "cost": the provider's dollars; "usage": tokens the provider counted, priced by us
    day: date  # UTC day of the bucket
    bucket_start: datetime
    amount_usd: Decimal | None
    model: str | None = None
    workspace: str | None = None  # Anthropic workspace_id / OpenAI project_id
    api_key: str | None = None  # the provider's key id (apikey_..., key_...): an id, not a secret
    description: str | None = None
    input_tokens: int = 0  # all input, cache reads and writes included (our Usage semantics)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    requests: int | None = None
    natural_key: tuple = field(default=(), repr=False)
    given_id: str | None = field(default=None, repr=False)  # a line received over the admin API

    @property
    def line_id(self) -> str:
        if self.given_id:
            return self.given_id
        raw = json.dumps([self.provider, self.source, *map(str, self.natural_key)])
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


# --- helpers -----------------------------------------------------------------------------------


def _ts(value: Any) -> datetime:
    """RFC 3339 text or Unix seconds -> aware UTC datetime."""
    if isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit()):
        return datetime.fromtimestamp(int(value), UTC)
    if isinstance(value, str) and value:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)
    raise BillingFormatError(f"not a timestamp: {value!r}")


def _dec(value: Any, where: str) -> Decimal:
    try:
        d = Decimal(str(value).strip().replace(",", "").lstrip("$"))
    except (InvalidOperation, AttributeError):
        raise BillingFormatError(f"{where}: not a number: {value!r}") from None
    if not d.is_finite():  # NaN or Infinity would make every sum of the report NaN or infinite
        raise BillingFormatError(f"{where}: not a finite amount: {value!r}")
    return d


def _int(value: Any) -> int:
    return int(value or 0)


def model_from_line_item(line_item: str | None) -> str | None:
    """OpenAI cost line items read "gpt-4o-2024-08-06, input"; the model is before the comma."""
    if not line_item:
        return None
    head = line_item.split(",", 1)[0].strip()
    return head if "," in line_item and head else None


# --- JSON reports ------------------------------------------------------------------------------


def _anthropic_buckets(doc: dict) -> Iterable[tuple[datetime, dict]]:
    for bucket in doc.get("data") or []:
        start = _ts(bucket["starting_at"])
        for r in bucket.get("results") or []:
            yield start, r


def anthropic_cost_report(doc: dict, price: Callable | None = None) -> list[BillingLine]:
    out = []
    for start, r in _anthropic_buckets(doc):
        currency = (r.get("currency") or "USD").upper()
        if currency != "USD":
            raise BillingFormatError(f"cost in {currency}: only USD reports are supported")
        dims = ("workspace_id", "description", "cost_type", "token_type", "model", "service_tier",
                "context_window", "inference_geo", "speed")  # fmt: skip
        out.append(BillingLine(
            "anthropic", "anthropic_cost_report", "cost", start.date(), start,
            _dec(r.get("amount"), "cost_report amount") / CENTS,  # lowest currency unit: cents
            model=r.get("model"), workspace=r.get("workspace_id"), description=r.get("description"),
            natural_key=(start.isoformat(), *(r.get(d) for d in dims)),
        ))  # fmt: skip
    return out


def anthropic_usage_report(doc: dict, price: Callable | None = None) -> list[BillingLine]:
    out = []
    for start, r in _anthropic_buckets(doc):
        cc = r.get("cache_creation") or {}
        w5, w1h = _int(cc.get("ephemeral_5m_input_tokens")), _int(cc.get("ephemeral_1h_input_tokens"))
        reads = _int(r.get("cache_read_input_tokens"))
        usage = Usage(
            input_tokens=_int(r.get("uncached_input_tokens")) + reads + w5 + w1h,  # Anthropic excludes cache
            cache_read_tokens=reads, cache_write_tokens=w5 + w1h, cache_write_1h_tokens=w1h,
            output_tokens=_int(r.get("output_tokens")),
            web_search_requests=_int((r.get("server_tool_use") or {}).get("web_search_requests")),
        )  # fmt: skip
        model = r.get("model")
        dims = ("api_key_id", "workspace_id", "model", "service_tier", "context_window", "inference_geo",
                "account_id", "service_account_id", "speed")  # fmt: skip
        out.append(_usage_line("anthropic", "anthropic_usage_report", start, usage, model, r.get("workspace_id"),
                               r.get("api_key_id"), None, price, (start.isoformat(), *(r.get(d) for d in dims)),
                               long_context=r.get("context_window") == "200k-1M"))
    return out


def _openai_buckets(doc: dict) -> Iterable[tuple[datetime, dict]]:
    for bucket in doc.get("data") or []:
        start = _ts(bucket["start_time"])
        for r in bucket.get("results") or []:
            yield start, r


def openai_costs(doc: dict, price: Callable | None = None) -> list[BillingLine]:
    out = []
    for start, r in _openai_buckets(doc):
        amount = r.get("amount") or {}
        currency = (amount.get("currency") or "usd").lower()
        if currency != "usd":
            raise BillingFormatError(f"cost in {currency}: only USD reports are supported")
        item = r.get("line_item")
        out.append(BillingLine(
            "openai", "openai_costs", "cost", start.date(), start, _dec(amount.get("value", 0), "costs amount.value"),
            model=model_from_line_item(item), workspace=r.get("project_id"), api_key=r.get("api_key_id"),
            description=item, natural_key=(start.isoformat(), item, r.get("project_id"), r.get("api_key_id")),
        ))  # fmt: skip
    return out


def openai_usage_completions(doc: dict, price: Callable | None = None) -> list[BillingLine]:
    out = []
    for start, r in _openai_buckets(doc):
        usage = Usage(
            input_tokens=_int(r.get("input_tokens")),  # OpenAI includes cached tokens
            cache_read_tokens=_int(r.get("input_cached_tokens")),
            output_tokens=_int(r.get("output_tokens")),
        )
        dims = ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier")
        line = _usage_line("openai", "openai_usage_completions", start, usage, r.get("model"), r.get("project_id"),
                           r.get("api_key_id"), _int(r.get("num_model_requests")), price,
                           (start.isoformat(), *(r.get(d) for d in dims)))
        out.append(line)
    return out


SAMPLE = 100_000  # tokens per probe: below every long-context threshold
LONG_BASE = 250_000  # input that puts a probe above the 200k threshold


def aggregate_cost(price: Callable, provider: str, model: str, usage: Usage, at: datetime,
                   long_context: bool = False) -> Decimal | None:  # fmt: skip
    """Price a day's aggregated tokens at per-token rates.

    Tier cliffs apply per request, so pricing a whole day as one request would put everything in
    the long-context tier. Instead each token kind's marginal rate is probed on a request-sized
    sample (in the long-context tier only when the report says the tokens were), then multiplied.
    """

    def cost(u: Usage) -> Decimal | None:
        return price(provider, model, u, at)

    base = Usage(input_tokens=LONG_BASE if long_context else 0)
    b = cost(base)
    if b is None:
        return None

    def rate(extra: Usage, qty: int) -> Decimal:
        u = Usage(**{k: getattr(base, k) + getattr(extra, k) for k in Usage.__slots__})
        c = cost(u)
        return ZERO if c is None else (c - b) / qty

    n = SAMPLE
    w1h = usage.cache_write_1h_tokens
    return (
        usage.uncached_input_tokens * rate(Usage(input_tokens=n), n)
        + usage.cache_read_tokens * rate(Usage(input_tokens=n, cache_read_tokens=n), n)
        + usage.cache_write_5m_tokens * rate(Usage(input_tokens=n, cache_write_tokens=n), n)
        + (w1h and w1h * rate(Usage(input_tokens=n, cache_write_tokens=n, cache_write_1h_tokens=n), n))
        + usage.output_tokens * rate(Usage(output_tokens=n), n)
        + (usage.web_search_requests and usage.web_search_requests * rate(Usage(web_search_requests=1), 1))
    )


def _usage_line(provider, source, start, usage: Usage, model, workspace, api_key, requests, price, key,
                long_context: bool = False) -> BillingLine:  # fmt: skip
    """A usage-report line: tokens as reported, dollars from our own prices (None if unknown)."""
    amount = aggregate_cost(price, provider, model, usage, start, long_context) if price and model else None
    return BillingLine(
        provider, source, "usage", start.date(), start, amount, model=model, workspace=workspace, api_key=api_key,
        input_tokens=usage.input_tokens, cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens, requests=requests,
        natural_key=key,
    )  # fmt: skip


# --- CSV exports -------------------------------------------------------------------------------

# Header aliases, lower-cased. OpenAI's cost export is documented (start_time, end_time,
# amount_value, amount_currency, line_item, project_id, ...). The Claude Console's export is not
# documented field by field, so its columns are matched by these names; anything else is ignored.
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "start": ("start_time", "usage_date_utc", "date", "starting_at", "day", "usage_date"),
    "amount": ("amount_value", "cost_usd", "amount", "cost", "total_cost_usd", "cost (usd)"),
    "currency": ("amount_currency", "currency"),
    "model": ("model", "model_name"),
    "line_item": ("line_item", "description", "cost_description"),
    "workspace": ("project_id", "workspace_id", "workspace", "workspace_name", "project_name"),
    "api_key": ("api_key_id", "api_key", "api_key_name"),
    "token_type": ("token_type", "usage_type", "cost_type"),
}


def _columns(header: list[str]) -> dict[str, str]:
    lower = {h.strip().lower(): h for h in header}
    found = {}
    for name, aliases in CSV_COLUMNS.items():
        for a in aliases:
            if a in lower:
                found[name] = lower[a]
                break
    return found


def cost_csv(text: str, provider: str) -> list[BillingLine]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    cols = _columns(reader.fieldnames or [])
    missing = [c for c in ("start", "amount") if c not in cols]
    if missing:
        raise BillingFormatError(
            f"CSV has no {' or '.join(missing)} column (looked for {', '.join(CSV_COLUMNS[missing[0]])}); "
            "export the console's cost data as CSV"
        )
    out = []
    for n, row in enumerate(reader, start=2):
        get = lambda c: (row.get(cols[c]) or "").strip() or None if c in cols else None  # noqa: E731
        currency = (get("currency") or "usd").lower()
        if currency != "usd":
            raise BillingFormatError(f"line {n}: cost in {currency}: only USD exports are supported")
        start = _ts(get("start"))
        item = get("line_item")
        model = get("model") or (model_from_line_item(item) if provider == "openai" else None)
        key = (start.isoformat(), item, model, get("workspace"), get("api_key"), get("token_type"))
        out.append(BillingLine(
            provider, f"{provider}_cost_csv", "cost", start.date(), start, _dec(get("amount") or 0, f"line {n} amount"),
            model=model, workspace=get("workspace"), api_key=get("api_key"), description=item, natural_key=key,
        ))  # fmt: skip
    return out


# --- detection ---------------------------------------------------------------------------------

JSON_FORMATS: dict[str, tuple[str, Callable[..., list[BillingLine]]]] = {
    "anthropic_cost_report": ("anthropic", anthropic_cost_report),
    "anthropic_usage_report": ("anthropic", anthropic_usage_report),
    "openai_costs": ("openai", openai_costs),
    "openai_usage_completions": ("openai", openai_usage_completions),
}


def detect_json(doc: Any) -> str | None:
    """Which report a parsed JSON document is, from its documented field names."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        return None
    buckets = doc["data"]
    first = next((r for b in buckets for r in (b.get("results") or [])), None)
    if buckets and "start_time" in buckets[0] or doc.get("object") == "page":
        if first is None:
            return "openai_costs"  # an empty page: nothing to import either way
        obj = first.get("object", "")
        if obj == "organization.costs.result" or "amount" in first:
            return "openai_costs"
        if obj == "organization.usage.completions.result" or "num_model_requests" in first:
            return "openai_usage_completions"
        return None
    if first is None:
        return "anthropic_cost_report" if not buckets or "starting_at" in buckets[0] else None
    if "uncached_input_tokens" in first or "cache_creation" in first:
        return "anthropic_usage_report"
    if "amount" in first:
        return "anthropic_cost_report"
    return None


def parse(text: str, provider: str, price: Callable | None = None) -> tuple[str, list[BillingLine]]:
    """Any supported report (JSON or CSV) for `provider` -> (format name, lines)."""
    if provider not in PROVIDERS:
        raise BillingFormatError(f"unknown provider {provider!r} (one of {', '.join(PROVIDERS)})")
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith(("{", "[")):
        try:
            doc = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise BillingFormatError(f"not valid JSON: {e}") from None
        docs = doc if isinstance(doc, list) else [doc]  # a saved list of pages
        fmt, lines = None, []
        for page in docs:
            name = detect_json(page)
            if name is None:
                raise BillingFormatError(
                    "JSON is not an Anthropic cost_report / usage_report/messages response nor an OpenAI "
                    "organization costs / usage/completions response"
                )
            owner, fn = JSON_FORMATS[name]
            if owner != provider:
                raise BillingFormatError(f"this is an {owner} report ({name}), not {provider}")
            fmt = fmt or name
            lines += fn(page, price)
        return fmt or "empty", lines
    return f"{provider}_cost_csv", cost_csv(text, provider)


MODEL_DATE = re.compile(r"(-\d{8}|-\d{4}-\d{2}-\d{2}|@\d{8})$")


def model_key(model: str | None) -> str:
    """Compare models across sources: lower case, dated snapshot suffix dropped."""
    if not model:
        return "(unknown)"
    return MODEL_DATE.sub("", model.strip().lower())
