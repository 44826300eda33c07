"""OpenAI Responses API (``/v1/responses``; Codex with ChatGPT login uses
``chatgpt.com/backend-api/codex/responses``), JSON and SSE.

Usage arrives in ``response.usage`` of the terminal event (completed / incomplete / failed; failed
may carry ``usage: null``). ``input_tokens`` includes cached tokens, ``output_tokens`` includes
reasoning (when xAI's total says it does not, it is added: ``output_with_reasoning``). Hosted web search is billed per call: we count ``web_search_call`` output items.
"""

from __future__ import annotations

import re
from typing import Any

from spendgate.identity import BodyHints
from spendgate.metering.framing import Oversized
from spendgate.metering.providers.base import (
    Adapter,
    JSONEventStreamParser,
    RequestInfo,
    ResponseResult,
    StreamParser,
    add_finish_reason,
    as_int,
    dig,
    error_type,
    load_json,
    output_with_reasoning,
    parse_json_request,
    str_or_none,
)
from spendgate.metering.salvage import head_field, tail_field
from spendgate.usage import Usage

RESPONSES_PATH = "/v1/responses"
CODEX_RESPONSES_PATH = "/backend-api/codex/responses"
CODEX_COMPACT_PATH = "/backend-api/codex/responses/compact"

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# a background response (`"background": true`) answered before it ran: its usage comes with the
# finished response, fetched later (OpenAIResponseRetrieveAdapter), and is charged then
PENDING = frozenset({"queued", "in_progress"})
ENDED = frozenset({"completed", "incomplete", "failed", "cancelled"})  # a Response's terminal statuses
PENDING_NOTE = "background response: charged when its result is fetched"
RESULTS_KEY = "openai:response:"  # + the response id: a stored response is billed once (batches.RESPONSES_CHARGED)


def response_key(host: str, response_id: str) -> str:
    """A response as this gateway remembers it (charged once, its held estimate): ids are their
    host's, so another host's answer (a site's server may echo a client's id) never matches."""
    return f"{RESULTS_KEY}{host}|{response_id}"
_TEXT_DELTAS = frozenset(
    f"response.{kind}.delta"
    for kind in (
        "output_text",
        "refusal",
        "reasoning_text",
        "reasoning_summary_text",
        "function_call_arguments",
        "custom_tool_call_input",
        "code_interpreter_call_code",
        "mcp_call_arguments",
    )
)
WEB_SEARCH_ITEM = "web_search_call"


def responses_usage(usage: dict, web_searches: int = 0) -> Usage:
    """Normalize a Responses ``usage`` object (tokens; output includes reasoning)."""
    inp = as_int(usage.get("input_tokens"))
    reasoning = as_int(dig(usage, "output_tokens_details", "reasoning_tokens"))
    output = output_with_reasoning(inp, as_int(usage.get("output_tokens")), reasoning, usage.get("total_tokens"))
    return Usage(
        input_tokens=inp,
        cache_read_tokens=as_int(dig(usage, "input_tokens_details", "cached_tokens")),
        output_tokens=output,
        reasoning_tokens=min(reasoning, output),
        web_search_requests=web_searches,
        input_audio_tokens=min(as_int(dig(usage, "input_tokens_details", "audio_tokens")), inp),
        input_image_tokens=min(as_int(dig(usage, "input_tokens_details", "image_tokens")), inp),
        output_audio_tokens=min(as_int(dig(usage, "output_tokens_details", "audio_tokens")), output),
        output_image_tokens=min(as_int(dig(usage, "output_tokens_details", "image_tokens")), output),
    )


def count_web_searches(output: Any) -> int:
    if not isinstance(output, list):
        return 0
    return sum(1 for item in output if dig(item, "type") == WEB_SEARCH_ITEM)


def response_error(response: Any) -> str | None:
    """The error code of a failed Response object (``{"error": {"code": ...}}``)."""
    return error_type(response) if dig(response, "error") else None


