"""OpenAI endpoints beyond chat: ``/v1/embeddings`` and the legacy ``/v1/completions``.

Embeddings are never streamed; ``usage.prompt_tokens`` is all there is (no output tokens).
Legacy completions report usage exactly like Chat Completions (``prompt_tokens`` includes cached,
streams carry it only with ``stream_options.include_usage``, which we add and filter out again
as for chat); their text is in ``choices[].text``.
"""

from __future__ import annotations

from typing import Any

from spendgate.metering.providers.base import (
    Adapter,
    RequestInfo,
    ResponseResult,
    StreamParser,
    as_int,
    error_type,
    load_json,
    parse_json_request,
    str_or_none,
)
from spendgate.metering.providers.openai_chat import ChatStreamParser, OpenAIChatAdapter
from spendgate.usage import Usage


def _text_chars(choices: Any) -> int:
    return sum(len(c["text"]) for c in choices if isinstance(c, dict) and isinstance(c.get("text"), str)) \
        if isinstance(choices, list) else 0


class CompletionsStreamParser(ChatStreamParser):
    def on_event(self, event: str | None, obj: dict) -> None:
        super().on_event(event, obj)
        self._result.output_chars += _text_chars(obj.get("choices"))


class OpenAICompletionsAdapter(OpenAIChatAdapter):
    """Legacy ``/v1/completions``: the chat rules, text in ``choices[].text``."""

    endpoint = "completions"

    def parse_response(self, body: bytes) -> ResponseResult:
        result = super().parse_response(body)
        obj = load_json(body)
        if isinstance(obj, dict):
            result.output_chars += _text_chars(obj.get("choices"))
        return result

    def stream_parser(self, path: str) -> StreamParser:
        return CompletionsStreamParser()


class OpenAIEmbeddingsAdapter(Adapter):
    """``/v1/embeddings``: input tokens only (``usage.prompt_tokens``)."""

    provider = "openai"
    endpoint = "embeddings"
    output = False

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            _, info = parse_json_request(body, ())
            info.stream = False
            return info
        except Exception:
            return RequestInfo(malformed=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            obj = load_json(body)
            if not isinstance(obj, dict):
                return ResponseResult(garbled=bool(body))
            result = ResponseResult(model=str_or_none(obj.get("model")), error=error_type(obj))
            usage = obj.get("usage")
            if isinstance(usage, dict):
                result.usage = Usage(input_tokens=as_int(usage.get("prompt_tokens")))
                result.usage_final = result.complete = True
            return result
        except Exception:
            return ResponseResult(garbled=True)

    def stream_parser(self, path: str) -> StreamParser:
        return ChatStreamParser()  # embeddings never stream; a stream here is read like chat

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        return "text/event-stream" in content_type.lower()


EMBEDDINGS = OpenAIEmbeddingsAdapter()
COMPLETIONS = OpenAICompletionsAdapter()
COMPLETIONS_PASSIVE = OpenAICompletionsAdapter(add_usage=False)
