"""Fetch billing reports from the providers' admin APIs, following every page.

The admin key comes from the environment only (never an argument: it would land in shell history
and `ps`), is sent only to the configured base URL, and is never logged. The base URL can be
pointed at a local fake for tests; plain http is refused except on loopback.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any
from urllib.parse import urlencode, urlsplit

from spendgate import outbound
from spendgate.reconcile import formats
from spendgate.reconcile.formats import BillingLine

log = logging.getLogger(__name__)

MAX_PAGES = 1000  # a provider that keeps saying has_more must not loop us forever


class FetchError(RuntimeError):
    """The provider could not be asked; the message says why and what to set."""


@dataclass(frozen=True)
class Endpoint:
    name: str  # the formats parser it feeds
    path: str
    params: list[tuple[str, str]]


@dataclass(frozen=True)
class ProviderApi:
    key_envs: tuple[str, ...]
    url_env: str
    default_url: str
    endpoints: tuple[Endpoint, ...]

    def headers(self, key: str) -> dict[str, str]:
        raise NotImplementedError

    def start_params(self, since: date) -> list[tuple[str, str]]:
        raise NotImplementedError


class _Anthropic(ProviderApi):
    def headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}

    def start_params(self, since: date) -> list[tuple[str, str]]:
        start = datetime.combine(since, time(0), UTC).isoformat().replace("+00:00", "Z")
        return [("starting_at", start), ("bucket_width", "1d"), ("limit", "31")]


class _OpenAI(ProviderApi):
    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def start_params(self, since: date) -> list[tuple[str, str]]:
        return [("start_time", str(int(datetime.combine(since, time(0), UTC).timestamp()))),
                ("bucket_width", "1d"), ("limit", "31")]  # fmt: skip


APIS: dict[str, ProviderApi] = {
    "anthropic": _Anthropic(
        ("ANTHROPIC_ADMIN_KEY", "ANTHROPIC_ADMIN_API_KEY"), "SPENDGATE_ANTHROPIC_ADMIN_URL", "https://api.anthropic.com",
        (
            Endpoint("anthropic_cost_report", "/v1/organizations/cost_report",
                     [("group_by[]", "workspace_id"), ("group_by[]", "description")]),
            Endpoint("anthropic_usage_report", "/v1/organizations/usage_report/messages",
                     [("group_by[]", "model"), ("group_by[]", "api_key_id"), ("group_by[]", "workspace_id")]),
        ),
    ),  # fmt: skip
    "openai": _OpenAI(
        ("OPENAI_ADMIN_KEY",), "SPENDGATE_OPENAI_ADMIN_URL", "https://api.openai.com",
        (
            Endpoint("openai_costs", "/v1/organization/costs",
                     [("group_by", "line_item"), ("group_by", "project_id")]),
            Endpoint("openai_usage_completions", "/v1/organization/usage/completions",
                     [("group_by", "model"), ("group_by", "project_id"), ("group_by", "api_key_id")]),
        ),
    ),  # fmt: skip
}


def admin_key(provider: str, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    api = APIS[provider]
    for name in api.key_envs:
        if env.get(name, "").strip():
            return env[name].strip()
    raise FetchError(f"set {api.key_envs[0]} to an {provider} admin API key (it is read from the environment only)")


def base_url(provider: str, override: str | None = None, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    url = (override or env.get(APIS[provider].url_env) or APIS[provider].default_url).rstrip("/")
    u = urlsplit(url)
    if u.scheme != "https" and not (u.scheme == "http" and u.hostname in ("127.0.0.1", "localhost", "::1")):
        raise FetchError(f"refusing to send an admin key to {url}: use https (plain http only on loopback)")
    return url


Getter = Callable[[str, dict[str, str]], dict[str, Any]]


def http_get(url: str, headers: dict[str, str]) -> dict[str, Any]:
    req = urllib.request.Request(url, headers={**headers, "Accept": "application/json"})
    try:
        with outbound.open_url(req, timeout=60) as resp:  # environment proxies; loopback direct
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        body = e.read()[:500].decode(errors="replace")
        raise FetchError(f"{urlsplit(url).path} answered {e.code}: {body}") from None
    except (OSError, ValueError) as e:
        raise FetchError(f"cannot fetch {urlsplit(url).path}: {e}") from None


def pages(base: str, ep: Endpoint, params: list[tuple[str, str]], headers: dict[str, str],
          get: Getter = http_get) -> list[dict[str, Any]]:  # fmt: skip
    """Every page of one report, following has_more/next_page."""
    out, page = [], None
    for _ in range(MAX_PAGES):
        q = params + ep.params + ([("page", page)] if page else [])
        doc = get(f"{base}{ep.path}?{urlencode(q)}", headers)
        out.append(doc)
        page = doc.get("next_page")
        if not doc.get("has_more") or not page:
            return out
    raise FetchError(f"{ep.path}: still has_more after {MAX_PAGES} pages; narrow --since")


def fetch(provider: str, since: date, *, until: date | None = None, url: str | None = None,
          price: Callable | None = None, get: Getter = http_get,
          env: dict[str, str] | None = None) -> dict[str, list[BillingLine]]:  # fmt: skip
    """Cost and usage reports since `since` (UTC day), as billing lines per report."""
    if provider not in APIS:
        raise FetchError(f"unknown provider {provider!r} (one of {', '.join(APIS)})")
    api = APIS[provider]
    base = base_url(provider, url, env)
    headers = api.headers(admin_key(provider, env))
    params = api.start_params(since)
    if until:
        end = datetime.combine(until, time(0), UTC)
        params.append(("ending_at", end.isoformat().replace("+00:00", "Z")) if provider == "anthropic"
                      else ("end_time", str(int(end.timestamp()))))  # fmt: skip
    result = {}
    for ep in api.endpoints:
        docs = pages(base, ep, params, headers, get)
        parser = formats.JSON_FORMATS[ep.name][1]
        result[ep.name] = [line for d in docs for line in parser(d, price)]
        log.info("fetched %s: %d pages, %d lines", ep.name, len(docs), len(result[ep.name]))
    return result
