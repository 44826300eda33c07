"""Provider registry: which adapter meters a (host, path).

Adapters are stateless singletons; per-stream state lives in ``adapter.stream_parser(path)``.
A provider host on a path we do not meter gets ``Route(adapter=None, endpoint="unmetered")`` so
the proxy can still log it; a non-provider host gets None (not our business).

Hosts are found in two steps: an exact-host dict (the hot path, one lookup), then host patterns
(``bedrock-runtime.*.amazonaws.com``: each ``*`` is ONE DNS label, so a pattern can never match
a host outside the provider's own domain). The row's ``provider`` names the service the request
went to (``bedrock``, ``vertex``, ``azure``, ...); each service has one router from path to adapter.
Sites add hosts of their own (an internal vLLM, a regional mirror) with :func:`configure_extra`.

admission can apply the policy's ``unmetered`` rule (``extra["free"]`` marks the built-in list of
free metadata calls); a non-provider host gets None (not our business).

Paths are routed in one canonical spelling (``normalize_path``): a server that treats
``/v1//messages``, ``/v1/messages;x``, ``/v1/%6Dessages`` or ``/V1/Messages`` as its messages
endpoint must not see us treat them as something else.
"""

from __future__ import annotations

import functools

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

from spendgate.metering.providers import (
    anthropic,
    batches,
    bedrock,
    gemini,
    openai_chat,
    openai_extra,
    openai_media,
    openai_realtime,
    openai_responses,
    vertex,
)
from spendgate.metering.providers.base import Adapter, Route
from spendgate.pricing.rates import set_site_providers

log = logging.getLogger(__name__)

PROVIDER_HOSTS: dict[str, str] = {
    "api.anthropic.com": "anthropic",
    "api.openai.com": "openai",
    "generativelanguage.googleapis.com": "gemini",
    "chatgpt.com": "openai",  # Codex CLI with ChatGPT login
    "aiplatform.googleapis.com": "vertex",  # the global Vertex endpoint
    "cloudcode-pa.googleapis.com": "code-assist",  # Gemini CLI signed in with Google
    "api.githubcopilot.com": "copilot",
    "openrouter.ai": "openrouter",
    "api.deepseek.com": "deepseek",
    "api.mistral.ai": "mistral",
    "codestral.mistral.ai": "mistral",  # Codestral's own endpoint (FIM and chat), billed like api.mistral.ai
    "api.x.ai": "xai",
    "api.groq.com": "groq",
    "api.together.xyz": "together",
    "api.fireworks.ai": "fireworks",
}
OPTIONAL_HOSTS = frozenset({"chatgpt.com"})  # intercepted only when asked: it is also a website

# (glob, provider); "*" stands for exactly one DNS label
HOST_PATTERNS: tuple[tuple[str, str], ...] = (
    ("*.api.openai.com", "openai"),  # data-residency hosts (eu.api.openai.com): the same API, billed alike
    ("bedrock-runtime.*.amazonaws.com", "bedrock"),
    ("bedrock-runtime-fips.*.amazonaws.com", "bedrock"),
    ("*-aiplatform.googleapis.com", "vertex"),
    ("*.openai.azure.com", "azure"),
    ("*.services.ai.azure.com", "azure"),
    ("*.cognitiveservices.azure.com", "azure"),
    ("api.*.githubcopilot.com", "copilot"),  # individual, business, enterprise
)

# what each service's error bodies look like (refusals answer in the client's own format)
DIALECTS: dict[str, str] = {"anthropic": "anthropic", "gemini": "gemini", "code-assist": "gemini"}

UNMETERED = "unmetered"

