"""A fake LLM provider that plays mitmproxy's *upstream proxy* in end-to-end tests.

How it is used (NOTES.md section 1): mitmdump runs with
``--mode upstream:http://127.0.0.1:<FakeProvider.port> --set ssl_verify_upstream_trusted_ca=<FakeProvider.ca_file>``.
mitmproxy then sends ``CONNECT api.anthropic.com:443`` here; we answer ``HTTP/1.1 200 Connection
established``, terminate TLS with a certificate for that host signed by our test CA, and speak
HTTP/1.1 (keep-alive, Content-Length or chunked request bodies) as the provider would. Only
127.0.0.1 is ever bound or contacted. A plain (non-CONNECT) HTTP request is served too, with the
host taken from the absolute-form target or the Host header.

Served endpoints (exact real wire shapes, recordings in tests/fixtures/wire):

* ``api.anthropic.com``  POST /v1/messages[?...]               JSON, or SSE when body ``stream: true``
                         POST /v1/messages/count_tokens[?...]  ``{"input_tokens": N}``
* ``api.openai.com``     POST /v1/chat/completions             JSON or SSE (usage chunk only with
                                                               ``stream_options.include_usage``)
                         POST /v1/responses                    JSON or SSE
                         GET  /v1/models                       small model list (unmetered path)
                         POST /v1/embeddings                   one tiny embedding
                         POST /v1/images/generations | /edits  gpt-image-*: usage JSON, or SSE with
                              ``stream: true``; dall-e-*: URLs, no usage
                         POST /v1/audio/transcriptions | /translations   whisper-1: usage seconds;
                              gpt-4o-transcribe: token usage, SSE with ``stream=true``
                         POST /v1/audio/speech                 audio/mpeg bytes, SSE with ``stream_format: sse``
                         POST /v1/files, /v1/batches; GET /v1/batches/{id}, /v1/files/file-out-{batch}/content
                              (JSONL output lines built from the uploaded input file)
                         POST /v1/vector_stores                a tiny object (an unmetered path)
* ``api.anthropic.com``  POST /v1/messages/batches; GET /v1/messages/batches/{id}[/results] (JSONL)
* ``generativelanguage.googleapis.com``  POST /v1beta/models/{m}:batchGenerateContent; GET
                              /v1beta/batches/{id}; GET /download/v1beta/files/{id}-out:download (JSONL)
* ``chatgpt.com``        POST /backend-api/codex/responses      same as /v1/responses
* ``generativelanguage.googleapis.com``
                         POST /v1beta/models/{m}:generateContent        JSON
                         POST /v1beta/models/{m}:streamGenerateContent  SSE with ``?alt=sse``,
                              otherwise Google's JSON-array stream ``[{...}\\n,\\r\\n{...}\\n]``
                         POST /v1beta/models/{m}:embedContent | :batchEmbedContents  embeddings, no usage
* ``bedrock-runtime.<region>.amazonaws.com``
                         POST /model/{id}/converse                      Converse JSON
                         POST /model/{id}/converse-stream               event-stream frames (binary)
                         POST /model/{id}/invoke                        Anthropic Message JSON
                         POST /model/{id}/invoke-with-response-stream   frames of base64 Anthropic events
                         (frames are written split across HTTP chunks at odd offsets)
* ``aiplatform.googleapis.com``, ``<region>-aiplatform.googleapis.com``
                         POST /v1/projects/{p}/locations/{l}/publishers/anthropic/models/{m}:rawPredict |
                              :streamRawPredict    Anthropic JSON / SSE (model echoes the path, no @version)
                         POST .../publishers/google/models/{m}:generateContent | :streamGenerateContent
* ``<name>.openai.azure.com`` (and services.ai / cognitiveservices)
                         POST /openai/deployments/{d}/chat/completions   the model in the response is
                              ``AZURE_MODEL`` (not the deployment); streams open with Azure's
                              ``prompt_filter_results`` chunk (``choices: []``, model "")
* ``openrouter.ai``      POST /api/v1/chat/completions   usage carries ``cost`` (``OPENROUTER_COST``)
* ``api[.<plan>].githubcopilot.com``  POST /chat/completions   OpenAI chat; POST /responses, /v1/messages;
                              GET /models (``COPILOT_MODELS``)
* ``api.github.com``     GET /copilot_internal/user   a Copilot Pro seat (``copilot_user()``), GET /user
* ``chatgpt.com``        GET /backend-api/wham/accounts/check   Codex's workspace routing discovery
* request bodies sent content-encoded (zstd, gzip, br) are decoded before they are read
* ``*.corp.example``     POST .../chat/completions   OpenAI chat (a site's own server)
* any other host         GET / -> 200 ``hello from origin`` (text/plain); else 404.
* ``serve_raw(host, route, bytes, content_type)``: the next request there gets exactly those bytes.

Unknown paths on provider hosts get a 404 in that provider's own error format.

Default usage numbers (wire values; chosen distinct per field so a mapping error shows)
---------------------------------------------------------------------------------------

Anthropic /v1/messages (``DEFAULT_USAGE["anthropic"]``)::

    input_tokens 1200 (uncached only, Anthropic semantics), cache_read_input_tokens 300,
    cache_creation.ephemeral_5m_input_tokens 200, cache_creation.ephemeral_1h_input_tokens 100
    (cache_creation_input_tokens = 300), output_tokens 450, web_search_requests 0.
    Normalized: input 1800, cache_read 300, cache_write 300 (1h 100), output 450, reasoning 0.
    Stream: message_start carries the same usage with output_tokens 1 (with flag ``input_grows``
    its input_tokens is 200 instead); message_delta carries the cumulative final usage
    (input/cache_creation/cache_read/output, + server_tool_use when web searches > 0) which
    REPLACES the message_start values.

Anthropic /v1/messages/count_tokens: ``{"input_tokens": 2345}``.

OpenAI /v1/chat/completions (``DEFAULT_USAGE["openai_chat"]``)::

    prompt_tokens 1600 (includes cached), prompt_tokens_details.cached_tokens 400,
    completion_tokens 450 (includes reasoning), completion_tokens_details.reasoning_tokens 120,
    total_tokens 2050.

OpenAI /v1/responses and chatgpt.com codex (``DEFAULT_USAGE["responses"]``)::

    input_tokens 2000 (includes cached), input_tokens_details.cached_tokens 500,
    output_tokens 700 (includes reasoning), output_tokens_details.reasoning_tokens 250,
    total_tokens 2700.

Gemini (``DEFAULT_USAGE["gemini"]``)::

    promptTokenCount 3000 (includes cached), cachedContentTokenCount 1000,
    candidatesTokenCount 600, thoughtsTokenCount 200 (NOT inside candidates), totalTokenCount 3800.
    Streams carry usageMetadata in every chunk as running totals (candidates grow, the last
    chunk has the final numbers).

Scenario control: request header ``x-fake-scenario`` (comma-separated flags)
---------------------------------------------------------------------------

* ``gzip`` / ``br``      content-encode the response body (streams are flushed per event)
* ``cut``                abort the connection mid-stream, before any final usage
                         (for JSON responses: abort after half the body)
* ``error_midstream``    send the provider's in-stream error event after some deltas, then end
* ``slow``               sleep 50 ms between stream events
* ``big_output``         400 text deltas instead of a handful (usage unchanged)
* ``long_output``        3,000 text deltas (~400 KB of events, non-ASCII and escapes among them)
* ``cut_late``           Anthropic stream: abort the connection before the last delta
* ``input_grows``        Anthropic stream: message_start input_tokens 200, final 1200
* ``web_search:N``       Anthropic: server_tool_use.web_search_requests = N
* ``incomplete``         Responses stream: end with response.incomplete (usage present)
* ``status:NNN``         answer NNN with the provider's own error JSON (429 adds retry-after)
* ``usage:<json>``       override wire usage keys of the table above (must be the LAST flag,
                         the JSON may contain commas); same as header ``x-fake-usage: <json>``.
                         Keys are those of ``DEFAULT_USAGE[api]``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import gzip
import ipaddress
import json
import re
import shutil
import ssl
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from mitmproxy.net import encoding as mitm_encoding

try:  # brotli ships with mitmproxy
    import brotli
except ImportError:  # pragma: no cover
    brotli = None

from .certs import TestCA

ANTHROPIC_HOST = "api.anthropic.com"
OPENAI_HOST = "api.openai.com"
CHATGPT_HOST = "chatgpt.com"
GEMINI_HOST = "generativelanguage.googleapis.com"
THINK_SECONDS = 1.5  # scenario "think": how long the provider takes before its answer's first byte
EMBEDDING_VALUES = [0.0123, -0.0456, 0.0789, 0.0012]  # a real one has 768-3072 dimensions
IMAGE_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
OPENROUTER_HOST = "openrouter.ai"
CODE_ASSIST_HOST = "cloudcode-pa.googleapis.com"  # Gemini CLI signed in with Google
GITHUB_API_HOST = "api.github.com"  # Copilot CLI: the GitHub token's Copilot seat (copilot_internal/user)
COPILOT_API = "https://api.individual.githubcopilot.com"  # what the seat's endpoints.api names
PROVIDER_HOSTS = {ANTHROPIC_HOST, OPENAI_HOST, CHATGPT_HOST, GEMINI_HOST, OPENROUTER_HOST, CODE_ASSIST_HOST}
AZURE_MODEL = "gpt-4o-2024-11-20"  # what an Azure deployment answers as its model
OPENROUTER_COST = 0.0123456  # USD, the provider-reported usage.cost


def host_kind(host: str) -> str | None:
    """Which fake API a host speaks (None: a plain origin)."""
    if host in PROVIDER_HOSTS:
        return host
    if host.startswith("bedrock-runtime.") and host.endswith(".amazonaws.com"):
        return "bedrock"
    if host == "aiplatform.googleapis.com" or host.endswith("-aiplatform.googleapis.com"):
        return "vertex"
    if host.endswith((".openai.azure.com", ".services.ai.azure.com", ".cognitiveservices.azure.com")):
        return "azure"
    if host == "api.githubcopilot.com" or (host.startswith("api.") and host.endswith(".githubcopilot.com")):
        return "copilot"
    if host.endswith(".corp.example"):  # a site's own OpenAI-compatible server (spendgate_extra_providers)
        return "compat"
    if host.endswith(".api.openai.com") or host == "codestral.mistral.ai":  # data residency; Codestral
        return "compat"
    return None


def eventstream_frame(event_type: str, payload: bytes, message_type: str = "event") -> bytes:
    """One AWS event-stream frame with string headers (written here, not imported from spendgate)."""
    headers = b""
    for k, v in ((":event-type" if message_type == "event" else ":exception-type", event_type),
                 (":content-type", "application/json"), (":message-type", message_type)):
        headers += bytes([len(k)]) + k.encode() + b"\x07" + len(v.encode()).to_bytes(2, "big") + v.encode()
    total = 12 + len(headers) + len(payload) + 4
    prelude = total.to_bytes(4, "big") + len(headers).to_bytes(4, "big")
    prelude += zlib.crc32(prelude).to_bytes(4, "big")
    body = prelude + headers + payload
    return body + zlib.crc32(body).to_bytes(4, "big")

ORIGIN_BODY = b"hello from origin"

DEFAULT_USAGE: dict[str, dict[str, int]] = {
    "anthropic": {
        "input_tokens": 1200,
        "cache_read_input_tokens": 300,
        "ephemeral_5m_input_tokens": 200,
        "ephemeral_1h_input_tokens": 100,
        "output_tokens": 450,
        "web_search_requests": 0,
        "start_input_tokens_when_growing": 200,
    },
    "count_tokens": {"input_tokens": 2345},
    "openai_chat": {
        "prompt_tokens": 1600,
        "cached_tokens": 400,
        "completion_tokens": 450,
        "reasoning_tokens": 120,
    },
    "responses": {
        "input_tokens": 2000,
        "cached_tokens": 500,
        "output_tokens": 700,
        "reasoning_tokens": 250,
    },
    "bedrock": {  # Converse usage: inputTokens excludes cache reads/writes
        "inputTokens": 1200,
        "cacheReadInputTokens": 300,
        "cacheWriteInputTokens": 200,
        "outputTokens": 450,
    },
    "gemini": {
        "promptTokenCount": 3000,
        "cachedContentTokenCount": 1000,
        "candidatesTokenCount": 600,
        "thoughtsTokenCount": 200,
    },
}

# batch results, per succeeded request (spendgate.metering.providers.batches)
BATCH_ANTHROPIC_USAGE = {"input_tokens": 1000, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 200,
                         "output_tokens": 300, "service_tier": "batch"}
BATCH_OPENAI_USAGE = {"prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
                      "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
BATCH_GEMINI_USAGE = {"promptTokenCount": 1000, "candidatesTokenCount": 300, "totalTokenCount": 1300}

# OpenAI images and audio (spendgate.metering.providers.openai_media)
MEDIA_ROUTES = frozenset({"/v1/images/generations", "/v1/images/edits", "/v1/audio/transcriptions",
                          "/v1/audio/translations", "/v1/audio/speech"})
IMAGE_USAGE = {"input_tokens": 50, "input_tokens_details": {"text_tokens": 40, "image_tokens": 10},
               "output_tokens": 4160, "total_tokens": 4210}
WHISPER_SECONDS = 9
TRANSCRIPT = "the quick brown fox jumps over the lazy dog"
TRANSCRIBE_USAGE = {"input_tokens": 14, "input_token_details": {"text_tokens": 0, "audio_tokens": 14},
                    "output_tokens": 45, "total_tokens": 59}
SPEECH_USAGE = {"input_tokens": 20, "output_tokens": 300, "total_tokens": 320}
FAKE_PNG_B64 = "iVBORw0KGgo="  # the PNG signature, base64: an image's first bytes are all a test needs
FAKE_MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 4  # an audio body, not JSON


COPILOT_MODELS = [  # GET /models on the Copilot API: what Copilot CLI picks its default from
    {"id": m, "name": m, "object": "model", "vendor": vendor, "version": m, "preview": False,
     "model_picker_enabled": True, "is_chat_default": m == "claude-sonnet-4.5",
     "capabilities": {"type": "chat", "family": m, "tokenizer": "o200k_base", "object": "model_capabilities",
                      "limits": {"max_prompt_tokens": 128000, "max_output_tokens": 16000,
                                 "max_context_window_tokens": 200000},
                      "supports": {"streaming": True, "tool_calls": True, "parallel_tool_calls": True}},
     "supported_endpoints": endpoints, "policy": {"state": "enabled", "terms": ""},
     "billing": {"is_premium": True, "multiplier": 1}}
    for m, vendor, endpoints in (("claude-sonnet-4.5", "Anthropic", ["/chat/completions", "/v1/messages"]),
                                 ("gpt-5-mini", "OpenAI", ["/chat/completions", "/responses"]))
]


def copilot_user() -> dict:
    """``GET api.github.com/copilot_internal/user`` for a Copilot Pro seat (Copilot CLI's sign-in check)."""
    return {"login": "tester", "access_type_sku": "copilot_pro", "copilot_plan": "individual",
            "chat_enabled": True, "is_mcp_enabled": False, "codex_agent_enabled": False,
            "analytics_tracking_id": "fake-tracking", "assigned_date": None, "can_signup_for_limited": False,
            "copilotignore_enabled": False, "restricted_telemetry": True, "organization_login_list": [],
            "organization_list": [], "token_based_billing": False,
            "endpoints": {"api": COPILOT_API, "proxy": "https://proxy.individual.githubcopilot.com",
                          "telemetry": "https://telemetry.individual.githubcopilot.com",
                          "origin-tracker": "https://origin-tracker.individual.githubcopilot.com"},
            "quota_reset_date": "2026-12-01", "quota_reset_date_utc": "2026-12-01T00:00:00.000Z",
            "quota_snapshots": {name: {"entitlement": 300 if name == "premium_interactions" else 0,
                                       "overage_count": 0, "overage_permitted": False, "percent_remaining": 100,
                                       "quota_id": name, "quota_remaining": 300, "remaining": 300,
                                       "unlimited": name != "premium_interactions",
                                       "timestamp_utc": "2026-11-30T00:00:00.000Z"}
                                for name in ("chat", "completions", "premium_interactions")}}


def multipart_text_fields(body: bytes) -> dict[str, str]:
    """The text fields of a multipart/form-data body (files skipped): what the SDKs upload."""
    out: dict[str, str] = {}
    if not body.startswith(b"--"):
        return out
    delim = body[: body.find(b"\r\n")]
    for part in body.split(delim)[1:]:
        head, _, value = part.partition(b"\r\n\r\n")
        if b"filename=" in head or b'name="' not in head:
            continue
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        out[name] = value.rsplit(b"\r\n", 1)[0].decode("utf-8", "replace")
    return out


TEXT_PIECES = ["Hello", "! I", "'m a fake", " provider", " answering", " deterministically."]
MAX_HEADER_BYTES = 256 * 1024


# --------------------------------------------------------------------------------------------
# data types


@dataclass
class ReceivedRequest:
    host: str
    method: str
    path: str  # including query string
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes
    json: Any = None
    scenario: "Scenario | None" = None
    received_at: float = field(default_factory=time.time)

    @property
    def route(self) -> str:
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


@dataclass
class Scenario:
    flags: set[str] = field(default_factory=set)
    status: int | None = None
    usage: dict[str, int] = field(default_factory=dict)
    web_search: int | None = None

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def encoding(self) -> str | None:
        if "gzip" in self.flags:
            return "gzip"
        if "br" in self.flags:
            return "br"
        return None


def parse_scenario(value: str | None, usage_header: str | None = None) -> Scenario:
    sc = Scenario()
    value = (value or "").strip()
    idx = value.find("usage:")
    if idx >= 0:
        raw = value[idx + len("usage:"):].strip()
        value = value[:idx]
        sc.usage.update(json.loads(raw))
    if usage_header:
        sc.usage.update(json.loads(usage_header))
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("status:"):
            sc.status = int(part.split(":", 1)[1])
        elif part.startswith("web_search:"):
            sc.web_search = int(part.split(":", 1)[1])
        else:
            sc.flags.add(part)
    return sc


def schema_example(schema: dict) -> Any:
    """A small value matching a JSON/OpenAPI schema (types upper- or lower-case)."""
    kind = str(schema.get("type", "object")).lower()
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: schema_example(v) for k, v in props.items() if isinstance(v, dict)}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return max(1, int(schema.get("minimum", 1)))
    if kind == "boolean":
        return False
    return "fake"


