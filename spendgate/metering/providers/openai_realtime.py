"""OpenAI Realtime (``wss://api.openai.com/v1/realtime?model=...``), WebSocket only.

A turn is one Response: the client asks with a ``response.create`` event (or the server starts
one itself on voice activity), the server streams deltas and ends with ``response.done``, whose
``response.usage`` holds the bill: ``input_tokens`` (includes ``input_token_details.cached_tokens``)
and ``output_tokens``. Audio and text tokens are both counted in those totals; the catalogue's
text rates price them (audio tokens cost more: see docs/clients.md, "Realtime").

The model is not in ``response.done``: it comes from the URL (``?model=``) or ``session.created``.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from spendgate.metering.providers.base import (
    Adapter,
    JSONEventStreamParser,
    RequestInfo,
    ResponseResult,
    StreamParser,
    as_int,
    dig,
    error_type,
    load_json,
    str_or_none,
)
from spendgate.usage import Usage

REALTIME_PATH = "/v1/realtime"

_TEXT_DELTAS = frozenset({
    "response.output_text.delta", "response.output_audio_transcript.delta",  # GA names
    "response.text.delta", "response.audio_transcript.delta",  # beta names
    "response.function_call_arguments.delta",
})  # fmt: skip
TERMINAL = "response.done"


def realtime_usage(usage: dict) -> Usage:
    output = as_int(usage.get("output_tokens"))
    return Usage(
        input_tokens=as_int(usage.get("input_tokens")),
        cache_read_tokens=as_int(dig(usage, "input_token_details", "cached_tokens")),
        output_tokens=output,
    )


def url_model(path: str) -> str | None:
    try:
        return str_or_none((parse_qs(urlsplit(path).query).get("model") or [None])[0])
    except ValueError:
        return None


class RealtimeEventParser(JSONEventStreamParser):
    """One Realtime response: deltas for estimates, ``response.done`` for usage."""

    def on_event(self, event: str | None, obj: dict) -> None:
        kind = obj.get("type")
        r = self._result
        if kind in _TEXT_DELTAS:
            delta = obj.get("delta")
            r.output_chars += len(delta) if isinstance(delta, str) else 0
        elif kind == TERMINAL:
            response = obj.get("response")
            usage = dig(response, "usage")
            if isinstance(usage, dict):
                r.usage = realtime_usage(usage)
                r.usage_final = True
            status = dig(response, "status")
            if status == "failed":
                r.error = r.error or error_type(dig(response, "status_details")) or "failed"
            r.complete = True
        elif kind == "error":
            r.error = r.error or error_type(obj) or "error"


class OpenAIRealtimeAdapter(Adapter):
    """Requests are ``response.create`` events (``{"type": ..., "response": {...}}``)."""

    provider = "openai"
    endpoint = "realtime"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        obj = load_json(body) if body else None
        if not isinstance(obj, dict):
            return RequestInfo(input_bytes=len(body or b""), malformed=bool(body))
        params = obj.get("response") if isinstance(obj.get("response"), dict) else {}
        cap = params.get("max_output_tokens", params.get("max_response_output_tokens"))
        return RequestInfo(
            model=str_or_none(params.get("model")),  # else the session's (URL, session.created)
            stream=True,
            max_output_tokens=as_int(cap) if isinstance(cap, int) else None,  # "inf" means no cap
            input_bytes=len(body),
        )

    def parse_response(self, body: bytes) -> ResponseResult:
        return ResponseResult(garbled=bool(body))  # never a plain HTTP response

    def stream_parser(self, path: str) -> StreamParser:
        return RealtimeEventParser()


REALTIME = OpenAIRealtimeAdapter()