_ANTHROPIC_PATHS: dict[str, Adapter] = {
    anthropic.MESSAGES_PATH: anthropic.MESSAGES,
    anthropic.COUNT_TOKENS_PATH: anthropic.COUNT_TOKENS,
}
# OpenAI-shaped endpoints, relative to a base path ("/v1", "/openai/v1", "/api/v1", ...)
OPENAI_ENDPOINTS: dict[str, Adapter] = {
    "/chat/completions": openai_chat.CHAT,
    "/responses": openai_responses.RESPONSES,
    "/responses/compact": openai_responses.RESPONSES_COMPACT,
    "/embeddings": openai_extra.EMBEDDINGS,
    "/completions": openai_extra.COMPLETIONS,
}
_GEMINI_ADAPTERS: dict[str, Adapter] = {
    "generateContent": gemini.GENERATE_CONTENT,
    "streamGenerateContent": gemini.STREAM_GENERATE_CONTENT,
    "embedContent": gemini.EMBED_CONTENT,
    "batchEmbedContents": gemini.BATCH_EMBED_CONTENTS,
    "predict": gemini.IMAGEN_PREDICT,  # Imagen: per image
    "predictLongRunning": gemini.VEO_PREDICT_LONG_RUNNING,  # Veo: per second of video
}
# services whose chat streams we may ask for usage (``stream_options.include_usage``, documented
# as accepted); the others are read passively: usage when their stream carries it, else estimated
ASKS_FOR_USAGE = frozenset({"openai", "deepseek", "xai", "openrouter"})
_PASSIVE: dict[str, Adapter] = {
    "/chat/completions": openai_chat.CHAT_PASSIVE,
    "/responses": openai_responses.RESPONSES,
    "/embeddings": openai_extra.EMBEDDINGS,
    "/completions": openai_extra.COMPLETIONS_PASSIVE,
}
# OpenAI-compatible endpoints of providers with APIs of their own (the OpenAI SDK pointed at them):
# Anthropic's at /v1/chat/completions, Gemini's under /v1beta/openai. Read passively (usage when
# the response carries it), priced as the provider's models, refused in the OpenAI error shape.
_ANTHROPIC_OPENAI = {"/v1/chat/completions": openai_chat.CHAT_PASSIVE}
GEMINI_OPENAI_BASE = "/v1beta/openai"
# Imagen behind it too (per image returned; its video jobs are routed by method: _route_by_method)
_GEMINI_COMPAT = {**_PASSIVE, "/images/generations": openai_media.IMAGES_GENERATIONS}
# endpoints a compatible service has beyond the OpenAI set (Mistral's fill-in-the-middle: the
# chat completion shape, usage included)
COMPAT_EXTRA: dict[str, dict[str, Adapter]] = {"mistral": {"/v1/fim/completions": openai_chat.CHAT_PASSIVE}}
_AZURE = {**OPENAI_ENDPOINTS, "/chat/completions": openai_chat.AZURE_CHAT}
# OpenAI-compatible hosts: the base path their OpenAI-shaped API lives under
COMPAT_BASES: dict[str, tuple[str, ...]] = {
    "openrouter": ("/api/v1",),
    "deepseek": ("", "/v1", "/beta"),
    "mistral": ("/v1",),
    "xai": ("/v1",),
    "groq": ("/openai/v1",),
    "together": ("/v1",),
    "fireworks": ("/inference/v1",),
}
# hosts that also speak Anthropic's Messages API, under this base path
ANTHROPIC_BASES: dict[str, str] = {"deepseek": "/anthropic", "xai": ""}


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
        # Sora jobs: list, poll, download, delete (the POSTs that generate are metered)
        ("api.openai.com", "GET", r"^/v1/videos(/[^/]+)?$"),
        ("api.openai.com", "GET", r"^/v1/videos/[^/]+/content$"),
        ("api.openai.com", "DELETE", r"^/v1/videos/[^/]+$"),
        ("api.openai.com", "POST", r"^/v1/responses/input_tokens$"),  # token counting
        # a stored or background response's input listing and delete (cancel: RESPONSES_CANCEL)
        ("api.openai.com", "GET", r"^/v1/responses/[^/]+/input_items$"),
        ("api.openai.com", "DELETE", r"^/v1/responses/[^/]+$"),
        # batch status polls and lists (the results download is metered: providers/batches.py)
        ("api.anthropic.com", "GET", r"^/v1/messages/batches(/[^/]+)?$"),
        ("api.openai.com", "GET", r"^/v1/batches(/[^/]+)?$"),
        ("generativelanguage.googleapis.com", "GET", r"^/(v1|v1beta|v1alpha)/batches$"),  # the list
        ("chatgpt.com", "GET", r"^/backend-api/codex/models$"),  # Codex's model list
        ("generativelanguage.googleapis.com", "GET", r"^/(v1|v1beta|v1alpha)/models(/[^/:]+)?$"),
        ("generativelanguage.googleapis.com", "POST", r"^/(v1|v1beta|v1alpha)/models/[^/:]+:counttokens$"),
        ("generativelanguage.googleapis.com", "GET", r"^/(v1|v1beta|v1alpha)/files(/[^/]+)?$"),
        # a Veo job's operation, polled (its :predictLongRunning is metered)
        ("generativelanguage.googleapis.com", "GET", r"^/(v1|v1beta|v1alpha)/models/[^/:]+/operations/[^/]+$"),
        # explicit context caches: list, read, delete (delete stops the storage bill); creating one
        # or extending its ttl is paid and not metered (_PAID_UNMETERED)
        ("generativelanguage.googleapis.com", "GET", r"^/(v1|v1beta|v1alpha)/cachedcontents(/[^/]+)?$"),
        ("generativelanguage.googleapis.com", "DELETE", r"^/(v1|v1beta|v1alpha)/cachedcontents/[^/]+$"),
    )
)


