"""OpenAI Chat Completions (``/v1/chat/completions``), JSON and SSE.

``prompt_tokens`` already INCLUDES ``prompt_tokens_details.cached_tokens`` (DeepSeek names its
cache hits ``prompt_cache_hit_tokens``) and ``completion_tokens`` already includes reasoning (xAI's
leaves it out: ``output_with_reasoning``). A stream reports usage only when the request set
``stream_options.include_usage``; we add it when the client did not, and the proxy drops the
extra usage-only chunk and the ``usage: null`` it adds to the others (see :func:`hide_added_usage`)
so the client sees what it asked for.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from spendgate.identity import BodyHints
from spendgate.metering.framing import Oversized, SSEDecoder
from spendgate.metering.providers.base import (
    Adapter,
    JSONEventStreamParser,
    RequestInfo,
    ResponseResult,
    StreamParser,
    add_finish_reason,
    as_int,
    dig,
    dumps_compact,
    error_type,
    load_json,
    output_with_reasoning,
    outputs_of,
    parse_json_request,
    reported_cost,
    several_models,
    str_or_none,
)
from spendgate.metering.salvage import head_field, tail_field
from spendgate.usage import Usage

CHAT_PATH = "/v1/chat/completions"
MAX_FALLBACK_MODELS = 64  # distinct models read from a fallback list; past it, "any model"


def cached_prompt_tokens(usage: dict) -> int:
    """Prompt tokens read from the cache: OpenAI's ``prompt_tokens_details.cached_tokens``, else
    DeepSeek's ``prompt_cache_hit_tokens`` (prompt_tokens = hit + miss; "Create Chat Completion",
    https://api-docs.deepseek.com/api/create-chat-completion)."""
    cached = dig(usage, "prompt_tokens_details", "cached_tokens")
    return as_int(cached if cached is not None else usage.get("prompt_cache_hit_tokens"))


def chat_usage(usage: dict) -> Usage:
    """Normalize a Chat Completions ``usage`` object (tokens; output includes reasoning)."""
    inp = as_int(usage.get("prompt_tokens"))
    reasoning = as_int(dig(usage, "completion_tokens_details", "reasoning_tokens"))
    output = output_with_reasoning(inp, as_int(usage.get("completion_tokens")), reasoning, usage.get("total_tokens"))
    return Usage(
        input_tokens=inp,
        cache_read_tokens=cached_prompt_tokens(usage),
        output_tokens=output,
        reasoning_tokens=min(reasoning, output),
        input_audio_tokens=min(as_int(dig(usage, "prompt_tokens_details", "audio_tokens")), inp),
        input_image_tokens=min(as_int(dig(usage, "prompt_tokens_details", "image_tokens")), inp),
        output_audio_tokens=min(as_int(dig(usage, "completion_tokens_details", "audio_tokens")), output),
        output_image_tokens=min(as_int(dig(usage, "completion_tokens_details", "image_tokens")), output),
    )


def with_include_usage(obj: dict) -> dict:
    """The same request with ``stream_options.include_usage = true`` (other keys untouched)."""
    options = obj.get("stream_options")
    merged = dict(options) if isinstance(options, dict) else {}
    merged["include_usage"] = True
    out = dict(obj)  # keeps key order; stream_options stays where it was or goes last
    out["stream_options"] = merged
    return out


_INCLUDE_USAGE = b',"stream_options":{"include_usage":true}'
_JSON_SPACE = b" \t\n\r"  # RFC 8259 section 2


def include_usage_in(body: bytes, members: dict) -> bytes:
    """`with_include_usage` of a request body whose top-level members (`members`, `stream_options`
    among them) were read from it. Without a `stream_options` member, the member is added at the
    end of the object and every other byte is left as it came: a conversation of megabytes is
    neither parsed nor written again on the event loop (~8 ms a MB in process), and the provider
    reads exactly what the client wrote plus one member. With one (or an object that does not end
    where a valid body's must), the body is rewritten whole as before, merging into it."""
    # only in UTF-8 (json.loads also reads UTF-16 and UTF-32, where ASCII bytes would not be the member)
    if "stream_options" not in members and json.detect_encoding(body[:4]) in ("utf-8", "utf-8-sig"):
        end = len(body.rstrip(_JSON_SPACE))
        if end > 1 and body[end - 1] == 0x7D:  # "}": the top-level object's end (the body parsed as one)
            return body[: end - 1] + _INCLUDE_USAGE + body[end - 1 :]
    return dumps_compact(with_include_usage(load_json(body)))


_USAGE_NULL = b'"usage":null'  # as OpenAI writes it on every chunk once include_usage is set


def hide_added_usage(event_block: bytes) -> bytes | None:
    """What the client gets of one raw SSE event block (bytes up to and including its blank line)
    when we added ``include_usage`` (RequestInfo.drop_usage_chunk); None: the block as it came.

    With it, OpenAI adds a last chunk with ``choices: []`` and the usage (dropped: b"") and a
    ``"usage":null`` member to every other chunk (API reference, ``stream_options``): that member
    is cut out of the bytes, and only when the block then reads as the same object without it;
    anything else goes through untouched. Azure's first chunk also has ``choices: []`` but no
    usage, so it is kept. Use with :class:`streams.EventFilter`; the parser is fed the unfiltered
    bytes so the usage is still metered. Never raises.
    """
    try:
        data = _event_data(event_block)
        if data is None:
            return None
        obj = load_json(data)
        if not isinstance(obj, dict) or "usage" not in obj:
            return None
        usage = obj.pop("usage")
        if obj.get("choices") == [] and isinstance(usage, dict):
            return b""
        if usage is not None or event_block.count(_USAGE_NULL) != 1:
            return None
        for member in (b"," + _USAGE_NULL, _USAGE_NULL + b","):
            if member in event_block:
                trimmed = event_block.replace(member, b"", 1)
                again = _event_data(trimmed)
                return trimmed if again is not None and load_json(again) == obj else None
        return None
    except Exception:
        return None