class _Abort(Exception):
    """Raised to drop the connection (the ``cut`` scenario)."""


# --------------------------------------------------------------------------------------------
# response writing


class _Encoder:
    """Incremental content encoder that flushes after every piece so streams stay streams."""

    def __init__(self, encoding: str | None):
        self.encoding = encoding
        if encoding == "gzip":
            self._c = zlib.compressobj(6, zlib.DEFLATED, 31)
        elif encoding == "br":
            if brotli is None:  # pragma: no cover
                raise RuntimeError("brotli not installed")
            self._c = brotli.Compressor()
        else:
            self._c = None

    def feed(self, data: bytes) -> bytes:
        if self._c is None:
            return data
        if self.encoding == "gzip":
            return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)
        return self._c.process(data) + self._c.flush()

    def finish(self) -> bytes:
        if self._c is None:
            return b""
        if self.encoding == "gzip":
            return self._c.flush(zlib.Z_FINISH)
        return self._c.finish()


def encode_whole(data: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "br":
        return brotli.compress(data)
    return data


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable", 529: "Overloaded"}


BOMB_BYTES = 256 * 1024 * 1024
_bombs: dict[bool, tuple[str, bytes]] = {}


def compression_bomb(stream: bool) -> tuple[str, bytes]:
    """(content-encoding, body) that decodes to BOMB_BYTES of 'a's: one JSON document in gzip
    (~256 KB, the whole-body path), or one SSE event in brotli (a few hundred bytes, so a single
    network read decodes to all of it: the stream tap's worst case)."""
    if stream not in _bombs:
        head = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"' if stream \
            else b'{"type":"message","content":[{"type":"text","text":"'
        tail = b'"}}\n\n' if stream else b'"}]}'
        piece = b"a" * (1 << 20)
        if stream:
            c = brotli.Compressor(quality=5)
            parts = [c.process(head)] + [c.process(piece) for _ in range(BOMB_BYTES // len(piece))]
            parts += [c.process(tail), c.finish()]
            _bombs[stream] = ("br", b"".join(parts))
        else:
            z = zlib.compressobj(9, zlib.DEFLATED, 31)
            parts = [z.compress(head)] + [z.compress(piece) for _ in range(BOMB_BYTES // len(piece))]
            parts += [z.compress(tail), z.flush()]
            _bombs[stream] = ("gzip", b"".join(parts))
    return _bombs[stream]


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Responder:
    def __init__(self, writer: asyncio.StreamWriter, scenario: Scenario, keep_alive: bool):
        self.writer = writer
        self.scenario = scenario
        self.keep_alive = keep_alive
        self._enc: _Encoder | None = None

    def _date(self) -> str:
        return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())

    async def send_bytes(self, status: int, body: bytes, content_type: str,
                         headers: list[tuple[str, str]] | None = None, encode: bool = True) -> None:
        if self.scenario.has("think"):  # a long think before the answer's first byte
            await asyncio.sleep(THINK_SECONDS)
        enc = self.scenario.encoding if encode else None
        payload = encode_whole(body, enc)
        hdrs = [("date", self._date()), ("content-type", content_type)]
        if enc:
            hdrs.append(("content-encoding", enc))
        hdrs.append(("content-length", str(len(payload))))
        hdrs += headers or []
        if not self.keep_alive:
            hdrs.append(("connection", "close"))
        if self.scenario.has("cut") and status == 200:
            self.writer.write(_head(status, hdrs) + payload[: len(payload) // 2])
            await self.writer.drain()
            raise _Abort()
        self.writer.write(_head(status, hdrs) + payload)
        await self.writer.drain()

    async def send_json(self, status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> None:
        await self.send_bytes(status, json.dumps(obj).encode(), "application/json", headers)

    async def start_stream(self, content_type: str, headers: list[tuple[str, str]] | None = None) -> None:
        if self.scenario.has("think"):
            await asyncio.sleep(THINK_SECONDS)
        enc = self.scenario.encoding
        self._enc = _Encoder(enc)
        hdrs = [("date", self._date()), ("content-type", content_type), ("transfer-encoding", "chunked"),
                ("cache-control", "no-cache")]
        if enc:
            hdrs.append(("content-encoding", enc))
        hdrs += headers or []
        if not self.keep_alive:
            hdrs.append(("connection", "close"))
        self.writer.write(_head(200, hdrs))
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        assert self._enc is not None
        out = self._enc.feed(data)
        if out:
            self.writer.write(b"%x\r\n%s\r\n" % (len(out), out))
            await self.writer.drain()
        if self.scenario.has("slow"):
            await asyncio.sleep(0.05)

    async def end_stream(self) -> None:
        assert self._enc is not None
        tail = self._enc.finish()
        if tail:
            self.writer.write(b"%x\r\n%s\r\n" % (len(tail), tail))
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def cut(self) -> None:
        await self.writer.drain()
        raise _Abort()


def sse(event: str | None, data: Any, crlf: bool = False) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    nl = "\r\n" if crlf else "\n"
    head = f"event: {event}{nl}" if event else ""
    return f"{head}data: {payload}{nl}{nl}".encode()



# --------------------------------------------------------------------------------------------
# WebSocket (RFC 6455), enough for the Responses and Realtime sockets: text frames, close, ping

_READERS: "dict[asyncio.StreamWriter, asyncio.StreamReader]" = {}
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def reader_of(writer: asyncio.StreamWriter) -> asyncio.StreamReader:
    return _READERS[writer]


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A server frame (unmasked, unfragmented)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


async def ws_read_message(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """The next whole message from a client (masked frames, maybe fragmented); None at EOF."""
    opcode, parts = None, []
    while True:
        try:
            b1, b2 = await reader.readexactly(2)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        fin, op = b1 & 0x80, b1 & 0x0F
        n = b2 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if b2 & 0x80 else b"\0\0\0\0"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(n)))
        if op >= 0x8:  # control frames may come between fragments
            if not fin:
                return None
            return op, data
        if op != 0:
            opcode = op
        parts.append(data)
        if fin:
            return opcode or 1, b"".join(parts)


class _WSResponder:
    """Stands in for `_Responder`: each SSE event becomes one WebSocket text message."""

    def __init__(self, writer: asyncio.StreamWriter, scenario: Scenario):
        self.writer = writer
        self.scenario = scenario

    async def start_stream(self, *_a, **_k) -> None:
        pass

    async def end_stream(self) -> None:
        pass

    async def send(self, obj: Any) -> None:
        self.writer.write(ws_frame(1, json.dumps(obj, separators=(",", ":")).encode()))
        await self.writer.drain()

    async def chunk(self, data: bytes) -> None:
        for line in data.decode().splitlines():
            if line.startswith("data: "):
                self.writer.write(ws_frame(1, line[6:].encode()))
        await self.writer.drain()
        if self.scenario.has("slow"):
            await asyncio.sleep(0.05)

    async def send_json(self, status: int, obj: Any, headers=None) -> None:
        await self.send(obj)

    async def cut(self) -> None:
        await self.writer.drain()
        raise _Abort()

# --------------------------------------------------------------------------------------------
# the server


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class FakeProvider:
    """Fake upstream proxy + provider. Thread-safe enough for tests: requests are appended
    from the server thread; read ``.requests`` after the client call returned."""

    def __init__(self, directory: str | Path | None = None):
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="fakeprov-"))
        self.ca = TestCA(self.dir / "ca")
        self.ca_file = str(self.ca.ca_file)
        self.requests: list[ReceivedRequest] = []
        self.connects: list[str] = []  # CONNECT targets, "host:port"
        self.errors: list[str] = []  # unexpected server-side exceptions
        self.canned: dict[tuple[str, str], tuple[int, str, bytes, list]] = {}  # see serve_raw
        self.port: int = 0
        self.refuse_websocket = False  # True: WebSocket upgrades get a 404 (Codex then falls back to HTTPS)
        self.batches: dict[str, dict] = {}  # batch id -> what its results are made of (see _batches)
        self.files: dict[str, bytes] = {}  # OpenAI file id -> uploaded bytes
        self._videos: dict[str, dict] = {}  # Sora video id -> the job as the API shows it
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="FakeProvider", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("FakeProvider did not start")
        if self._startup_error:
            raise self._startup_error

    # ---- lifecycle

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, limit=MAX_HEADER_BYTES)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as e:  # pragma: no cover
            self._startup_error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        try:
            await asyncio.wait_for(self._server.wait_closed(), 3)
        except asyncio.TimeoutError:  # pragma: no cover
            pass

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        except Exception:  # pragma: no cover
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def serve_raw(self, host: str, route: str, body: bytes, content_type: str, status: int = 200,
                  headers: list[tuple[str, str]] | None = None) -> None:
        """Answer the next request to (host, route) with exactly these bytes (and extra headers),
        streamed chunked in 64 KiB pieces: wire shapes the built-in scenarios do not make, e.g. a
        6 MiB event or a provider's serving header."""
        self.canned[(host, route)] = (status, content_type, body, list(headers or []))

    def reset(self) -> None:
        self.canned.clear()
        self.requests.clear()
        self.connects.clear()
        self.errors.clear()

    def __enter__(self) -> "FakeProvider":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests_to(self, host: str | None = None, route: str | None = None) -> list[ReceivedRequest]:
        return [r for r in self.requests
                if (host is None or r.host == host) and (route is None or r.route == route)]

    # ---- HTTP/1.1 parsing

    async def _read_request(self, reader: asyncio.StreamReader):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            k, _, v = line.partition(":")
            k = k.strip().lower()
            v = v.strip()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        body = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        return method, target, headers, body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        _READERS[writer] = reader
        tunnel_host: str | None = None
        try:
            while True:
                req = await self._read_request(reader)
                if req is None:
                    break
                method, target, headers, body = req
                if method == "CONNECT":
                    self.connects.append(target)
                    host = target.rsplit(":", 1)[0].strip("[]")
                    if not host:
                        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        break
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    if _is_ip(host):  # reached by IP: present (and serve) the name the client's SNI asks for
                        seen: dict[str, str] = {}
                        await writer.start_tls(self._sni_context(seen))
                        tunnel_host = seen.get("sni", host)
                    else:
                        await writer.start_tls(self.ca.server_context(host))
                        tunnel_host = host
                    continue
                path = target
                host = tunnel_host
                if target.startswith(("http://", "https://")):
                    u = urlsplit(target)
                    host = host or u.hostname
                    path = u.path + (f"?{u.query}" if u.query else "")
                if host is None:
                    host = headers.get("host", "").rsplit(":", 1)[0]
                keep_alive = headers.get("connection", "").lower() != "close"
                if not await self._dispatch(host, method, path, headers, body, writer, keep_alive):
                    break
                if not keep_alive:
                    break
        except _Abort:
            writer.transport.abort()
            return
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            pass
        except Exception as e:  # pragma: no cover - shows up in .errors for debugging
            self.errors.append(repr(e))
        finally:
            self._writers.discard(writer)
            _READERS.pop(writer, None)
            try:
                writer.close()
            except Exception:
                pass

    def _sni_context(self, seen: dict[str, str]) -> ssl.SSLContext:
        """A server context that switches to a leaf for the client's SNI (recorded in `seen`)."""
        cert_file, key_file = self.ca.leaf("localhost")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert_file), str(key_file))
        ctx.set_alpn_protocols(["http/1.1"])

        def pick(sslobj, name, _ctx):
            if name:
                seen["sni"] = name
                sslobj.context = self.ca.server_context(name)

        ctx.sni_callback = pick
        return ctx

    # ---- routing

    async def _dispatch(self, host, method, path, headers, body, writer, keep_alive) -> bool:
        try:
            scenario = parse_scenario(headers.get("x-fake-scenario"), headers.get("x-fake-usage"))
        except (ValueError, json.JSONDecodeError) as e:
            scenario = Scenario()
            self.errors.append(f"bad scenario header: {e}")
        parsed = None
        if body and headers.get("content-encoding", "identity") != "identity":  # as a real API server does
            try:
                body = mitm_encoding.decode(body, headers["content-encoding"])
            except ValueError:  # what a real API answers to a body it cannot decode
                await _Responder(writer, Scenario(), keep_alive).send_json(
                    400, {"error": {"message": "could not decode the request body", "type": "invalid_request_error"}})
                return keep_alive
        if body:
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                parsed = None
        rec = ReceivedRequest(host=host, method=method, path=path, headers=dict(headers), body=body,
                              json=parsed, scenario=scenario)
        self.requests.append(rec)
        r = _Responder(writer, scenario, keep_alive)
        route = urlsplit(path).path
        query = parse_qs(urlsplit(path).query)

        canned = self.canned.pop((host, route), None)
        if canned is not None:
            status, content_type, raw, extra_headers = canned
            if status != 200:
                await r.send_bytes(status, raw, content_type, extra_headers, encode=False)
                return keep_alive
            await r.start_stream(content_type, extra_headers)
            for i in range(0, len(raw), 65536):
                await r.chunk(raw[i : i + 65536])
            await r.end_stream()
            return keep_alive

        kind = host_kind(host)
        if await self._batches(r, host, method, route, parsed if isinstance(parsed, dict) else {}, body):
            return keep_alive
        if kind and scenario.status and scenario.status >= 400:
            await self._provider_error(r, host if host in (ANTHROPIC_HOST, CHATGPT_HOST, GEMINI_HOST) else OPENAI_HOST,
                                       scenario.status)
            return keep_alive

        if "websocket" in headers.get("upgrade", "").lower() and method == "GET" and not self.refuse_websocket:
            await self._websocket(host, route, path, headers, reader_of(writer), writer, scenario)
            return False  # the connection was the socket's; it is over now

        data = parsed if isinstance(parsed, dict) else {}
        if scenario.has("bomb"):  # a body that decodes to BOMB_BYTES (a compression bomb)
            stream = bool(data.get("stream"))
            enc, bomb = compression_bomb(stream)
            await r.send_bytes(200, bomb, "text/event-stream" if stream else "application/json",
                               [("content-encoding", enc)], encode=False)
            return keep_alive
        if kind == "bedrock" and method == "POST" and route.startswith("/model/"):
            model, _, op = route[len("/model/"):].rpartition("/")
            if op in ("converse", "converse-stream", "invoke", "invoke-with-response-stream"):
                await self._bedrock(r, unquote(model), op, data)
                return keep_alive
        if kind == "vertex" and method == "POST" and "/publishers/" in route:
            publisher_model, _, verb = route.rpartition(":")
            model = publisher_model.rsplit("/", 1)[-1]
            if "/publishers/anthropic/" in route and verb in ("rawPredict", "streamRawPredict"):
                await self._anthropic_messages(r, {**data, "model": data.get("model", model.split("@")[0])})
                return keep_alive
            if "/publishers/google/" in route and verb in ("generateContent", "streamGenerateContent"):
                stream = None if verb == "generateContent" else ("sse" if query.get("alt") == ["sse"] else "array")
                await self._gemini(r, model, stream=stream)
                return keep_alive
        if kind == "azure" and method == "POST" and route.startswith("/openai/deployments/") \
                and route.endswith("/chat/completions"):
            await self._openai_chat(r, {**data, "model": AZURE_MODEL}, azure=True)
            return keep_alive
        if kind == "copilot" and method == "POST" and route == "/chat/completions":
            await self._openai_chat(r, data)  # usage in the JSON body, and in the stream's last chunk
            return keep_alive
        if kind == "copilot" and method == "POST" and route == "/responses":
            await self._responses(r, data)
            return keep_alive
        if kind == "copilot" and method == "POST" and route == "/v1/messages":
            await self._anthropic_messages(r, data)
            return keep_alive
        if kind == "copilot" and method == "GET" and route == "/models":
            await r.send_json(200, {"object": "list", "data": COPILOT_MODELS}, self._openai_headers())
            return keep_alive
        if host == GITHUB_API_HOST and method == "GET" and route == "/copilot_internal/user":
            await r.send_json(200, copilot_user(), [("x-github-request-id", "FAKE:0001")])
            return keep_alive
        if host == GITHUB_API_HOST and method == "GET" and route == "/user":
            await r.send_json(200, {"login": "tester", "id": 1, "type": "User", "name": "Tester"})
            return keep_alive
        if kind == "compat" and method == "POST" and route.endswith(("/chat/completions", "/fim/completions")):
            await self._openai_chat(r, data)
            return keep_alive
        if (host, method, route) in ((ANTHROPIC_HOST, "POST", "/v1/chat/completions"),
                                     (GEMINI_HOST, "POST", "/v1beta/openai/chat/completions")):
            await self._openai_chat(r, data)  # their OpenAI-compatible endpoints
            return keep_alive
        if host == OPENROUTER_HOST and method == "POST" and route == "/api/v1/chat/completions":
            await self._openai_chat(r, data, usage_extra={"cost": OPENROUTER_COST, "is_byok": False})
            return keep_alive
        if kind and host not in PROVIDER_HOSTS:
            await self._provider_error(r, OPENAI_HOST, 404)
            return keep_alive
        if host == ANTHROPIC_HOST and method == "POST":
            if route == "/v1/messages":
                await self._anthropic_messages(r, data)
                return keep_alive
            if route == "/v1/messages/count_tokens":
                await r.send_json(200, {"input_tokens": self._usage("count_tokens", scenario)["input_tokens"]},
                                  self._anthropic_headers())
                return keep_alive
        if host == OPENAI_HOST:
            if method == "POST" and route == "/v1/embeddings":  # an endpoint spendgate does not meter
                await r.send_json(200, {"object": "list", "model": "text-embedding-3-small",
                                        "data": [{"object": "embedding", "index": 0, "embedding": [0.01, -0.02]}],
                                        "usage": {"prompt_tokens": 5, "total_tokens": 5}}, self._openai_headers())
                return keep_alive
            if method == "POST" and route == "/v1/chat/completions":
                await self._openai_chat(r, data)
                return keep_alive
            if method == "POST" and route == "/v1/responses":
                await self._responses(r, data)
                return keep_alive
            if method == "POST" and route in MEDIA_ROUTES:
                await self._openai_media(r, route, data, body)
                return keep_alive
            if route == "/v1/videos" or route.startswith("/v1/videos/"):
                await self._sora(r, method, route, data, body)
                return keep_alive
            if method == "POST" and route == "/v1/vector_stores":  # an endpoint spendgate does not meter
                await r.send_json(200, {"id": "vs_fake", "object": "vector_store", "created_at": 1754425777},
                                  self._openai_headers())
                return keep_alive
            if method == "GET" and route == "/v1/models":
                await r.send_json(200, {"object": "list", "data": [
                    {"id": "gpt-5", "object": "model", "created": 1754425777, "owned_by": "system"},
                    {"id": "gpt-4.1", "object": "model", "created": 1744316542, "owned_by": "system"},
                ]}, self._openai_headers())
                return keep_alive
        if host == ANTHROPIC_HOST and method == "GET" and route.startswith("/api/claude_code/"):
            await r.send_json(200, {}, self._anthropic_headers())  # Claude Code's policy_limits / settings
            return keep_alive
        if host in (CHATGPT_HOST, OPENAI_HOST) and method == "GET" and route in (
                "/backend-api/codex/models", "/v1/models") and "client_version" in query:
            await r.send_json(200, {"models": []}, self._openai_headers())  # Codex's model catalogue
            return keep_alive
        if host == CHATGPT_HOST and method == "GET" and route == "/backend-api/wham/accounts/check":
            # Codex with a ChatGPT login: workspace routing discovery before any model call (the
            # account its access token names, served from chatgpt.com itself, no routing override)
            account = headers.get("chatgpt-account-id") or "acct-fake-0001"
            await r.send_json(200, {"accounts": [{
                "id": account, "plan_type": "plus", "name": None, "structure": "personal",
                "workspace_backend_origin": "https://chatgpt.com", "account_routing_override": "NO_CONSTRAINT"}],
                "account_ordering": [account], "default_account_id": account}, self._openai_headers())
            return keep_alive
        if host == CHATGPT_HOST and method == "POST" and route == "/backend-api/codex/responses":
            await self._responses(r, data)
            return keep_alive
        if host == GEMINI_HOST and method == "POST" and route.startswith("/v1beta/models/"):
            model, _, verb = route[len("/v1beta/models/"):].partition(":")
            if verb == "generateContent":
                await self._gemini(r, model, stream=None, data=data)
                return keep_alive
            if verb == "streamGenerateContent":
                await self._gemini(r, model, stream="sse" if query.get("alt") == ["sse"] else "array", data=data)
                return keep_alive
            # Gemini API embeddings (ai.google.dev/api/embeddings): EmbedContentResponse is
            # {"embedding": ContentEmbedding}, BatchEmbedContentsResponse {"embeddings": [...]}; no usage
            if verb == "embedContent":
                await r.send_json(200, {"embedding": {"values": EMBEDDING_VALUES}})
                return keep_alive
            if verb == "batchEmbedContents":
                n = len((data or {}).get("requests") or [])
                await r.send_json(200, {"embeddings": [{"values": EMBEDDING_VALUES} for _ in range(n)]})
                return keep_alive
            # Imagen (ai.google.dev/gemini-api/docs/imagen): one prediction per image; a prompt
            # containing "filtered" has its last image withheld by the safety filter
            if verb == "predict":
                params = (data or {}).get("parameters") or {}
                n = int(params.get("sampleCount", 4))
                prompt = str((((data or {}).get("instances") or [{}])[0]).get("prompt", ""))
                preds = [{"mimeType": "image/png", "bytesBase64Encoded": IMAGE_B64} for _ in range(n)]
                if "filtered" in prompt and preds:
                    preds[-1] = {"raiFilteredReason": "Unable to show generated images. ..."}
                await r.send_json(200, {"predictions": preds})
                return keep_alive
            # Veo (ai.google.dev/gemini-api/docs/video): a long-running operation, polled by name
            if verb == "predictLongRunning":
                await r.send_json(200, {"name": f"models/{model}/operations/op{len(self._videos):06d}"})
                return keep_alive
        if host == GEMINI_HOST and method == "GET" and "/operations/" in route:
            await r.send_json(200, {"name": route.split("/", 2)[2], "done": True, "response": {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
                "generateVideoResponse": {"generatedSamples": [{"video": {
                    "uri": f"https://{GEMINI_HOST}/v1beta/files/vid1:download?alt=media"}}]}}})
            return keep_alive
        if host == CODE_ASSIST_HOST and method == "POST" and route.startswith("/v1internal:"):
            await self._code_assist(r, route.split(":", 1)[1], data, query)
            return keep_alive
        if host in PROVIDER_HOSTS:
            await self._provider_error(r, host, 404)
            return keep_alive
        # any other host: a trivial origin server
        if method == "GET" and route == "/":
            await r.send_bytes(200, ORIGIN_BODY, "text/plain; charset=utf-8")
        else:
            await r.send_bytes(404, b"not found", "text/plain; charset=utf-8")
        return keep_alive

    async def _batches(self, r: _Responder, host: str, method: str, route: str, data: dict, body: bytes) -> bool:
        """The batch APIs: submit, poll (already ended), and the JSONL results, as each provider serves them.

        A request whose custom_id / key starts with ``fail`` fails in the results (not billed).
        """
        now = 1764500000
        if host == ANTHROPIC_HOST:
            if method == "POST" and route == "/v1/messages/batches":
                bid = f"msgbatch_fake{len(self.batches) + 1}"
                self.batches[bid] = {"requests": data.get("requests") or []}
                await r.send_json(200, self._anthropic_batch(bid, ended=False), self._anthropic_headers())
                return True
            m = re.match(r"^/v1/messages/batches/([^/]+)(/results)?$", route)
            if method == "GET" and m and m.group(1) in self.batches:
                bid = m.group(1)
                if not m.group(2):
                    await r.send_json(200, self._anthropic_batch(bid, ended=True), self._anthropic_headers())
                    return True
                lines = []
                for i, req in enumerate(self.batches[bid]["requests"]):
                    cid, params = req.get("custom_id", str(i)), req.get("params") or {}
                    if cid.startswith("fail"):
                        result = {"type": "errored", "error": {"type": "error", "error": {
                            "type": "invalid_request_error", "message": "max_tokens: too large"}}}
                    else:
                        result = {"type": "succeeded", "message": {
                            "id": f"msg_batch{i}", "type": "message", "role": "assistant",
                            "model": params.get("model"), "content": [{"type": "text", "text": "".join(TEXT_PIECES)}],
                            "stop_reason": "end_turn", "stop_sequence": None, "usage": dict(BATCH_ANTHROPIC_USAGE)}}
                    lines.append(json.dumps({"custom_id": cid, "result": result}))
                raw = ("\n".join(lines) + "\n").encode()
                await r.start_stream("application/binary", self._anthropic_headers())
                for i in range(0, len(raw), 97):  # lines split across chunks
                    await r.chunk(raw[i:i + 97])
                await r.end_stream()
                return True
        if host == OPENAI_HOST:
            if method == "POST" and route == "/v1/files":
                fid = f"file-in{len(self.files) + 1}"
                content = body.split(b"\r\n\r\n", 2)[-1] if b'filename="' in body else body
                start = body.find(b'filename="')
                if start >= 0:  # the file part's content: after its headers, up to the next delimiter
                    head_end = body.find(b"\r\n\r\n", start) + 4
                    delim = b"\r\n" + body[: body.find(b"\r\n")]
                    content = body[head_end: body.find(delim, head_end)]
                self.files[fid] = content
                await r.send_json(200, {"id": fid, "object": "file", "bytes": len(content), "created_at": now,
                                        "filename": "batch.jsonl", "purpose": "batch", "status": "processed"},
                                  self._openai_headers())
                return True
            if method == "POST" and route == "/v1/batches":
                bid = f"batch_fake{len(self.batches) + 1}"
                self.batches[bid] = {"input": data.get("input_file_id"), "endpoint": data.get("endpoint")}
                await r.send_json(200, self._openai_batch(bid, ended=False), self._openai_headers())
                return True
            m = re.match(r"^/v1/batches/([^/]+)$", route)
            if method == "GET" and m and m.group(1) in self.batches:
                await r.send_json(200, self._openai_batch(m.group(1), ended=True), self._openai_headers())
                return True
            m = re.match(r"^/v1/files/file-out-(batch_fake\d+)/content$", route)
            if method == "GET" and m and m.group(1) in self.batches:
                lines = []
                for i, raw_line in enumerate(self.files.get(self.batches[m.group(1)]["input"], b"").splitlines()):
                    req = json.loads(raw_line)
                    cid, model = req["custom_id"], req["body"]["model"]
                    if cid.startswith("fail"):
                        response = {"status_code": 400, "request_id": f"req_{i}", "body": {"error": {
                            "message": "bad", "type": "invalid_request_error", "param": None, "code": None}}}
                    else:
                        response = {"status_code": 200, "request_id": f"req_{i}", "body": {
                            "id": f"chatcmpl-b{i}", "object": "chat.completion", "created": now, "model": model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                         "finish_reason": "stop", "logprobs": None}],
                            "usage": dict(BATCH_OPENAI_USAGE), "service_tier": "batch"}}
                    lines.append(json.dumps({"id": f"batch_req_{i}", "custom_id": cid, "response": response,
                                             "error": None}))
                raw = ("\n".join(lines) + "\n").encode()
                await r.start_stream("application/octet-stream", self._openai_headers())
                for i in range(0, len(raw), 61):
                    await r.chunk(raw[i:i + 61])
                await r.end_stream()
                return True
        if host == GEMINI_HOST:
            m = re.match(r"^/v1beta/models/([^/:]+):batchGenerateContent$", route)
            if method == "POST" and m:
                bid = f"batches/fake{len(self.batches) + 1}"
                self.batches[bid] = {"model": m.group(1), "input": data}
                await r.send_json(200, {"name": bid, "metadata": {
                    "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                    "model": f"models/{m.group(1)}", "state": "BATCH_STATE_PENDING", "name": bid}})
                return True
            m = re.match(r"^/v1beta/(batches/[^/:]+)$", route)
            if method == "GET" and m and m.group(1) in self.batches:
                bid = m.group(1)
                model = self.batches[bid]["model"]
                meta = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                        "model": f"models/{model}", "state": "BATCH_STATE_SUCCEEDED",
                        "output": {"responsesFile": f"files/{bid.split('/')[1]}-out"}}
                op: dict = {"name": bid, "done": True, "metadata": meta}
                inline = (((self.batches[bid]["input"].get("batch") or {}).get("input_config") or {})
                          .get("requests") or {}).get("requests")
                if inline:  # an inline batch: its results come back inside the operation
                    del meta["output"]
                    op["response"] = {
                        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput",
                        "inlinedResponses": {"inlinedResponses": [
                            {"metadata": q.get("metadata"), "response": {
                                "candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"},
                                                "finishReason": "STOP", "index": 0}],
                                "usageMetadata": dict(BATCH_GEMINI_USAGE), "modelVersion": model}}
                            for q in inline]}}
                await r.send_json(200, op)
                return True
            m = re.match(r"^/download/v1beta/files/([^/:]+)-out:download$", route)
            if method == "GET" and m and f"batches/{m.group(1)}" in self.batches:
                bid = f"batches/{m.group(1)}"
                keys = ["k1", "k2", "fail-k3"]
                lines = []
                for key in keys:
                    if key.startswith("fail"):
                        lines.append(json.dumps({"key": key, "error": {"code": 400, "message": "bad",
                                                                      "status": "INVALID_ARGUMENT"}}))
                        continue
                    lines.append(json.dumps({"key": key, "response": {
                        "candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"},
                                        "finishReason": "STOP", "index": 0}],
                        "usageMetadata": dict(BATCH_GEMINI_USAGE), "modelVersion": self.batches[bid]["model"]}}))
                raw = ("\n".join(lines) + "\n").encode()
                await r.start_stream("application/octet-stream", [])
                await r.chunk(raw)
                await r.end_stream()
                return True
        return False

    def _anthropic_batch(self, bid: str, ended: bool) -> dict:
        n = len(self.batches[bid]["requests"])
        failed = sum(1 for q in self.batches[bid]["requests"] if str(q.get("custom_id", "")).startswith("fail"))
        return {"id": bid, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
                "request_counts": {"processing": 0 if ended else n, "succeeded": n - failed if ended else 0,
                                   "errored": failed if ended else 0, "canceled": 0, "expired": 0},
                "ended_at": "2026-11-30T12:00:00Z" if ended else None, "created_at": "2026-11-30T11:00:00Z",
                "expires_at": "2026-12-01T11:00:00Z", "archived_at": None, "cancel_initiated_at": None,
                "results_url": f"https://api.anthropic.com/v1/messages/batches/{bid}/results" if ended else None}

    def _openai_batch(self, bid: str, ended: bool) -> dict:
        b = self.batches[bid]
        n = len(self.files.get(b["input"], b"").splitlines())
        return {"id": bid, "object": "batch", "endpoint": b["endpoint"], "errors": None,
                "input_file_id": b["input"], "completion_window": "24h",
                "status": "completed" if ended else "validating",
                "output_file_id": f"file-out-{bid}" if ended else None, "error_file_id": None,
                "created_at": 1764500000, "in_progress_at": None, "expires_at": 1764586400,
                "completed_at": 1764503600 if ended else None, "failed_at": None, "expired_at": None,
                "request_counts": {"total": n, "completed": n if ended else 0, "failed": 0}, "metadata": None}

    async def _openai_media(self, r: _Responder, route: str, data: dict, body: bytes) -> None:
        """Images and audio, as the OpenAI API answers them (JSON, SSE, or audio bytes)."""
        hdrs = self._openai_headers()
        if route.startswith("/v1/images/"):
            edit = route.endswith("/edits")
            fields = multipart_text_fields(body) if not data else {k: str(v) for k, v in data.items()}
            model = fields.get("model", "dall-e-2")
            stream = fields.get("stream", "").lower() == "true"
            if model.startswith("dall-e"):  # dall-e: billed per image, no usage in the answer
                await r.send_json(200, {"created": 1754425777, "data": [{"url": "https://images.invalid/1.png",
                                                                         "revised_prompt": "a cat"}]}, hdrs)
                return
            usage = dict(IMAGE_USAGE)
            if not stream:
                await r.send_json(200, {"created": 1754425777, "background": "opaque", "output_format": "png",
                                        "quality": "low", "size": "1024x1024",
                                        "data": [{"b64_json": FAKE_PNG_B64}], "usage": usage}, hdrs)
                return
            kind = "image_edit" if edit else "image_generation"
            await r.start_stream("text/event-stream", hdrs)
            common = {"background": "opaque", "created_at": 1754425777, "output_format": "png",
                      "quality": "low", "size": "1024x1024"}
            await r.chunk(sse(f"{kind}.partial_image", {"type": f"{kind}.partial_image", "b64_json": FAKE_PNG_B64,
                                                        "partial_image_index": 0, **common}))
            await r.chunk(sse(f"{kind}.completed", {"type": f"{kind}.completed", "b64_json": FAKE_PNG_B64,
                                                    "usage": usage, **common}))
            await r.end_stream()
            return
        if route in ("/v1/audio/transcriptions", "/v1/audio/translations"):
            fields = multipart_text_fields(body)
            model = fields.get("model", "")
            if model == "whisper-1":
                await r.send_json(200, {"text": TRANSCRIPT, "usage": {"type": "duration",
                                                                     "seconds": WHISPER_SECONDS}}, hdrs)
                return
            usage = {"type": "tokens", **TRANSCRIBE_USAGE}
            if fields.get("stream", "").lower() != "true":
                await r.send_json(200, {"text": TRANSCRIPT, "usage": usage}, hdrs)
                return
            await r.start_stream("text/event-stream", hdrs)
            for word in TRANSCRIPT.split(" "):
                await r.chunk(sse(None, {"type": "transcript.text.delta", "delta": word + " "}))
            await r.chunk(sse(None, {"type": "transcript.text.done", "text": TRANSCRIPT, "usage": usage}))
            await r.end_stream()
            return
        # /v1/audio/speech
        if data.get("stream_format") == "sse":
            await r.start_stream("text/event-stream", hdrs)
            await r.chunk(sse(None, {"type": "speech.audio.delta", "audio": FAKE_PNG_B64}))
            await r.chunk(sse(None, {"type": "speech.audio.done", "usage": dict(SPEECH_USAGE)}))
            await r.end_stream()
            return
        await r.start_stream("audio/mpeg", hdrs)
        await r.chunk(FAKE_MP3)
        await r.end_stream()

    @staticmethod
    def _usage(api: str, scenario: Scenario) -> dict[str, int]:
        u = dict(DEFAULT_USAGE[api])
        u.update(scenario.usage)
        return u

    @staticmethod
    def _text_pieces(scenario: Scenario) -> list[str]:
        if scenario.has("big_output"):
            return [f" word{i}" for i in range(400)]
        if scenario.has("long_output"):
            return [f" wörd {i}" if i % 3 else f' "code" {i}\n' for i in range(3000)]
        return list(TEXT_PIECES)

    @staticmethod
    def _anthropic_headers() -> list[tuple[str, str]]:
        return [("request-id", "req_fake011CYK5n67SytMUxm8WMZ"), ("anthropic-organization-id", "00000000-fake-org"),
                ("x-robots-tag", "none")]

    @staticmethod
    def _openai_headers() -> list[tuple[str, str]]:
        return [("x-request-id", "req_fake7c1f0b0e2b3d4"), ("openai-processing-ms", "42"),
                ("openai-version", "2020-10-01")]

    # ---- errors

    async def _provider_error(self, r: _Responder, host: str, status: int) -> None:
        extra: list[tuple[str, str]] = []
        if host == ANTHROPIC_HOST:
            etype = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                     429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
            body = {"type": "error", "error": {"type": etype, "message": f"fake {etype} ({status})"},
                    "request_id": "req_fake011CYK5n67SytMUxm8WMZ"}
            extra = self._anthropic_headers()
            if status == 429:
                extra += [("retry-after", "7"), ("x-should-retry", "true")]
        elif host in (OPENAI_HOST, CHATGPT_HOST):
            etype, code = {429: ("insufficient_quota", "insufficient_quota"),
                           404: ("invalid_request_error", "unknown_url"),
                           400: ("invalid_request_error", None)}.get(status, ("server_error", None))
            body = {"error": {"message": f"fake {etype} ({status})", "type": etype, "param": None, "code": code}}
            extra = self._openai_headers()
            if status == 429:
                extra.append(("retry-after", "7"))
        else:
            gstatus = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
                       503: "UNAVAILABLE"}.get(status, "INTERNAL")
            body = {"error": {"code": status, "message": f"fake {gstatus} ({status})", "status": gstatus}}
        await r.send_bytes(status, json.dumps(body).encode(), "application/json", extra)

    # ---- WebSocket: Responses (api.openai.com, chatgpt.com codex) and Realtime

    async def _websocket(self, host, route, path, headers, reader, writer, scenario: Scenario) -> None:
        """Upgrade, then answer every ``response.create`` message with the full event sequence.

        Per-turn scenario flags ride in the message's ``metadata.fake_scenario`` (tests only);
        otherwise the handshake's ``x-fake-scenario`` applies. Every client message is recorded
        in ``.requests`` with method ``WS``.
        """
        import base64
        import hashlib

        ws_routes = {(OPENAI_HOST, "/v1/responses"), (CHATGPT_HOST, "/backend-api/codex/responses"),
                     (OPENAI_HOST, "/v1/realtime")}
        if (host, route) not in ws_routes or not headers.get("sec-websocket-key"):
            await _Responder(writer, Scenario(), False).send_bytes(
                404, b'{"error": {"message": "no websocket here", "type": "invalid_request_error"}}',
                "application/json")
            return
        if scenario.status and scenario.status >= 400:  # refuse the handshake itself
            await self._provider_error(_Responder(writer, Scenario(), False), host, scenario.status)
            return
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + WS_GUID).encode()).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                     b"sec-websocket-accept: " + accept + b"\r\n\r\n")
        await writer.drain()
        realtime = route == "/v1/realtime"
        model = (parse_qs(urlsplit(path).query).get("model") or ["gpt-realtime"])[0]
        if realtime:
            await _WSResponder(writer, scenario).send({"type": "session.created", "event_id": "event_fake0",
                                                       "session": {"object": "realtime.session", "model": model}})
        while True:
            msg = await ws_read_message(reader)
            if msg is None:
                return
            opcode, payload = msg
            if opcode == 0x8:  # close: answer it and end
                writer.write(ws_frame(0x8, payload[:2]))
                await writer.drain()
                return
            if opcode == 0x9:
                writer.write(ws_frame(0xA, payload))
                await writer.drain()
                continue
            if opcode != 1:
                continue
            try:
                data = json.loads(payload)
            except ValueError:
                data = None
            sc = scenario
            turn_flags = (data.get("metadata") or {}).get("fake_scenario") if isinstance(data, dict) else None
            if isinstance(turn_flags, str):
                sc = parse_scenario(turn_flags)
            self.requests.append(ReceivedRequest(host=host, method="WS", path=path, headers=dict(headers),
                                                 body=payload, json=data, scenario=sc))
            if not isinstance(data, dict) or data.get("type") != "response.create":
                continue
            r = _WSResponder(writer, sc)
            if realtime:
                await self._realtime_turn(r, data)
            else:
                body = {k: v for k, v in data.items() if k != "type"}
                body["stream"] = True
                await self._responses(r, body)

    async def _realtime_turn(self, r: _WSResponder, data: dict) -> None:
        """A Realtime response: created, text deltas, response.done with the fixture's usage shape."""
        sc = r.scenario
        u = self._usage("responses", sc)
        rid = "resp_fakeCCXHw0UJld10EzIUXQCNh"
        await r.send({"type": "response.created", "event_id": "event_fake1",
                      "response": {"object": "realtime.response", "id": rid, "status": "in_progress",
                                   "output": [], "usage": None}})
        for i, piece in enumerate(self._text_pieces(sc)):
            if i == 2 and sc.has("cut"):
                await r.cut()
            await r.send({"type": "response.output_text.delta", "event_id": f"event_fake_d{i}", "response_id": rid,
                          "item_id": "item_fake", "output_index": 0, "content_index": 0, "delta": piece})
        await r.send({"type": "response.done", "event_id": "event_fake9", "response": {
            "object": "realtime.response", "id": rid, "status": "completed", "status_details": None,
            "output": [{"id": "item_fake", "type": "message", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": "".join(self._text_pieces(sc))}]}],
            "usage": {"total_tokens": u["input_tokens"] + u["output_tokens"], "input_tokens": u["input_tokens"],
                      "output_tokens": u["output_tokens"],
                      "input_token_details": {"text_tokens": u["input_tokens"], "audio_tokens": 0,
                                              "cached_tokens": u["cached_tokens"]},
                      "output_token_details": {"text_tokens": u["output_tokens"], "audio_tokens": 0}}}})

    # ---- Sora (platform.openai.com/docs/api-reference/videos): a job that completes at once

    async def _sora(self, r: _Responder, method: str, route: str, data: dict | None, body: bytes) -> None:
        parts = route.split("/")  # ["", "v1", "videos", id?, action?]
        if method == "POST" and route in ("/v1/videos", "/v1/videos/extensions", "/v1/videos/edits"):
            fields = multipart_text_fields(body) if not data else {k: str(v) for k, v in data.items()}
            vid = f"video_{len(self._videos):024x}"
            seconds = fields.get("seconds", "4")
            if route == "/v1/videos/extensions":  # the stitched total (the SDK's Video.seconds)
                seconds = str(int(seconds) + 8)
            self._videos[vid] = video = {
                "id": vid, "object": "video", "created_at": 1764547200, "completed_at": None, "error": None,
                "expires_at": None, "model": fields.get("model", "sora-2"), "progress": 0,
                "prompt": fields.get("prompt"), "remixed_from_video_id": None, "seconds": seconds,
                "size": fields.get("size", "720x1280"), "status": "queued"}
            await r.send_json(200, video, self._openai_headers())
        elif method == "POST" and len(parts) == 5 and parts[4] == "remix" and parts[3] in self._videos:
            source = self._videos[parts[3]]
            vid = f"video_{len(self._videos):024x}"
            self._videos[vid] = video = {**source, "id": vid, "prompt": (data or {}).get("prompt"),
                                         "remixed_from_video_id": source["id"], "status": "queued", "progress": 0}
            await r.send_json(200, video, self._openai_headers())
        elif method == "GET" and route == "/v1/videos":
            data = list(self._videos.values())
            await r.send_json(200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                    "last_id": data[-1]["id"] if data else None, "has_more": False},
                              self._openai_headers())
        elif method == "GET" and len(parts) == 4 and parts[3] in self._videos:  # a poll: done
            video = self._videos[parts[3]] = {**self._videos[parts[3]], "status": "completed", "progress": 100,
                                              "completed_at": 1764547260}
            await r.send_json(200, video, self._openai_headers())
        elif method == "GET" and len(parts) == 5 and parts[4] == "content" and parts[3] in self._videos:
            await r.send_bytes(200, b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "video/mp4")
        else:
            await self._provider_error(r, OPENAI_HOST, 404)

    # ---- Code Assist (cloudcode-pa.googleapis.com), as Gemini CLI with a Google login uses it

    async def _code_assist(self, r: _Responder, method: str, data: dict, query: dict) -> None:
        if method in ("generateContent", "streamGenerateContent"):
            model = data.get("model") or "gemini-2.5-pro"
            stream = None if method == "generateContent" else ("sse" if query.get("alt") == ["sse"] else "array")
            await self._gemini(r, model, stream=stream, data=data.get("request") or {}, wrap=True)
        elif method == "loadCodeAssist":
            await r.send_json(200, {"currentTier": {"id": "standard-tier", "name": "Gemini Code Assist"},
                                    "allowedTiers": [{"id": "standard-tier", "isDefault": True}],
                                    "cloudaicompanionProject": "fake-project-123"})
        elif method == "onboardUser":
            await r.send_json(200, {"done": True, "response": {"cloudaicompanionProject": {"id": "fake-project-123"}}})
        else:  # metrics, quotas, experiments, admin controls: not model calls
            await r.send_json(200, {})

    # ---- Anthropic

    def _anthropic_usage_objects(self, u: dict[str, int], scenario: Scenario):
        cw5, cw1 = u["ephemeral_5m_input_tokens"], u["ephemeral_1h_input_tokens"]
        searches = scenario.web_search if scenario.web_search is not None else u["web_search_requests"]
        full = {
            "input_tokens": u["input_tokens"],
            "cache_creation_input_tokens": cw5 + cw1,
            "cache_read_input_tokens": u["cache_read_input_tokens"],
            "cache_creation": {"ephemeral_5m_input_tokens": cw5, "ephemeral_1h_input_tokens": cw1},
            "output_tokens": u["output_tokens"],
            "service_tier": "standard",
        }
        if searches:
            full["server_tool_use"] = {"web_search_requests": searches}
        start = copy.deepcopy(full)
        start["output_tokens"] = 1
        start.pop("server_tool_use", None)
        if scenario.has("input_grows"):
            start["input_tokens"] = u["start_input_tokens_when_growing"]
        delta = {
            "input_tokens": u["input_tokens"],
            "cache_creation_input_tokens": cw5 + cw1,
            "cache_read_input_tokens": u["cache_read_input_tokens"],
            "output_tokens": u["output_tokens"],
        }
        if searches:
            delta["server_tool_use"] = {"web_search_requests": searches}
        return full, start, delta

    async def _anthropic_messages(self, r: _Responder, data: dict) -> None:
        sc = r.scenario
        model = data.get("model", "claude-sonnet-4-5")
        u = self._usage("anthropic", sc)
        full, start, delta = self._anthropic_usage_objects(u, sc)
        msg_id = "msg_01FakeQC4g3HwBThD4BaNtBc"
        pieces = self._text_pieces(sc)
        if not data.get("stream"):
            await r.send_json(200, {
                "model": model, "id": msg_id, "type": "message", "role": "assistant",
                "content": [{"type": "text", "text": "".join(pieces)}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": full,
            }, self._anthropic_headers())
            return
        await r.start_stream("text/event-stream; charset=utf-8", self._anthropic_headers())
        await r.chunk(sse("message_start", {"type": "message_start", "message": {
            "model": model, "id": msg_id, "type": "message", "role": "assistant", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": start}}))
        await r.chunk(sse("content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}}))
        await r.chunk(sse("ping", '{"type": "ping"}'))
        for i, piece in enumerate(pieces):
            if (i == 2 and sc.has("cut")) or (i == len(pieces) - 1 and sc.has("cut_late")):
                await r.cut()
            if i == 2 and sc.has("error_midstream"):
                await r.chunk(sse("error", '{"type": "error", "error": {"type": "api_error", "message": "Overloaded"}}'))
                await r.end_stream()
                return
            await r.chunk(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                      "delta": {"type": "text_delta", "text": piece}}))
        await r.chunk(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        await r.chunk(sse("message_delta", {"type": "message_delta",
                                            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                            "usage": delta}))
        await r.chunk(sse("message_stop", {"type": "message_stop"}))
        await r.end_stream()

    # ---- AWS Bedrock runtime

    async def _bedrock(self, r: _Responder, model: str, op: str, data: dict) -> None:
        sc = r.scenario
        u = self._usage("bedrock", sc)
        pieces = self._text_pieces(sc)
        text = "".join(pieces)
        headers = [("x-amzn-requestid", "fake0b6e-8a7c-4f1e-9d2b-bedrock00001")]
        if op == "converse":
            await r.send_json(200, {"metrics": {"latencyMs": 1432}, "output": {"message": {
                "role": "assistant", "content": [{"text": text}]}}, "stopReason": "end_turn",
                "usage": {**u, "totalTokens": sum(u.values()), "serverToolUsage": {}}}, headers)
            return
        anthropic_usage = {"input_tokens": u["inputTokens"], "cache_creation_input_tokens": u["cacheWriteInputTokens"],
                           "cache_read_input_tokens": u["cacheReadInputTokens"], "output_tokens": u["outputTokens"]}
        msg_id = "msg_bdrk_01FakeBedrockAbc"
        if op == "invoke":
            await r.send_json(200, {"id": msg_id, "type": "message", "role": "assistant",
                                    "model": "claude-sonnet-4-5-20250929", "content": [{"type": "text", "text": text}],
                                    "stop_reason": "end_turn", "stop_sequence": None, "usage": anthropic_usage},
                              headers + [("x-amzn-bedrock-input-token-count", str(u["inputTokens"])),
                                         ("x-amzn-bedrock-output-token-count", str(u["outputTokens"]))])
            return
        if op == "converse-stream":
            events = [("messageStart", {"p": "abcdefghij", "role": "assistant"})]
            events += [("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}, "p": "abcd"}) for p in pieces]
            events += [("contentBlockStop", {"contentBlockIndex": 0, "p": "abcdefgh"}),
                       ("messageStop", {"p": "ab", "stopReason": "end_turn"}),
                       ("metadata", {"metrics": {"latencyMs": 1876}, "p": "abcdef",
                                     "usage": {**u, "totalTokens": sum(u.values())}})]
            frames = [eventstream_frame(name, json.dumps(payload).encode()) for name, payload in events]
        else:
            start = {**anthropic_usage, "output_tokens": 1}
            events = [{"type": "message_start", "message": {"id": msg_id, "type": "message", "role": "assistant",
                                                            "model": "claude-sonnet-4-5-20250929", "content": [],
                                                            "stop_reason": None, "usage": start}},
                      {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}]
            events += [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
                       for p in pieces]
            events += [{"type": "content_block_stop", "index": 0},
                       {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                        "usage": {"output_tokens": u["outputTokens"]}},
                       {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                           "inputTokenCount": u["inputTokens"], "outputTokenCount": u["outputTokens"],
                           "invocationLatency": 1711, "firstByteLatency": 342}}]
            frames = [eventstream_frame("chunk", json.dumps({"bytes": base64.b64encode(
                json.dumps(e).encode()).decode(), "p": "abcdefgh"}).encode()) for e in events]
        await r.start_stream("application/vnd.amazon.eventstream", headers)
        for i, frame in enumerate(frames):
            if i == 3 and sc.has("cut"):
                await r.chunk(frame[:7])  # stop inside a frame
                await r.cut()
            cut = 5 + (i * 7) % max(len(frame) - 5, 1)  # every frame spans two HTTP chunks
            await r.chunk(frame[:cut])
            await r.chunk(frame[cut:])
        await r.end_stream()

    # ---- OpenAI chat completions

    async def _openai_chat(self, r: _Responder, data: dict, azure: bool = False,
                           usage_extra: dict | None = None) -> None:
        sc = r.scenario
        model = data.get("model", "gpt-5")
        u = self._usage("openai_chat", sc)
        usage = {
            "prompt_tokens": u["prompt_tokens"],
            "completion_tokens": u["completion_tokens"],
            "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
            "prompt_tokens_details": {"cached_tokens": u["cached_tokens"], "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": u["reasoning_tokens"], "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }
        usage.update(usage_extra or {})
        cid, created, fp = "chatcmpl-FakeBwoiPTGRbKkY5rncfaM0s9K", 1753357673, "fp_fake51e1070cf2"
        pieces = self._text_pieces(sc)
        if not data.get("stream"):
            await r.send_json(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces),
                                                     "refusal": None, "annotations": []},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage, "service_tier": "default", "system_fingerprint": fp,
            }, self._openai_headers())
            return
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))

        def chunk(choices: list, **extra) -> dict:
            c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "service_tier": "default", "system_fingerprint": fp, "choices": choices}
            if include_usage:
                c["usage"] = None
            c.update(extra)
            return c

        await r.start_stream("text/event-stream; charset=utf-8", self._openai_headers())
        if azure:  # Azure opens with the prompt's content-filter results: no choices, no model
            await r.chunk(sse(None, {"choices": [], "created": 0, "id": "", "model": "", "object": "",
                                     "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
                                         "hate": {"filtered": False, "severity": "safe"}}}]}))
        await r.chunk(sse(None, chunk([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                                        "logprobs": None, "finish_reason": None}], obfuscation="Fk3x")))
        for i, piece in enumerate(pieces):
            if i == 2 and sc.has("cut"):
                await r.cut()
            if i == 2 and sc.has("error_midstream"):
                await r.chunk(sse(None, '{"error": {"message": "The server had an error while processing your '
                                        'request. Sorry about that!", "type": "server_error"}}'))
                await r.end_stream()
                return
            await r.chunk(sse(None, chunk([{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                            "finish_reason": None}], obfuscation="aB")))
        await r.chunk(sse(None, chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                                      obfuscation="zQ")))
        if include_usage:
            await r.chunk(sse(None, chunk([], usage=usage, obfuscation="Wm9")))
        await r.chunk(b"data: [DONE]\n\n")
        await r.end_stream()

    # ---- OpenAI Responses (api.openai.com and chatgpt.com codex)

    async def _responses(self, r: "_Responder | _WSResponder", data: dict) -> None:
        sc = r.scenario
        model = data.get("model", "gpt-5")
        u = self._usage("responses", sc)
        usage = {
            "input_tokens": u["input_tokens"],
            "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
            "output_tokens": u["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": u["reasoning_tokens"]},
            "total_tokens": u["input_tokens"] + u["output_tokens"],
        }
        rid, mid = "resp_fake05080461b406f3f501696a1409d34c81", "msg_fake05080461b406f3f501696a140a70d881"
        pieces = self._text_pieces(sc)
        text = "".join(pieces)
        item = {"id": mid, "type": "message", "status": "completed",
                "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
                "role": "assistant"}

        def response(status: str, output: list, usage_v, **extra) -> dict:
            d = {"id": rid, "object": "response", "created_at": 1768559625, "status": status,
                 "background": False, "completed_at": 1768559627 if status == "completed" else None,
                 "error": None, "incomplete_details": None, "instructions": data.get("instructions"),
                 "max_output_tokens": data.get("max_output_tokens"), "model": model, "output": output,
                 "parallel_tool_calls": True, "previous_response_id": None,
                 "reasoning": {"effort": "medium", "summary": None}, "service_tier": "default",
                 "store": data.get("store", True), "temperature": 1.0, "tool_choice": "auto", "tools": [],
                 "truncation": "disabled", "usage": usage_v, "user": None, "metadata": {}}
            d.update(extra)
            return d

        if not data.get("stream"):
            await r.send_json(200, response("completed", [item], usage), self._openai_headers())
            return
        seq = 0

        async def ev(name: str, payload: dict) -> None:
            nonlocal seq
            payload = {"type": name, **payload, "sequence_number": seq}
            seq += 1
            await r.chunk(sse(name, payload))

        await r.start_stream("text/event-stream; charset=utf-8", self._openai_headers())
        await ev("response.created", {"response": response("in_progress", [], None)})
        await ev("response.in_progress", {"response": response("in_progress", [], None)})
        await ev("response.output_item.added", {"item": {"id": mid, "type": "message", "status": "in_progress",
                                                         "content": [], "role": "assistant"}, "output_index": 0})
        await ev("response.content_part.added", {"content_index": 0, "item_id": mid, "output_index": 0,
                                                 "part": {"type": "output_text", "annotations": [], "text": ""}})
        for i, piece in enumerate(pieces):
            if i == 2 and sc.has("cut"):
                await r.cut()
            if i == 2 and sc.has("error_midstream"):
                err = {"type": "server_error", "code": "server_error",
                       "message": "The server had an error while processing your request.", "param": None}
                await ev("error", {"error": err})
                await ev("response.failed", {"response": response("failed", [], None, error={
                    "code": "server_error", "message": err["message"]})})
                await r.end_stream()
                return
            await ev("response.output_text.delta", {"content_index": 0, "delta": piece, "item_id": mid,
                                                    "output_index": 0, "logprobs": []})
        await ev("response.output_text.done", {"content_index": 0, "item_id": mid, "output_index": 0,
                                               "text": text, "logprobs": []})
        await ev("response.content_part.done", {"content_index": 0, "item_id": mid, "output_index": 0,
                                                "part": {"type": "output_text", "annotations": [], "text": text}})
        await ev("response.output_item.done", {"item": item, "output_index": 0})
        if sc.has("incomplete"):
            await ev("response.incomplete", {"response": response(
                "incomplete", [item], usage, incomplete_details={"reason": "max_output_tokens"})})
        else:
            await ev("response.completed", {"response": response("completed", [item], usage)})
        await r.end_stream()

    # ---- Gemini

    async def _gemini(self, r: _Responder, model: str, stream: str | None, data: dict | None = None,
                      wrap: bool = False) -> None:
        sc = r.scenario
        u = self._usage("gemini", sc)
        pieces = self._text_pieces(sc)
        gen = (data or {}).get("generationConfig") or {}
        schema = gen.get("responseJsonSchema") or gen.get("responseSchema")
        if gen.get("responseMimeType") == "application/json" and isinstance(schema, dict):
            # structured output (Gemini CLI's model router asks for it): JSON of that schema
            text = json.dumps(schema_example(schema))
            pieces = [text[: len(text) // 2], text[len(text) // 2:]]
        prompt, cached = u["promptTokenCount"], u["cachedContentTokenCount"]
        cand, thoughts = u["candidatesTokenCount"], u["thoughtsTokenCount"]

        def usage_md(cands: int) -> dict:
            md = {"promptTokenCount": prompt, "candidatesTokenCount": cands,
                  "totalTokenCount": prompt + cands + thoughts}
            if cached:
                md["cachedContentTokenCount"] = cached
            md["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
            if cached:
                md["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
            if cand:
                md["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": cands}]
            if thoughts:
                md["thoughtsTokenCount"] = thoughts
            return md

        def chunk(text: str, cands: int, last: bool) -> dict:
            cand_obj: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
            if last:
                cand_obj["finishReason"] = "STOP"
            out = {"candidates": [cand_obj], "usageMetadata": usage_md(cands), "modelVersion": model,
                   "responseId": "FakeH6LaZW8Fp_3nsEPqtaSwQ4"}
            return {"response": out, "traceId": "fake-trace"} if wrap else out  # Code Assist wraps it

        if stream is None:
            await r.send_json(200, chunk("".join(pieces), cand, True))
            return
        n = len(pieces)
        chunks = [chunk(p, cand if i == n - 1 else max(1, cand * (i + 1) // n), i == n - 1)
                  for i, p in enumerate(pieces)]
        err = {"error": {"code": 500, "message": "An internal error has occurred. Please retry or report in "
                                                 "https://developers.generativeai.google/guide/troubleshooting",
                         "status": "INTERNAL"}}
        if stream == "sse":
            await r.start_stream("text/event-stream", [("x-content-type-options", "nosniff")])
            for i, c in enumerate(chunks):
                if i == 2 and sc.has("cut"):
                    await r.cut()
                if i == 2 and sc.has("error_midstream"):
                    await r.chunk(sse(None, err, crlf=True))
                    await r.end_stream()
                    return
                await r.chunk(sse(None, c, crlf=True))
            await r.end_stream()
            return
        # JSON array stream, as Google sends it without alt=sse
        await r.start_stream("application/json; charset=UTF-8", [("x-content-type-options", "nosniff")])
        for i, c in enumerate(chunks):
            if i == 2 and sc.has("cut"):
                await r.cut()
            if i == 2 and sc.has("error_midstream"):
                await r.chunk(b"\n,\r\n" + json.dumps(err, indent=2).encode() + b"\n]")
                await r.end_stream()
                return
            prefix = b"[" if i == 0 else b"\n,\r\n"
            await r.chunk(prefix + json.dumps(c, indent=2).encode())
        await r.chunk(b"\n]")
        await r.end_stream()


if __name__ == "__main__":  # manual poking: python -m tests.support.fake_provider
    with FakeProvider() as fp:
        print(f"fake provider on 127.0.0.1:{fp.port}, CA {fp.ca_file}; Ctrl-C to stop")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