# Paid work spendgate cannot meter: a WebRTC or SIP session runs directly between the client and
# the provider (Realtime `calls`), an ephemeral key minted here is spent where the gateway may never
# see it (client_secrets, sessions, Gemini auth_tokens), a socket's usage is not read yet (Gemini and
# Vertex Live, Azure Realtime, a transcription-only Realtime socket), or no adapter reads the job
# (Azure and Vertex batches, Azure image and audio deployments, Vertex's Imagen, Veo and embeddings,
# its OpenAI-compatible and deployed-model endpoints), or the bill is storage time no adapter prices
# (a Gemini or Vertex explicit context cache: created by POST, its ttl extended by PATCH; billed per
# cached token per hour; seventeenth review C1). Refused unless the policy's `unmetered` says
# otherwise, in every mode (eleventh review F1, twelfth T1/T3): forwarded free under a laptop's
# default they would be a way around every budget. Matched per provider (every host it serves:
# eu.api.openai.com too), on the canonical lower-case path; method None: any.
_VERTEX_LOC = r"^/v1[a-z0-9]*/projects/[^/]+/locations/[^/]+"
_PAID_UNMETERED: dict[str, tuple[tuple[str | None, re.Pattern[str]], ...]] = {
    provider: tuple((method, re.compile(rx)) for method, rx in rules)
    for provider, rules in {
        "openai": (
            (None, r"^/v1/realtime/(calls|client_secrets|sessions|transcription_sessions)(/.*)?$"),
        ),
        "gemini": (
            (None, r"^/ws/google\.ai\.generativelanguage\.v1[a-z0-9]*\.generativeservice\.bidigeneratecontent[a-z]*$"),
            (None, r"^/(v1|v1beta|v1alpha)/auth_tokens(/.*)?$"),
            ("POST", r"^/(v1|v1beta|v1alpha)/cachedcontents$"),
            ("PATCH", r"^/(v1|v1beta|v1alpha)/cachedcontents/[^/]+$"),
        ),
        "vertex": (
            (None, r"^/ws/google\.cloud\.aiplatform\.v1[a-z0-9]*\.llmbidiservice/bidigeneratecontent[a-z]*$"),
            ("POST", _VERTEX_LOC + r"/batchpredictionjobs$"),
            ("POST", _VERTEX_LOC + r"/cachedcontents$"),
            ("PATCH", _VERTEX_LOC + r"/cachedcontents/[^/]+$"),
            ("POST", _VERTEX_LOC + r"/endpoints/[^/]+(/.*|:[a-z]+)$"),
            ("POST", _VERTEX_LOC + r"/publishers/google/models/[^/:]+:(predict|predictlongrunning|streamrawpredict|rawpredict)$"),
        ),
        "mistral": (  # Agents and Conversations run the model (forty-third review A2); no adapter reads them yet
            ("POST", r"^/v1/conversations(/[^/]+(/restart)?)?$"),
            ("POST", r"^/v1/(ocr|audio/transcriptions)$"),  # billed per page / per minute
        ),
        "bedrock": (  # its Anthropic-compatible spelling and async jobs (Nova Reel): no adapter reads them yet
            ("POST", r"^/anthropic/v1/messages$"),
            ("POST", r"^/async-invoke$"),
        ),
        "azure": (
            ("POST", r"^/api/projects/[^/]+/openai(/v1)?/responses$"),  # an AI Foundry project's endpoint
            (None, r"^/openai(/v1)?/realtime(/.*)?$"),
            (None, r"^/openai/realtimeapi(/.*)?$"),
            ("POST", r"^/openai(/v1)?/batches$"),
            ("POST", r"^/openai/deployments/[^/]+/(images|audio)/.+$"),
            ("POST", r"^/openai(/v1)?/(images|audio|videos?)(/.*)?$"),
        ),
    }.items()
}