def _event_data(block: bytes) -> bytes | str | None:
    """The data of the one event in `block`, or None when it holds none or several. OpenAI's form
    (one ``data: `` line, then a blank line) is read directly; anything else by the SSE decoder."""
    if block.startswith(b"data: ") and block.endswith(b"\n\n") and block.count(b"\n") == 2 and b"\r" not in block:
        return block[6:-2]
    decoder = SSEDecoder()
    events = decoder.feed(block) + decoder.flush()
    return events[0].data if len(events) == 1 else None


def _delta_chars(choices: Any, key: str) -> int:
    """Characters of text, reasoning text and tool arguments in choices[].delta|message."""
    total = 0
    for choice in choices if isinstance(choices, list) else ():
        part = dig(choice, key)
        if not isinstance(part, dict):
            continue
        for field in ("content", "reasoning_content", "refusal"):
            if isinstance(part.get(field), str):
                total += len(part[field])
        calls = part.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            args = dig(call, "function", "arguments")
            total += len(args) if isinstance(args, str) else 0
        args = dig(part, "function_call", "arguments")
        total += len(args) if isinstance(args, str) else 0
    return total


def _finish_reasons(result: ResponseResult, choices: Any) -> None:
    for choice in choices if isinstance(choices, list) else ():
        add_finish_reason(result, dig(choice, "finish_reason"))


class ChatStreamParser(JSONEventStreamParser):
    """Chat SSE: usage in the final ``choices: []`` chunk, ``[DONE]`` terminates."""

    def on_event(self, event: str | None, obj: dict) -> None:
        r = self._result
        err = error_type(obj)
        if err is not None:
            r.error = r.error or err
            return
        r.model = r.model or str_or_none(obj.get("model"))  # Azure's first chunk has model ""
        r.service_tier = str_or_none(obj.get("service_tier")) or r.service_tier
        r.output_chars += _delta_chars(obj.get("choices"), "delta")
        _finish_reasons(r, obj.get("choices"))
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            usage = dig(obj, "x_groq", "usage")  # Groq's own place for stream usage
        if isinstance(usage, dict):
            r.usage = chat_usage(usage)
            r.usage_final = True
            r.reported_cost_usd = reported_cost(usage)

    def on_oversized(self, event: str | None, over: Oversized) -> None:
        """A huge delta (e.g. audio) counts toward estimates and keeps a trailing usage object."""
        self._result.output_chars += over.size
        obj = {"model": head_field(over, "model"), "service_tier": tail_field(over, "service_tier")}
        usage = tail_field(over, "usage")
        if isinstance(usage, dict):
            obj["usage"] = usage
        self.on_event(event, obj)


class OpenAIChatAdapter(Adapter):
    provider = "openai"
    endpoint = "chat.completions"

    def __init__(self, add_usage: bool = True) -> None:
        self.add_usage = add_usage  # False: a service not known to accept stream_options (never break a client)

    def may_add_usage(self, path: str) -> bool:
        """Whether asking this service for ``include_usage`` is safe for this request."""
        return self.add_usage

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            obj, info = parse_json_request(body, ("max_completion_tokens", "max_tokens"),
                                           ("user", "stream_options", "prompt_cache_key", "models", "n", "best_of"))
            if info.malformed:
                return info
            info.outputs = outputs_of(obj.get("n"), obj.get("best_of"))  # best_of: legacy completions
            fallbacks = obj.get("models")  # OpenRouter: tried in order when one fails, so any may run
            if isinstance(fallbacks, list) and fallbacks:
                info.models = several_models([info.model] * bool(info.model) + fallbacks, MAX_FALLBACK_MODELS)
            info.metadata_user = str_or_none(obj.get("user"))
            if key := str_or_none(obj.get("prompt_cache_key")):
                info.hints = BodyHints(prompt_cache_key=key[:256])
            if info.stream and dig(obj, "stream_options", "include_usage") is not True and self.may_add_usage(path):
                info.rewritten_body = include_usage_in(body, obj)
                info.drop_usage_chunk = True
            return info
        except Exception:
            return RequestInfo(malformed=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            obj = load_json(body)
            if not isinstance(obj, dict):
                return ResponseResult(garbled=bool(body))
            result = ResponseResult(
                model=str_or_none(obj.get("model")),
                error=error_type(obj),
                service_tier=str_or_none(obj.get("service_tier")),
            )
            usage = obj.get("usage")
            if isinstance(usage, dict):
                result.usage = chat_usage(usage)
                result.usage_final = result.complete = True
                result.reported_cost_usd = reported_cost(usage)
            result.output_chars = _delta_chars(obj.get("choices"), "message")
            _finish_reasons(result, obj.get("choices"))
            return result
        except Exception:
            return ResponseResult(garbled=True)

    def stream_parser(self, path: str) -> StreamParser:
        return ChatStreamParser()


class AzureChatAdapter(OpenAIChatAdapter):
    """Azure accepts ``stream_options`` from api-version 2024-09-01 on (and on the v1 API)."""

    def may_add_usage(self, path: str) -> bool:
        version = parse_qs(urlsplit(path).query).get("api-version", [""])[0]
        return not version or version >= AZURE_STREAM_OPTIONS_SINCE or version.startswith(("v1", "preview", "latest"))


AZURE_STREAM_OPTIONS_SINCE = "2024-09-01"
CHAT = OpenAIChatAdapter()
CHAT_PASSIVE = OpenAIChatAdapter(add_usage=False)  # reads usage when the stream has it, never asks
AZURE_CHAT = AzureChatAdapter()
