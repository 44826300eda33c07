"""Provider registry: host/path -> adapter, unmetered provider paths, mitmproxy allow_hosts."""

from __future__ import annotations

import re

import pytest

from spendgate.metering.providers import PROVIDER_HOSTS, allow_hosts_regexes, route
from spendgate.metering.providers.anthropic import COUNT_TOKENS, MESSAGES
from spendgate.metering.providers.gemini import (
    GENERATE_CONTENT,
    STREAM_GENERATE_CONTENT,
)
from spendgate.metering.providers.openai_chat import CHAT
from spendgate.metering.providers.openai_responses import RESPONSES


@pytest.mark.parametrize(
    ("host", "path", "adapter", "provider"),
    [
        ("api.anthropic.com", "/v1/messages", MESSAGES, "anthropic"),
        ("api.anthropic.com", "/v1/messages?beta=true", MESSAGES, "anthropic"),
        ("API.Anthropic.com:443", "/v1/messages/", MESSAGES, "anthropic"),
        ("api.anthropic.com", "/v1/messages/count_tokens?beta=true", COUNT_TOKENS, "anthropic"),
        ("api.openai.com", "/v1/chat/completions", CHAT, "openai"),
        ("api.openai.com", "/v1/responses", RESPONSES, "openai"),
        ("chatgpt.com", "/backend-api/codex/responses", RESPONSES, "openai"),
        ("generativelanguage.googleapis.com", "/v1beta/models/g:generateContent", GENERATE_CONTENT, "gemini"),
        ("generativelanguage.googleapis.com", "/v1beta/models/g:streamGenerateContent?alt=sse",
         STREAM_GENERATE_CONTENT, "gemini"),
    ],
)
def test_metered_routes(host: str, path: str, adapter: object, provider: str) -> None:
    r = route(host, path)
    assert r is not None and r.adapter is adapter and r.provider == provider
    assert r.endpoint == r.adapter.endpoint


def test_gemini_route_carries_model() -> None:
    r = route("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
    assert r is not None and r.extra == {"model": "gemini-2.5-pro", "sse": True}


@pytest.mark.parametrize(
    ("host", "path"),
    [
        ("api.openai.com", "/v1/models"),
        ("api.anthropic.com", "/v1/messages/batches"),
        ("api.anthropic.com", "/v1/models"),
        ("chatgpt.com", "/"),
        ("chatgpt.com", "/backend-api/conversation"),
        ("generativelanguage.googleapis.com", "/v1beta/models"),
        ("generativelanguage.googleapis.com", "/v1beta/models/g:countTokens"),
    ],
)
def test_unmetered_provider_paths(host: str, path: str) -> None:
    r = route(host, path)
    assert r is not None and r.adapter is None and r.endpoint == "unmetered"
    assert r.provider == PROVIDER_HOSTS[host]


@pytest.mark.parametrize("host", ["example.com", "anthropic.com", "api.anthropic.com.evil.net", "", "[::1]:443"])
def test_other_hosts(host: str) -> None:
    assert route(host, "/v1/messages") is None


def test_allow_hosts_regexes() -> None:
    without = allow_hosts_regexes(include_chatgpt=False)
    with_chatgpt = allow_hosts_regexes(include_chatgpt=True)
    assert r"^api\.anthropic\.com\.?(:\d+)?$" in without
    assert re.search(without[0], without[0][1:].split("\\.?")[0].replace("\\", "") + ".:443")  # FQDN dot
    assert len(with_chatgpt) == len(without) + 1

    def allowed(regexes: list[str], hostport: str) -> bool:
        return any(re.search(rx, hostport) for rx in regexes)

    for host in ("api.anthropic.com", "api.openai.com", "generativelanguage.googleapis.com"):
        assert allowed(without, f"{host}:443") and allowed(without, host)
    assert not allowed(without, "chatgpt.com:443") and allowed(with_chatgpt, "chatgpt.com:443")
    for other in ("xapi.openai.com:443", "api.openai.com.evil:443", "api-openai-com:443", "apixanthropic.com"):
        assert not allowed(with_chatgpt, other)


def test_adapters_are_singletons_with_fresh_stream_state() -> None:
    a = route("api.openai.com", "/v1/responses")
    b = route("api.openai.com", "/v1/responses")
    assert a is not None and b is not None and a.adapter is b.adapter
    assert a.adapter.stream_parser("/v1/responses") is not b.adapter.stream_parser("/v1/responses")


# -- seventeenth review C1: Gemini / Vertex explicit context caches (storage billed per token-hour) --

@pytest.mark.parametrize("host, path, method, kind", [
    ("generativelanguage.googleapis.com", "/v1beta/cachedContents", "POST", "paid"),  # create
    ("generativelanguage.googleapis.com", "/v1beta/cachedContents/abc123", "PATCH", "paid"),  # extend ttl
    ("generativelanguage.googleapis.com", "/V1BETA/CachedContents", "POST", "paid"),  # any spelling
    ("us-central1-aiplatform.googleapis.com", "/v1/projects/p/locations/us-central1/cachedContents", "POST", "paid"),
    ("aiplatform.googleapis.com", "/v1/projects/p/locations/global/cachedContents/c1", "PATCH", "paid"),
    ("generativelanguage.googleapis.com", "/v1beta/cachedContents", "GET", "free"),  # list
    ("generativelanguage.googleapis.com", "/v1beta/cachedContents/abc123", "GET", "free"),
    ("generativelanguage.googleapis.com", "/v1beta/cachedContents/abc123", "DELETE", "free"),  # stops the bill
])
def test_gemini_context_cache_creation_is_paid_unmetered_and_its_housekeeping_free(host, path, method, kind):
    r = route(host, path, method)
    assert r is not None and r.adapter is None
    assert r.extra.get(kind) is True and not r.extra.get({"paid": "free", "free": "paid"}[kind])