# Any provider: a POST no adapter takes whose path ends as a model call does (an OpenAI-compatible
# chat or completion, a partner model's rawPredict on Vertex, a generate on another spelling): paid
# work under a route nobody listed yet (Bedrock's /openai/v1/chat/completions, Vertex's
# publishers/mistralai/...:rawPredict; forty-third review A2), refused as the list's are.
_MODEL_CALL = re.compile(r"(/completions|/responses|:(stream)?rawpredict|:predict(longrunning)?|:(stream)?generatecontent)$")
_SEAT_BILLED = frozenset({"copilot"})  # a seat pays for its calls (inline completions included): never "paid" here


def _paid_unmetered(provider: str, canon: str, query: str, method: str | None) -> bool:
    """True for paid work spendgate cannot meter (`_PAID_UNMETERED`), and for two Realtime spellings
    the WebSocket adapter must not take: the beta WebRTC offer (`POST /v1/realtime`, an SDP body)
    and a transcription-only socket (`?intent=transcription`: no response.create ever goes up)."""
    low, m = canon.lower(), (method or "").upper()
    if provider == "openai" and low == openai_realtime.REALTIME_PATH and (
            m == "POST" or "intent=transcription" in query.lower()):
        return True
    if m == "POST" and provider not in _SEAT_BILLED and _MODEL_CALL.search(low):
        return True
    return any((want is None or want == m) and rx.match(low) for want, rx in _PAID_UNMETERED.get(provider, ()))


def normalize_path(path: str) -> str:
    """The path a server acts on, in one spelling; case kept, query dropped.

    Percent-decoding (repeated, up to MAX_DECODE_ROUNDS), backslashes as slashes, ``;params``
    stripped from each segment, empty and ``.`` segments dropped, ``..`` resolved. Never raises.
    Pure, and asked several times per request for the same few paths: cached (query excluded,
    so ids in queries do not fill the cache).
    """
    return _normalize((path or "").split("#", 1)[0].split("?", 1)[0])


@functools.lru_cache(maxsize=4096)
def _normalize(raw: str) -> str:
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


def glob_regex(glob: str) -> str:
    """A host glob as an anchored regex body: ``*`` is one DNS label (no dots)."""
    return "".join("[a-z0-9_-]+" if part == "*" else re.escape(part) for part in re.split(r"(\*)", glob.lower()))