def _output_chars(output: Any) -> int:
    total = 0
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("arguments"), str):
            total += len(item["arguments"])
        for key in ("content", "summary"):
            parts = item.get(key)
            for part in parts if isinstance(parts, list) else ():
                text = dig(part, "text")
                total += len(text) if isinstance(text, str) else 0
    return total


def apply_response(result: ResponseResult, response: dict, web_searches: int) -> None:
    """Fold a (terminal or whole) Response object into ``result``."""
    result.model = str_or_none(response.get("model")) or result.model
    result.response_id = str_or_none(response.get("id")) or result.response_id
    result.service_tier = str_or_none(response.get("service_tier")) or result.service_tier
    result.error = result.error or response_error(response)
    result.background = result.background or response.get("background") is True
    status = response.get("status")
    result.finished = result.finished or (isinstance(status, str) and status in ENDED)
    # why it ended: the incomplete reason (e.g. max_output_tokens) when there is one, else the status
    add_finish_reason(result, dig(response, "incomplete_details", "reason") or response.get("status"))
    searches = max(web_searches, count_web_searches(response.get("output")))
    usage = response.get("usage")
    if isinstance(usage, dict):
        result.usage = responses_usage(usage, searches)
        result.usage_final = True
        if result.response_id:  # a stored response may be fetched again (GET /v1/responses/{id}): billed once
            result.results_key = RESULTS_KEY + result.response_id


class ResponsesStreamParser(JSONEventStreamParser):
    """Responses SSE: deltas for estimates, web_search_call items, terminal usage."""

    def __init__(self) -> None:
        super().__init__()
        self._web_searches = 0  # web_search_call items completed so far

    def on_event(self, event: str | None, obj: dict) -> None:
        kind = obj.get("type") if isinstance(obj.get("type"), str) else event
        r = self._result
        if kind in _TEXT_DELTAS:
            delta = obj.get("delta")
            r.output_chars += len(delta) if isinstance(delta, str) else 0
        elif kind == "response.output_item.done":
            self._web_searches += dig(obj, "item", "type") == WEB_SEARCH_ITEM
        elif kind in ("response.created", "response.in_progress"):
            r.model = r.model or str_or_none(dig(obj, "response", "model"))
            # a background stream the client leaves runs on at the provider: held until fetched by its id
            r.background = r.background or dig(obj, "response", "background") is True
            r.response_id = r.response_id or str_or_none(dig(obj, "response", "id"))
        elif kind in TERMINAL_EVENTS:
            response = obj.get("response")
            if isinstance(response, dict):
                apply_response(r, response, self._web_searches)
            if kind == "response.failed":
                r.error = r.error or "failed"
            r.complete = r.finished = True
        elif kind == "error" or event == "error":
            r.error = r.error or error_type(obj) or str_or_none(obj.get("code")) or "error"

    def on_oversized(self, event: str | None, over: Oversized) -> None:
        """A terminal event repeating a generated image (or huge output) keeps model and usage."""
        kind = head_field(over, "type")
        kind = kind if isinstance(kind, str) else event
        if kind in TERMINAL_EVENTS:
            response = {"model": head_field(over, "model"), "usage": tail_field(over, "usage"),
                        "service_tier": tail_field(over, "service_tier")}
            self.on_event(event, {"type": kind, "response": response})
        elif kind in _TEXT_DELTAS:
            self._result.output_chars += over.size
        elif kind not in ("response.output_item.done", "response.output_item.added", "response.content_part.done",
                          "response.output_text.done", "response.image_generation_call.partial_image"):
            self._result.garbled = True


