"""OpenAI Responses (+ Codex on chatgpt.com): terminal-event usage, web_search_call counting,
errors and failed responses with null usage."""

from __future__ import annotations

import json

from test_providers_common import STREAMS, fixture_bytes, run_stream, run_whole

from spendgate.metering.providers.base import ResponseResult
from spendgate.metering.providers.openai_responses import RESPONSES
from spendgate.usage import Usage

FACTORY = STREAMS["openai_responses"][0]


def sse(*events: dict) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def test_stream_fixture_exact() -> None:
    result = run_whole(FACTORY, fixture_bytes("openai_responses_stream.sse"))
    assert result == ResponseResult(
        model="gpt-5-2025-08-07",
        usage=Usage(
            input_tokens=9000, cache_read_tokens=8192, output_tokens=800, reasoning_tokens=512, web_search_requests=2
        ),
        usage_final=True,
        output_chars=37,  # reasoning summary 23 + output text 14
        complete=True,
        events=20,
        finish_reasons=("completed",),
        response_id="resp_spendgatefixture0001",
        results_key="openai:response:resp_spendgatefixture0001",  # fetched again later: billed once
        finished=True,  # it ended (a background response's fetch releases its hold: budgets.admission)
    )


def test_json_fixture_exact() -> None:
    result = RESPONSES.parse_response(fixture_bytes("openai_responses.json"))
    assert result == ResponseResult(
        model="gpt-5-2025-08-07",
        usage=Usage(input_tokens=1200, output_tokens=4096, reasoning_tokens=4000, web_search_requests=1),
        usage_final=True,
        output_chars=37,
        complete=True,
        finish_reasons=("max_output_tokens",),
        response_id="resp_spendgatefixture0001",
        results_key="openai:response:resp_spendgatefixture0001",
        finished=True,  # status incomplete: it ended
    )


def test_truncated_before_completed() -> None:
    data = fixture_bytes("openai_responses_stream.sse")
    cut = data.index(b"event: response.completed")
    result = run_stream(FACTORY, [data[:cut]])
    assert result.usage is None and not result.usage_final and not result.complete and not result.finished
    assert result.output_chars == 37 and result.model == "gpt-5-2025-08-07"


def test_searches_counted_from_items_when_final_output_is_empty() -> None:
    item = {"type": "response.output_item.done", "item": {"type": "web_search_call", "id": "ws_1"}}
    final = {"type": "response.incomplete", "response": {"model": "gpt-5", "output": [], "usage": {
        "input_tokens": 10, "output_tokens": 5}}}
    result = run_whole(FACTORY, sse(item, item, final))
    assert result.usage == Usage(input_tokens=10, output_tokens=5, web_search_requests=2)
    assert result.complete and result.usage_final


def test_error_event_then_failed_with_null_usage() -> None:
    body = sse(
        {"type": "response.created", "response": {"model": "gpt-5-nano", "usage": None}},
        {"type": "error", "sequence_number": 2, "error": {"type": "insufficient_quota", "code": "insufficient_quota"}},
        {"type": "response.failed", "response": {"model": "gpt-5-nano", "status": "failed", "output": [],
                                                 "error": {"code": "insufficient_quota"}, "usage": None}},
    )
    result = run_whole(FACTORY, body)
    assert result.error == "insufficient_quota" and result.usage is None and result.complete


def test_failed_without_error_event() -> None:
    body = sse({"type": "response.failed", "response": {"status": "failed", "error": {"code": "server_error"},
                                                        "usage": {"input_tokens": 3, "output_tokens": 0}}})
    result = run_whole(FACTORY, body)
    assert result.error == "server_error" and result.usage == Usage(input_tokens=3)


def test_flat_error_event() -> None:
    result = run_whole(FACTORY, sse({"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}))
    assert result.error == "rate_limit_exceeded"


def test_error_body() -> None:
    body = b'{"error":{"message":"nope","type":"invalid_request_error","param":null,"code":null}}'
    result = RESPONSES.parse_response(body)
    assert result.error == "invalid_request_error" and result.usage is None


def test_parse_request() -> None:
    body = json.dumps({"model": "gpt-5-codex", "input": [], "stream": True, "max_output_tokens": 2048,
                       "store": False}).encode()
    info = RESPONSES.parse_request("/backend-api/codex/responses", body)
    assert (info.model, info.stream, info.max_output_tokens) == ("gpt-5-codex", True, 2048)
    assert info.rewritten_body is None and not info.malformed


def test_reasoning_outside_output_tokens_is_added_only_when_the_total_says_so() -> None:
    """Seventeenth review X1: xAI's Responses usage may report reasoning beside output_tokens
    (total = input + output + reasoning); OpenAI's output_tokens include it (total = input + output)."""
    def usage(total: int) -> Usage | None:
        body = {"id": "r", "object": "response", "status": "completed", "model": "grok-4", "output": [],
                "usage": {"input_tokens": 100, "output_tokens": 50, "total_tokens": total,
                          "output_tokens_details": {"reasoning_tokens": 30}}}
        return RESPONSES.parse_response(json.dumps(body).encode()).usage
    assert usage(180) == Usage(input_tokens=100, output_tokens=80, reasoning_tokens=30)  # xAI
    assert usage(150) == Usage(input_tokens=100, output_tokens=50, reasoning_tokens=30)  # OpenAI