# -- site-added hosts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExtraHost:
    """A host a site meters in addition to ours: ``HOST=PROVIDER:ADAPTER[:PRICE_AS][@BASE]``.

    adapter: ``openai`` (chat/responses/embeddings/completions under ``base``, default ``/v1``),
    ``anthropic`` (``{base}/v1/messages``) or ``gemini``. price_as: the catalogue provider whose
    list prices apply (``openai``, ``deepseek``, ``together``...; default: the provider name, so
    only overrides price it).
    """

    host: str  # exact host or glob
    provider: str
    adapter: str
    price_as: str | None = None
    base: str | None = None


EXTRA_ADAPTERS = ("openai", "anthropic", "gemini")
_SPEC = re.compile(r"^(?P<host>[a-z0-9*._-]+)=(?P<provider>[a-z0-9_-]+):(?P<adapter>[a-z]+)(?::(?P<price>[a-z0-9_-]+))?$")
_BASE = re.compile(r"^/[A-Za-z0-9/_.-]*$")


def parse_extra(spec: str) -> ExtraHost:
    """``llm.corp.example=corp-vllm:openai:deepseek@/v1`` -> ExtraHost. Raises ValueError."""
    head, at, base = spec.strip().partition("@")
    m = _SPEC.match(head.lower())
    if m is None or (at and not _BASE.match(base)):
        raise ValueError(f"{spec!r}: expected HOST=PROVIDER:ADAPTER[:PRICE_AS][@/BASE_PATH]")
    host, adapter = m["host"], m["adapter"]
    if adapter not in EXTRA_ADAPTERS:
        raise ValueError(f"{spec!r}: adapter must be one of {', '.join(EXTRA_ADAPTERS)}")
    if host.strip("*.") == "" or host.startswith("*.") and host.count(".") < 2:
        raise ValueError(f"{spec!r}: {host!r} would send too many hosts to the gateway")
    return ExtraHost(host, m["provider"], adapter, m["price"], base.rstrip("/") if at else None)


_extra_exact: dict[str, ExtraHost] = {}
_extra_patterns: tuple[tuple[re.Pattern[str], ExtraHost], ...] = ()


def configure_extra(hosts: Iterable[ExtraHost]) -> None:
    """Replace the site's extra hosts (called when options change, before traffic flows)."""
    global _extra_exact, _extra_patterns, _generation
    hosts = list(hosts)
    _generation += 1
    _extra_exact = {h.host: h for h in hosts if "*" not in h.host}
    _extra_patterns = tuple((re.compile(f"^{glob_regex(h.host)}$"), h) for h in hosts if "*" in h.host)
    _pattern_provider.cache_clear()
    set_site_providers({h.provider: h.price_as or h.provider for h in hosts})


def extra_hosts() -> list[ExtraHost]:
    return [*_extra_exact.values(), *(h for _, h in _extra_patterns)]


def price_provider(provider: str) -> str | None:
    """For a site-added provider: the catalogue provider it is priced as (None: not site-added)."""
    for h in extra_hosts():
        if h.provider == provider:
            return h.price_as or provider
    return None


# -- host -> provider ---------------------------------------------------------------------------

_PATTERNS = tuple((re.compile(f"^{glob_regex(g)}$"), p) for g, p in HOST_PATTERNS)


@lru_cache(maxsize=4096)
def _pattern_provider(host: str) -> tuple[str, ExtraHost | None] | None:
    for rx, provider in _PATTERNS:
        if rx.match(host):
            return provider, None
    for rx, extra in _extra_patterns:
        if rx.match(host):
            return extra.provider, extra
    return None


def provider_for(host: str) -> tuple[str, ExtraHost | None] | None:
    """(provider, the site's ExtraHost if it is one) for a normalized host, or None."""
    provider = PROVIDER_HOSTS.get(host)
    if provider is not None:
        return provider, None
    extra = _extra_exact.get(host)
    if extra is not None:
        return extra.provider, extra
    return _pattern_provider(host) if "." in host else None


# -- path -> adapter, per service ---------------------------------------------------------------

Router = Callable[[str, str, str], Route]  # (provider, raw path, bare path) -> Route