class OpenAIResponsesAdapter(Adapter):
    provider = "openai"
    endpoint = "responses"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            obj, info = parse_json_request(body, ("max_output_tokens",),
                                           ("user", "prompt_cache_key", "previous_response_id"))
            info.metadata_user = str_or_none(obj.get("user"))
            info.continues = str_or_none(obj.get("previous_response_id"))
            if key := str_or_none(obj.get("prompt_cache_key")):  # Codex: its conversation id
                info.hints = BodyHints(prompt_cache_key=key[:256])
            return info
        except Exception:
            return RequestInfo(malformed=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            obj = load_json(body)
            if not isinstance(obj, dict):
                return ResponseResult(garbled=bool(body))
            result = ResponseResult()
            status = obj.get("status")
            if isinstance(status, str) and status in PENDING and not isinstance(obj.get("usage"), dict):
                return ResponseResult(free=True, held=True, note=PENDING_NOTE, model=str_or_none(obj.get("model")),
                                      response_id=str_or_none(obj.get("id")), background=obj.get("background") is True)
            if obj.get("object") == "response" or "usage" in obj or "output" in obj:
                apply_response(result, obj, 0)
                result.complete = result.usage is not None
                result.output_chars = _output_chars(obj.get("output"))
            else:
                result.error = error_type(obj)
            return result
        except Exception:
            return ResponseResult(garbled=True)

    def stream_parser(self, path: str) -> StreamParser:
        return ResponsesStreamParser()


class OpenAIResponseRetrieveAdapter(OpenAIResponsesAdapter):
    """``GET /v1/responses/{id}`` (and ``?stream=true``): how a background response's answer is
    collected. Never refused (the model ran already; refusing the fetch saves nothing), charged
    when the response it carries is finished, once per response id by this process (a poll
    after that, or a fetch of a response whose POST was charged, is $0: ``results_key``)."""

    endpoint = "responses.retrieve"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        return RequestInfo(results=True, stream="stream=true" in path.partition("?")[2].lower())


class OpenAIResponseCancelAdapter(OpenAIResponseRetrieveAdapter):
    """``POST /v1/responses/{id}/cancel``: stops a background response. Its answer is the Response,
    `cancelled`; when it says the usage it ran up, that is charged like a fetch's, and it releases
    the response's hold on the budgets (budgets.admission.Admission._held_until_fetched); OpenAI
    answers `usage: null`, and the hold then stays until a fetch says more, or its hour. Never
    refused (cancelling stops the bill). Its answer never marks the response charged: a provider
    that runs on after it (Azure has) charges the fetch of the finished response in full."""

    endpoint = "responses.cancel"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        return RequestInfo(results=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        result = super().parse_response(body)
        result.results_key = None
        return result


class OpenAIResponsesCompactAdapter(OpenAIResponsesAdapter):
    """``POST /v1/responses/compact`` (Codex's remote compaction): a model pass over the
    conversation, billed per token. Its answer (``object: response.compaction``) carries a
    Responses ``usage`` and no ``model``: the request's model prices it (OpenAI API reference,
    "Compact a response")."""

    endpoint = "responses.compact"


RETRIEVE_PATH = re.compile(r"^/v1/responses/[^/]+$")  # matched lower-cased; not /input_tokens (a POST)
AZURE_RETRIEVE_PATH = re.compile(r"^/openai(/v1)?/responses/[^/]+$")  # Azure OpenAI's background mode
CANCEL_PATH = re.compile(r"^/v1/responses/[^/]+/cancel$")
AZURE_CANCEL_PATH = re.compile(r"^/openai(/v1)?/responses/[^/]+/cancel$")
RESPONSES = OpenAIResponsesAdapter()
RESPONSES_RETRIEVE = OpenAIResponseRetrieveAdapter()
RESPONSES_CANCEL = OpenAIResponseCancelAdapter()
# the calls whose answer is a background response that ran (meter.light; budgets.admission)
FETCHES = frozenset({RESPONSES_RETRIEVE.endpoint, RESPONSES_CANCEL.endpoint})
RESPONSES_COMPACT = OpenAIResponsesCompactAdapter()
