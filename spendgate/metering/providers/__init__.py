"""Provider registry: which adapter meters a (host, path).

Adapters are stateless singletons; per-stream state lives in ``adapter.stream_parser(path)``.
A provider host on a path we do not meter gets ``Route(adapter=None, endpoint="unmetered")`` so
admission can apply the policy's ``unmetered`` rule (``extra["free"]`` marks the built-in list of
free metadata calls); a non-provider host gets None (not our business).

Paths are routed in one canonical spelling (``normalize_path``): a server that treats
``/v1//messages``, ``/v1/messages;x``, ``/v1/%6Dessages`` or ``/V1/Messages`` as its messages
endpoint must not see us treat them as something else.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

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


MAX_DECODE_ROUNDS = 3  # %2525... nested deeper than this is left as it is (and matches nothing)

# Free metadata calls (no tokens billed): forwarded without a charge whatever `unmetered` says.
# (host, method, regex over the canonical lower-case path). Everything else unmetered on a
# provider host follows the policy's `unmetered` rule.
_FREE: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (host, method, re.compile(rx))
    for host, method, rx in (
        ("api.anthropic.com", "GET", r"^/v1/models(/[^/]+)?$"),  # model list / one model
        ("api.anthropic.com", "GET", r"^/v1/files(/[^/]+)?$"),  # file listing / metadata
        ("api.anthropic.com", "GET", r"^/api/claude_code/.+$"),  # Claude Code settings, policy_limits
        ("api.anthropic.com", "GET", r"^/api/oauth/.+$"),  # Claude Code subscription login: profile, roles
        ("api.openai.com", "GET", r"^/v1/models(/[^/]+)?$"),
        ("api.openai.com", "GET", r"^/v1/files(/[^/]+)?$"),
        ("api.openai.com", "POST", r"^/v1/responses/input_tokens$"),  # token counting
        ("chatgpt.com", "GET", r"^/backend-api/codex/models$"),  # Codex's model list
        ("generativelanguage.googleapis.com", "GET", r"^/(v1|v1beta|v1alpha)/models(/[^/:]+)?$"),
        ("generativelanguage.googleapis.com", "POST", r"^/(v1|v1beta|v1alpha)/models/[^/:]+:counttokens$"),
        ("generativelanguage.googleapis.com", "GET", r"^/(v1|v1beta|v1alpha)/files(/[^/]+)?$"),
    )
)


def normalize_path(path: str) -> str:
    """The path a server acts on, in one spelling; case kept, query dropped.

    Percent-decoding (repeated, up to MAX_DECODE_ROUNDS), backslashes as slashes, ``;params``
    stripped from each segment, empty and ``.`` segments dropped, ``..`` resolved. Never raises.
    """
    raw = (path or "").split("#", 1)[0].split("?", 1)[0]
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote(raw, errors="replace")
        if decoded == raw:
            break
        raw = decoded
    out: list[str] = []
    for seg in raw.replace("\\", "/").split("/"):
        seg = seg.split(";", 1)[0].strip()
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return "/" + "/".join(out)


def is_free_metadata(host: str, path: str, method: str | None) -> bool:
    """True for the built-in list of free metadata calls (model lists, token counts, file lists)."""
    host = normalize_host(host)
    canon = normalize_path(path).lower()
    m = (method or "").upper()
    return any(h == host and meth == m and rx.match(canon) for h, meth, rx in _FREE)


def route(host: str, path: str, method: str | None = None) -> Route | None:
    """The adapter for a request, an unmetered provider route, or None for other hosts.

    `method` (GET, POST, ...) only decides whether an unmetered path is on the free list.
    """
    host = normalize_host(host)
    provider = PROVIDER_HOSTS.get(host)
    if provider is None:
        return None
    canon = normalize_path(path)
    if provider == "gemini":
        query = (path or "").partition("?")[2]
        gpath = gemini.parse_path(canon + ("?" + query if query else ""))
        if gpath is not None:
            adapter = _GEMINI_ADAPTERS[gpath.method]
            return Route(adapter, provider, adapter.endpoint, {"model": gpath.model, "sse": gpath.sse})
    else:
        adapter = _PATHS.get(host, {}).get(canon.lower())
        if adapter is not None:
            return Route(adapter, provider, adapter.endpoint)
    free = is_free_metadata(host, path, method)
    return Route(None, provider, UNMETERED, {"free": True} if free else {})


def allow_hosts_regexes(include_chatgpt: bool) -> list[str]:
    """mitmproxy ``allow_hosts`` patterns (matched against ``host:port``) for provider hosts."""
    return [
        rf"^{re.escape(host)}(:\d+)?$"
        for host in PROVIDER_HOSTS
        if include_chatgpt or host not in OPTIONAL_HOSTS
    ]


__all__ = ["PROVIDER_HOSTS", "UNMETERED", "allow_hosts_regexes", "is_free_metadata", "normalize_host",
           "normalize_path", "route"]