def _made(adapter: Adapter | None, provider: str, extra: dict | None = None) -> Route:
    if adapter is None:
        return Route(None, provider, UNMETERED, dialect=DIALECTS.get(provider, "openai"))
    return Route(adapter, provider, adapter.endpoint, extra or {}, dialect=adapter.dialect)


def openai_under(base: str, bare: str, table: dict[str, Adapter] = OPENAI_ENDPOINTS) -> Adapter | None:
    """The OpenAI-shaped adapter for ``bare`` when it is ``base`` + a known endpoint."""
    if base and not bare.startswith(base + "/"):
        return None
    return table.get(bare[len(base):])


_OPENAI_API = {**OPENAI_ENDPOINTS, **openai_media.ENDPOINTS}  # api.openai.com: chat and beyond


def _route_openai(provider: str, path: str, bare: str) -> Route:
    if bare == openai_responses.CODEX_RESPONSES_PATH:
        return _made(openai_responses.RESPONSES, provider)
    if bare == openai_responses.CODEX_COMPACT_PATH:
        return _made(openai_responses.RESPONSES_COMPACT, provider)
    if bare == openai_realtime.REALTIME_PATH:  # WebSocket only (spendgate.metering.websocket)
        return _made(openai_realtime.REALTIME, provider)
    return _made(openai_under("/v1", bare, _OPENAI_API), provider)


def _route_anthropic(provider: str, path: str, bare: str) -> Route:
    return _made(_ANTHROPIC_PATHS.get(bare) or _ANTHROPIC_OPENAI.get(bare), provider)


def _route_gemini(provider: str, path: str, bare: str) -> Route:
    compat = openai_under(GEMINI_OPENAI_BASE, bare, _GEMINI_COMPAT)
    if compat is not None:
        return _made(compat, provider)
    gpath = gemini.parse_path(path or "")
    if gpath is None:
        return _made(None, provider)
    return _made(_GEMINI_ADAPTERS[gpath.method], provider, {"model": gpath.model, "sse": gpath.sse})


def _route_compat(provider: str, path: str, bare: str) -> Route:
    table = OPENAI_ENDPOINTS if provider in ASKS_FOR_USAGE else _PASSIVE
    for base in COMPAT_BASES.get(provider, ("/v1",)):
        adapter = openai_under(base, bare, table)
        if adapter is not None:
            return _made(adapter, provider)
    extra = COMPAT_EXTRA.get(provider, {}).get(bare)
    if extra is not None:
        return _made(extra, provider)
    abase = ANTHROPIC_BASES.get(provider)
    if abase is not None and bare.startswith(abase + "/"):
        return _made(_ANTHROPIC_PATHS.get(bare[len(abase):]), provider)
    return _made(None, provider)


def _route_copilot(provider: str, path: str, bare: str) -> Route:
    # Copilot serves the OpenAI endpoints at the root and Anthropic's Messages under /v1
    adapter = openai_under("", bare, _PASSIVE) or openai_under("/v1", bare, _PASSIVE) or _ANTHROPIC_PATHS.get(bare)
    return _made(adapter, provider)


_AZURE_DEPLOYMENT = re.compile(r"^/openai/deployments/([^/]+)(/.+)$")


def _route_azure(provider: str, path: str, bare: str) -> Route:
    m = _AZURE_DEPLOYMENT.match(bare)
    if m:  # the deployment name is the customer's; the response names the real model
        adapter = _AZURE.get(m.group(2))
        return _made(adapter, provider, {"deployment": unquote(m.group(1))})
    for base in ("/openai/v1", "/openai", "/models", "/v1"):
        adapter = openai_under(base, bare, _AZURE)
        if adapter is not None:
            return _made(adapter, provider)
    if bare.startswith("/anthropic/"):  # Claude in Azure AI Foundry
        return _made(_ANTHROPIC_PATHS.get(bare[len("/anthropic"):]), provider)
    return _made(None, provider)


