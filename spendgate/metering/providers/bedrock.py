"""AWS Bedrock runtime (``bedrock-runtime.<region>.amazonaws.com``): Converse, ConverseStream,
InvokeModel and InvokeModelWithResponseStream, model from the path ``/model/{modelId}/{op}``.

* Converse: JSON ``usage`` with ``inputTokens`` / ``outputTokens`` / ``cacheReadInputTokens`` /
  ``cacheWriteInputTokens`` (older responses also say ``...TokenCount``). As with Anthropic,
  ``inputTokens`` EXCLUDES cache reads and writes (``totalTokens`` is the sum of all four).
* ConverseStream: ``application/vnd.amazon.eventstream`` frames, the event type in the
  ``:event-type`` header, the payload the inner JSON object; usage only in the final ``metadata``.
* InvokeModel: the model's own body; for Anthropic models the Messages body (usage as Anthropic).
* InvokeModelWithResponseStream: frames with ``:event-type: chunk`` whose payload is
  ``{"bytes": base64}`` of one Anthropic stream event; the final ``message_stop`` also carries
  ``amazon-bedrock-invocationMetrics`` (used only when the events had no usage).

Model ids are URL-encoded in the path (``anthropic.claude-sonnet-4-5-20250929-v1%3A0``, inference
profiles ``us.anthropic...``, ``global.anthropic...``, and ARNs with ``%2F``); pricing maps them
(see spendgate.pricing.rates.catalogue_candidates).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from spendgate.metering.providers.anthropic import (
    MESSAGES,
    AnthropicStreamParser,
)
from spendgate.metering.providers.base import (
    Adapter,
    RequestInfo,
    ResponseResult,
    StreamParser,
    as_int,
    dig,
    load_json,
    outputs_of,
    snapshot,
    str_or_none,
    top_level,
)
from spendgate.metering.providers.eventstream import EventStreamDecoder, FrameError
from spendgate.usage import Usage

EVENTSTREAM = "application/vnd.amazon.eventstream"
OPERATIONS = ("converse", "converse-stream", "invoke", "invoke-with-response-stream")
PATH_RE = re.compile(r"^/model/(.+)/(converse|converse-stream|invoke|invoke-with-response-stream)$")


@dataclass(frozen=True, slots=True)
class BedrockPath:
    model: str  # decoded model id, inference profile id or ARN
    operation: str  # one of OPERATIONS


def parse_path(path: str) -> BedrockPath | None:
    try:
        m = PATH_RE.match(urlsplit(path or "").path)
    except ValueError:
        return None
    if m is None:
        return None
    return BedrockPath(unquote(m.group(1)), m.group(2))


def converse_usage(usage: dict) -> Usage:
    """Converse ``usage`` (input excludes cache, as Anthropic's) -> normalized usage."""
    read = as_int(usage.get("cacheReadInputTokens", usage.get("cacheReadInputTokenCount")))
    write = as_int(usage.get("cacheWriteInputTokens", usage.get("cacheWriteInputTokenCount")))
    return Usage(
        input_tokens=as_int(usage.get("inputTokens")) + read + write,
        cache_read_tokens=read,
        cache_write_tokens=write,
        output_tokens=as_int(usage.get("outputTokens")),
    )


def _converse_chars(content: object) -> int:
    total = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        text = block.get("text")
        total += len(text) if isinstance(text, str) else 0
        reasoning = dig(block, "reasoningContent", "reasoningText", "text")
        total += len(reasoning) if isinstance(reasoning, str) else 0
        tool = block.get("toolUse")
        if isinstance(tool, dict) and tool.get("input") is not None:
            total += len(str(tool["input"]))
    return total


def _frame_json(payload: bytes) -> dict | None:
    """A provider's frame payload, read leniently as every provider event is
    (JSONEventStreamParser._handle): a raw control character in a string does not garble it."""
    obj = load_json(payload, strict=False)
    return obj if isinstance(obj, dict) else None


class EventStreamParser(StreamParser):
    """Frames -> (event type, JSON payload) -> on_event. A corrupt frame stops parsing (garbled)."""

    def __init__(self) -> None:
        self._decoder = EventStreamDecoder()
        self._broken = False
        self._result = ResponseResult()

    def feed(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            frames = self._decoder.feed(data)
        except FrameError:
            self._broken = True  # no resync is possible in a length-prefixed stream
            self._result.garbled = True
            return
        for frame in frames:
            self._result.events += 1
            try:
                obj = _frame_json(frame.payload)
                if frame.message_type in ("exception", "error"):
                    kind = frame.headers.get(":exception-type") or frame.headers.get(":error-code") or "error"
                    self._result.error = self._result.error or str(kind)
                elif obj is None:
                    self._result.garbled = True
                else:
                    self.on_event(frame.event_type or "", obj)
            except Exception:  # a parser bug must never break the proxied stream
                self._result.garbled = True

    def on_event(self, event: str, obj: dict) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        if self._decoder.pending and not self._broken:
            self._result.garbled = True  # the body ended inside a frame

    def result(self) -> ResponseResult:
        return snapshot(self._result)


class ConverseStreamParser(EventStreamParser):
    def on_event(self, event: str, obj: dict) -> None:
        r = self._result
        if event == "contentBlockDelta":
            delta = obj.get("delta")
            for text in (dig(delta, "text"), dig(delta, "reasoningContent", "text"), dig(delta, "toolUse", "input")):
                r.output_chars += len(text) if isinstance(text, str) else 0
        elif event == "messageStop":
            r.complete = True
        elif event == "metadata":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                r.usage = converse_usage(usage)
                r.usage_final = True
            r.complete = True


class InvokeStreamParser(EventStreamParser):
    """``chunk`` frames carry base64 Anthropic events: fed to the Anthropic stream rules."""

    def __init__(self) -> None:
        super().__init__()
        self._anthropic = AnthropicStreamParser()
        self._metrics: dict | None = None

    def on_event(self, event: str, obj: dict) -> None:
        if event != "chunk":
            return
        raw = obj.get("bytes")
        try:
            decoded = base64.b64decode(raw, validate=True) if isinstance(raw, str) else b""
        except (binascii.Error, ValueError):
            decoded = b""
        inner = _frame_json(decoded)
        if inner is None:
            self._result.garbled = True
            return
        metrics = inner.get("amazon-bedrock-invocationMetrics")
        if isinstance(metrics, dict):
            self._metrics = metrics
        self._anthropic.on_event(str_or_none(inner.get("type")), inner)

    def result(self) -> ResponseResult:
        mine = self._result
        r = self._anthropic.result()
        r.events, r.garbled = mine.events, r.garbled or mine.garbled
        r.model = None  # the path's id (inference profile) decides the price, not the body's alias
        r.error = r.error or mine.error
        if r.usage is None and self._metrics is not None:  # events without usage: trust the metrics
            r.usage = Usage(input_tokens=as_int(self._metrics.get("inputTokenCount")),
                            output_tokens=as_int(self._metrics.get("outputTokenCount")))
        if self._metrics is not None and r.usage is not None:
            r.usage_final = True
        return r


def _invoke_usage(obj: dict) -> Usage | None:
    """Usage of a non-Anthropic InvokeModel body (Nova, Llama, Titan), if it has one."""
    usage = obj.get("usage")
    if isinstance(usage, dict) and "inputTokens" in usage:  # Amazon Nova
        return converse_usage(usage)
    if "prompt_token_count" in obj:  # Meta Llama
        return Usage(input_tokens=as_int(obj["prompt_token_count"]), output_tokens=as_int(obj.get("generation_token_count")))
    if "inputTextTokenCount" in obj:  # Amazon Titan
        results = obj.get("results")
        out = sum(as_int(dig(x, "tokenCount")) for x in results) if isinstance(results, list) else 0
        return Usage(input_tokens=as_int(obj["inputTextTokenCount"]), output_tokens=out)
    return None


class BedrockAdapter(Adapter):
    provider = "bedrock"
    dialect = "bedrock"

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.endpoint = operation

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            bpath = parse_path(path)
            obj = top_level(body, frozenset(("inferenceConfig", "max_tokens", "maxTokens", "max_completion_tokens",
                                             "n"))) if body else None
            if not isinstance(obj, dict):
                return RequestInfo(model=bpath.model if bpath else None, input_bytes=len(body or b""),
                                   stream=self.operation.endswith("stream"), malformed=True)
            cap = dig(obj, "inferenceConfig", "maxTokens")
            for key in ("max_tokens", "maxTokens", "max_completion_tokens"):  # the model's own body (gpt-oss: chat's)
                cap = obj.get(key) if cap is None else cap
            return RequestInfo(
                model=bpath.model if bpath else None,
                stream=self.operation.endswith("stream"),
                max_output_tokens=as_int(cap) if cap is not None else None,
                input_bytes=len(body),
                outputs=outputs_of(obj.get("n")),
            )
        except Exception:
            return RequestInfo(malformed=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            obj = load_json(body)
            if not isinstance(obj, dict):
                return ResponseResult(garbled=bool(body))
            if self.operation.startswith("converse"):
                result = ResponseResult(error=_bedrock_error(obj))
                usage = obj.get("usage")
                if isinstance(usage, dict):
                    result.usage = converse_usage(usage)
                    result.usage_final = result.complete = True
                result.output_chars = _converse_chars(dig(obj, "output", "message", "content"))
                return result
            if obj.get("type") == "message" or isinstance(dig(obj, "usage", "input_tokens"), int):
                result = MESSAGES.parse_response(body)
                result.model = None  # the path names the model (the body may say an older alias)
                return result
            result = ResponseResult(error=_bedrock_error(obj))
            result.usage = _invoke_usage(obj)
            result.usage_final = result.complete = result.usage is not None
            return result
        except Exception:
            return ResponseResult(garbled=True)

    def is_stream_response(self, content_type: str, request: RequestInfo) -> bool:
        return EVENTSTREAM in content_type.lower()

    def stream_parser(self, path: str) -> StreamParser:
        return ConverseStreamParser() if self.operation == "converse-stream" else InvokeStreamParser()


def _bedrock_error(obj: dict) -> str | None:
    """Bedrock error bodies are ``{"message": ...}`` (the type is in x-amzn-errortype)."""
    if "message" in obj and "output" not in obj and "usage" not in obj and "content" not in obj:
        return str_or_none(obj.get("__type")) or "error"
    return None


ADAPTERS: dict[str, BedrockAdapter] = {op: BedrockAdapter(op) for op in OPERATIONS}


__all__ = ["ADAPTERS", "EVENTSTREAM", "converse_usage", "parse_path"]
