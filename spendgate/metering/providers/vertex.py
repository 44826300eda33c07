"""Google Vertex AI (``aiplatform.googleapis.com``, ``{region}-aiplatform.googleapis.com``) and
Gemini Code Assist (``cloudcode-pa.googleapis.com``, what Gemini CLI uses when signed in with Google).

Vertex paths name the publisher and model:
``/v1/projects/{p}/locations/{l}/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict``
carries an Anthropic Messages body and answers with Anthropic's JSON or SSE (usage rules of
anthropic.py); ``.../publishers/google/models/{m}:generateContent|streamGenerateContent`` is the
Gemini API (gemini.py; Vertex chunks carry only ``trafficType`` in usageMetadata until the last).
``count-tokens:rawPredict`` is free. The model comes from the path (the body has none), and so
does the endpoint kind: Claude on a regional endpoint (``locations/us-east5``) costs 10% more than
on the global one (``locations/global``) from Claude Sonnet 4.5 on; the route reports it as the
serving modifier ``vertex_endpoint`` (``endpoint_modifiers``), priced by a dated override.

Code Assist: ``/v1internal:generateContent|:streamGenerateContent`` with body
``{"model": ..., "project": ..., "request": {<Gemini request>}}``; every response chunk is wrapped
in ``{"response": ...}`` (the Gemini folder unwraps it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, unquote, urlsplit

from spendgate.metering.providers.anthropic import (
    AnthropicCountTokensAdapter,
    AnthropicMessagesAdapter,
)
from spendgate.metering.providers.base import (
    Adapter,
    RequestInfo,
    StreamParser,
    as_int,
    dig,
    str_or_none,
)
from spendgate.metering.providers.gemini import GeminiAdapter, GeminiStreamParser

PATH_RE = re.compile(
    r"^/(?:v1|v1beta1)/(?:projects/[^/]+/locations/([^/]+)/)?publishers/(anthropic|google)/models/([^/:]+):(\w+)$"
)
GLOBAL_LOCATION = "global"
ENDPOINT_MODIFIER = "vertex_endpoint"  # "global" | "regional" (a region or a multi-region: us, eu)
CODE_ASSIST_RE = re.compile(r"^/v1internal:(generateContent|streamGenerateContent)$")
# Code Assist's own members, inside the body's Gemini request: the output cap, and Gemini CLI's session
GENERATION_CONFIG = ("request", "generationConfig")
SESSION_ID = ("request", "session_id")


@dataclass(frozen=True, slots=True)
class VertexPath:
    publisher: str  # "anthropic" | "google"
    model: str  # e.g. "claude-sonnet-4-5@20250929", "gemini-2.5-pro"
    method: str  # rawPredict, streamRawPredict, generateContent, streamGenerateContent, ...
    sse: bool
    location: str | None = None  # "global", "us-east5", ...; None: a path without locations/{l}


def _sse(query: str) -> bool:
    return "sse" in parse_qs(query).get("alt", [])


def parse_path(path: str) -> VertexPath | None:
    try:
        parts = urlsplit(path or "")
    except ValueError:
        return None
    m = PATH_RE.match(parts.path)
    if m is None:
        return None
    location = unquote(m.group(1)).lower() if m.group(1) else None
    return VertexPath(m.group(2), unquote(m.group(3)), m.group(4), _sse(parts.query), location)


def endpoint_modifiers(vpath: VertexPath) -> dict[str, str]:
    """The serving modifier a Vertex path states: ``{vertex_endpoint: global | regional}`` for Claude.

    Claude on Vertex, "Global vs regional endpoints" (https://docs.claude.com/en/docs/build-with-claude/claude-on-vertex-ai):
    from Claude Sonnet 4.5 on a regional endpoint costs 10% more than the global one (the
    multiplier is dated in pricing/overrides.yaml). Google publishes no such premium for its own
    models, so Gemini paths state nothing; nor does a path without ``locations/{l}``.
    """
    if vpath.publisher != "anthropic" or not vpath.location:
        return {}
    return {ENDPOINT_MODIFIER: "global" if vpath.location == GLOBAL_LOCATION else "regional"}


class VertexAnthropicAdapter(AnthropicMessagesAdapter):
    """rawPredict / streamRawPredict: an Anthropic body without ``model`` (the path names it)."""

    provider = "vertex"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        info = super().parse_request(path, body)
        vpath = parse_path(path)
        info.model = vpath.model if vpath else info.model
        info.stream = info.stream or (vpath is not None and vpath.method == "streamRawPredict")
        return info


class VertexCountTokensAdapter(AnthropicCountTokensAdapter):
    provider = "vertex"


class VertexGeminiAdapter(GeminiAdapter):
    """generateContent / streamGenerateContent under ``publishers/google/models``."""

    provider = "vertex"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        info = super().parse_request(path, body)
        vpath = parse_path(path)
        info.model = vpath.model if vpath else info.model
        info.stream = self.endpoint == "streamGenerateContent"
        return info

    def stream_parser(self, path: str) -> StreamParser:
        return GeminiStreamParser(json_array=not _sse(urlsplit(path).query))


RAW_PREDICT = VertexAnthropicAdapter("rawPredict")
STREAM_RAW_PREDICT = VertexAnthropicAdapter("streamRawPredict")
COUNT_TOKENS = VertexCountTokensAdapter()
GENERATE_CONTENT = VertexGeminiAdapter("generateContent")
STREAM_GENERATE_CONTENT = VertexGeminiAdapter("streamGenerateContent")

_ANTHROPIC = {"rawPredict": RAW_PREDICT, "streamRawPredict": STREAM_RAW_PREDICT}
_GOOGLE = {"generateContent": GENERATE_CONTENT, "streamGenerateContent": STREAM_GENERATE_CONTENT}


def adapter_for(vpath: VertexPath) -> Adapter | None:
    if vpath.publisher == "anthropic":
        if vpath.model == "count-tokens":
            return COUNT_TOKENS
        return _ANTHROPIC.get(vpath.method)
    return _GOOGLE.get(vpath.method)


# -- Gemini Code Assist (cloudcode-pa) ------------------------------------------------------------


def code_assist_method(bare_path: str) -> str | None:
    m = CODE_ASSIST_RE.match(bare_path)
    return m.group(1) if m else None


class CodeAssistAdapter(GeminiAdapter):
    """``v1internal``: the model and the Gemini request are inside the body."""

    provider = "code-assist"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        # one pass for the Gemini reading (the body's model, Gemini CLI's user_prompt_id) and Code
        # Assist's own members inside `request` (the session, the output cap): `request` holds the
        # whole conversation, validated and skipped, never built (three passes, one of them
        # building it, took 55 ms at 5 MB)
        try:
            obj, info = self.read_request(path, body, SESSION_ID, GENERATION_CONFIG)
            if info.malformed:
                return info
            info.stream = self.endpoint == "streamGenerateContent"
            if info.hints.user_prompt_id:  # Gemini CLI's body: its session beside the prompt id
                info.hints = replace(info.hints, session_id=str_or_none(obj.get(SESSION_ID)))
            cap = dig(obj.get(GENERATION_CONFIG), "maxOutputTokens")
            info.max_output_tokens = as_int(cap) if cap is not None else None
            return info
        except Exception:
            return RequestInfo(malformed=True)

    def stream_parser(self, path: str) -> StreamParser:
        return GeminiStreamParser(json_array=not _sse(urlsplit(path).query))


CODE_ASSIST: dict[str, Adapter] = {
    "generateContent": CodeAssistAdapter("generateContent"),
    "streamGenerateContent": CodeAssistAdapter("streamGenerateContent"),
}