def _route_bedrock(provider: str, path: str, bare: str) -> Route:
    bpath = bedrock.parse_path(path)
    if bpath is None:
        return _made(None, provider)
    return _made(bedrock.ADAPTERS[bpath.operation], provider, {"model": bpath.model})


def _route_vertex(provider: str, path: str, bare: str) -> Route:
    vpath = vertex.parse_path(path)
    if vpath is None:
        return _made(None, provider)
    extra: dict = {"model": vpath.model}
    if modifiers := vertex.endpoint_modifiers(vpath):
        extra["modifiers"] = modifiers  # how the URL says it is served (priced: meter.serving_modifiers)
    return _made(vertex.adapter_for(vpath), provider, extra)


def _route_code_assist(provider: str, path: str, bare: str) -> Route:
    method = vertex.code_assist_method(bare)
    return _made(vertex.CODE_ASSIST.get(method or ""), provider)


_ROUTERS: dict[str, Router] = {
    "anthropic": _route_anthropic,
    "openai": _route_openai,
    "gemini": _route_gemini,
    "bedrock": _route_bedrock,
    "vertex": _route_vertex,
    "code-assist": _route_code_assist,
    "azure": _route_azure,
    "copilot": _route_copilot,
    **{p: _route_compat for p in COMPAT_BASES},
}


def _route_extra(extra: ExtraHost, path: str, bare: str) -> Route:
    if extra.adapter == "gemini":
        return _route_gemini(extra.provider, path, bare)
    base = extra.base if extra.base is not None else ("" if extra.adapter == "anthropic" else "/v1")
    if extra.adapter == "anthropic":
        adapter = _ANTHROPIC_PATHS.get(bare[len(base):]) if bare.startswith(base + "/") or not base else None
        return _made(adapter, extra.provider)
    return _made(openai_under(base, bare, _PASSIVE), extra.provider)  # unknown servers: never rewrite


def _route_by_method(provider: str, canon: str, method: str) -> Route | None:
    """Routes whose method decides: the batch APIs (spendgate.metering.providers.batches: submit is
    a POST, results a GET), the GET that fetches a background Response (providers.openai_responses,
    charged like results), and Sora's POSTs (a GET of the same path polls or lists, free)."""
    low = canon.lower()
    adapter: Adapter | None = None
    if method == "POST" and provider == "openai" and (low in openai_media.VIDEO_POSTS
                                                      or openai_media.REMIX_PATH.match(low)):
        adapter = openai_media.VIDEO_POSTS.get(low, openai_media.VIDEOS_REMIX)
    elif method == "POST" and provider == "gemini" and low == GEMINI_OPENAI_BASE + "/videos":
        adapter = openai_media.VIDEOS_CREATE  # Veo behind Gemini's OpenAI-compatible endpoint
    elif method == "POST":
        if (provider, low) == ("anthropic", "/v1/messages/batches"):
            adapter = batches.ANTHROPIC_SUBMIT
        elif (provider, low) == ("openai", "/v1/batches"):
            adapter = batches.OPENAI_SUBMIT
        elif (provider, low) == ("openai", "/v1/files"):  # a batch's input file: estimated (batch_input.py)
            adapter = batches.OPENAI_UPLOAD
        elif provider == "gemini" and batches.GEMINI_SUBMIT_PATH.match(low):
            adapter = batches.GEMINI_SUBMIT
        elif provider == "openai" and openai_responses.CANCEL_PATH.match(low):
            adapter = openai_responses.RESPONSES_CANCEL  # a background response stopped: its answer is it
        elif provider == "azure" and openai_responses.AZURE_CANCEL_PATH.match(low):
            adapter = openai_responses.RESPONSES_CANCEL
    elif method == "GET":  # matched lower-cased like every route (ids are `[^/]+`; the adapter reads `canon`)
        if provider == "anthropic" and batches.ANTHROPIC_RESULTS_PATH.match(low):
            adapter = batches.ANTHROPIC_RESULTS
        elif provider == "openai" and batches.OPENAI_FILE_CONTENT_PATH.match(low):
            adapter = batches.OPENAI_RESULTS
        elif provider == "gemini" and batches.GEMINI_DOWNLOAD_PATH.match(low):
            adapter = batches.GEMINI_RESULTS
        elif provider == "gemini" and batches.GEMINI_OPERATION_PATH.match(low):
            adapter = batches.GEMINI_OPERATION  # polled; an inline batch's results arrive in it
        elif provider == "openai" and openai_responses.RETRIEVE_PATH.match(low):
            adapter = openai_responses.RESPONSES_RETRIEVE  # a background response's answer, fetched
        elif provider == "azure" and openai_responses.AZURE_RETRIEVE_PATH.match(low):
            adapter = openai_responses.RESPONSES_RETRIEVE
    return _made(adapter, provider) if adapter is not None else None


