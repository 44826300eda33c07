"""Provider registry: which adapter meters a (host, path).

Adapters are stateless singletons; per-stream state lives in ``adapter.stream_parser(path)``.
A provider host on a path we do not meter gets ``Route(adapter=None, endpoint="unmetered")`` so
the proxy can still log it; a non-provider host gets None (not our business).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from spendgate.metering.providers import (
    anthropic,
    gemini,
    openai_chat,
    openai_responses,
)
from spendgate.metering.providers.base import Adapter, Route

PROVIDER_HOSTS: dict[str, str] = {
    "api.anthropic.com": "anthropic",
    "api.openai.com": "openai",
    "generativelanguage.googleapis.com": "gemini",
    "chatgpt.com": "openai",  # Codex CLI with ChatGPT login
}
OPTIONAL_HOSTS = frozenset({"chatgpt.com"})  # intercepted only when asked: it is also a website

UNMETERED = "unmetered"

_PATHS: dict[str, dict[str, Adapter]] = {
    "api.anthropic.com": {
        anthropic.MESSAGES_PATH: anthropic.MESSAGES,
        anthropic.COUNT_TOKENS_PATH: anthropic.COUNT_TOKENS,
    },
    "api.openai.com": {
        openai_chat.CHAT_PATH: openai_chat.CHAT,
        openai_responses.RESPONSES_PATH: openai_responses.RESPONSES,
    },
    "chatgpt.com": {openai_responses.CODEX_RESPONSES_PATH: openai_responses.RESPONSES},
}
_GEMINI_ADAPTERS: dict[str, Adapter] = {
    "generateContent": gemini.GENERATE_CONTENT,
    "streamGenerateContent": gemini.STREAM_GENERATE_CONTENT,
}


def normalize_host(host: str) -> str:
    """Lowercase, without port or trailing dot (``API.OpenAI.com.:443`` -> ``api.openai.com``)."""
    host = (host or "").strip().lower()
    if host.startswith("["):  # IPv6 literal: never a provider
        return host
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def _bare_path(path: str) -> str:
    try:
        bare = urlsplit(path or "").path
    except ValueError:
        bare = (path or "").split("?", 1)[0]
    return bare.rstrip("/") or "/"


def route(host: str, path: str) -> Route | None:
    """The adapter for a request, an unmetered provider route, or None for other hosts."""
    host = normalize_host(host)
    provider = PROVIDER_HOSTS.get(host)
    if provider is None:
        return None
    if provider == "gemini":
        gpath = gemini.parse_path(path or "")
        if gpath is not None:
            adapter = _GEMINI_ADAPTERS[gpath.method]
            return Route(adapter, provider, adapter.endpoint, {"model": gpath.model, "sse": gpath.sse})
        return Route(None, provider, UNMETERED)
    adapter = _PATHS.get(host, {}).get(_bare_path(path))
    if adapter is None:
        return Route(None, provider, UNMETERED)
    return Route(adapter, provider, adapter.endpoint)


def allow_hosts_regexes(include_chatgpt: bool) -> list[str]:
    """mitmproxy ``allow_hosts`` patterns (matched against ``host:port``) for provider hosts."""
    return [
        rf"^{re.escape(host)}(:\d+)?$"
        for host in PROVIDER_HOSTS
        if include_chatgpt or host not in OPTIONAL_HOSTS
    ]


__all__ = ["PROVIDER_HOSTS", "UNMETERED", "allow_hosts_regexes", "normalize_host", "route"]