def route(host: str, path: str, method: str | None = None) -> Route | None:
    """The adapter for a request, an unmetered provider route, or None for other hosts.

    Routed on the canonical path (`normalize_path`; the request is still forwarded as sent).
    `method` (GET, POST, ...) only decides whether an unmetered path is on the free list.
    """
    host = normalize_host(host)
    found = provider_for(host)
    if found is None:
        return None
    provider, extra = found
    query = (path or "").partition("?")[2]
    canon = normalize_path(path)
    full = canon + ("?" + query if query else "")
    batch = _route_by_method(provider, canon, method.upper()) if method and extra is None else None
    if batch is not None:
        return batch
    if extra is not None:
        found_route = _route_extra(extra, full, canon)
    else:
        found_route = _ROUTERS[provider](provider, full, canon)
        if found_route.adapter is None and canon != canon.lower():  # /V1/Messages is /v1/messages
            found_route = _ROUTERS[provider](provider, canon.lower() + ("?" + query if query else ""), canon.lower())
    if found_route.adapter is openai_realtime.REALTIME and _paid_unmetered(provider, canon, query, method):
        found_route = _made(None, provider)  # a Realtime spelling the socket adapter cannot meter
    if found_route.adapter is None:
        if is_free_metadata(host, path, method):
            found_route.extra["free"] = True
        elif _paid_unmetered(provider, canon, query, method):
            found_route.extra["paid"] = True
    return found_route


def allow_hosts_regexes(include_chatgpt: bool) -> list[str]:
    """mitmproxy ``allow_hosts`` patterns (matched against ``host:port``) for provider hosts."""
    exact = [h for h in PROVIDER_HOSTS if include_chatgpt or h not in OPTIONAL_HOSTS]
    exact += [h.host for h in extra_hosts() if "*" not in h.host]
    globs = [g for g, _ in HOST_PATTERNS] + [h.host for h in extra_hosts() if "*" in h.host]
    # `\.?`: a fully qualified name (api.anthropic.com.) is the same host and must be decrypted too
    return [rf"^{re.escape(host)}\.?(:\d+)?$" for host in exact] + [rf"^{glob_regex(g)}\.?(:\d+)?$" for g in globs]


def site_hosts(include_chatgpt: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(exact hosts, shell globs) a PAC file sends to the gateway."""
    exact = tuple(h for h in PROVIDER_HOSTS if include_chatgpt or h not in OPTIONAL_HOSTS)
    return exact, tuple(g for g, _ in HOST_PATTERNS)


_generation = 0  # bumped whenever the extra hosts change: caches keyed on it see the new table


def hosts_generation() -> int:
    """Changes whenever the set of provider hosts does (spendgate_extra_providers)."""
    return _generation


def provider_of_host(host: str) -> str:
    found = provider_for(normalize_host(host))
    return found[0] if found else ""


__all__ = [
    "HOST_PATTERNS",
    "PROVIDER_HOSTS",
    "UNMETERED",
    "ExtraHost",
    "allow_hosts_regexes",
    "configure_extra",
    "is_free_metadata",
    "normalize_host",
    "normalize_path",
    "parse_extra",
    "provider_of_host",
    "route",
    "site_hosts",
]
