"""Gemini: model from the path, running-total usageMetadata (last one with counts wins),
thoughts ADDED to candidates, SSE vs JSON-array streaming."""

from __future__ import annotations

import json

import pytest
from test_providers_common import STREAMS, fixture_bytes, run_stream, run_whole

from spendgate.metering.providers.base import ResponseResult
from spendgate.metering.providers.gemini import (
    GENERATE_CONTENT,
    STREAM_GENERATE_CONTENT,
    GeminiStreamParser,
    parse_path,
)
from spendgate.usage import Usage

STREAM_USAGE = Usage(
    input_tokens=5000 + 120, cache_read_tokens=4096, output_tokens=42 + 300, reasoning_tokens=300
)
STREAM_RESULT = ResponseResult(
    model="gemini-2.5-pro",
    usage=STREAM_USAGE,
    usage_final=True,
    input_tokens_hint=5120,
    output_chars=70,
    complete=True,
    events=3,
    finish_reasons=("STOP",),
)


@pytest.mark.parametrize("name", ["gemini_sse", "gemini_array"])
def test_stream_fixtures_exact(name: str) -> None:
    factory, fixture = STREAMS[name]
    assert run_whole(factory, fixture_bytes(fixture)) == STREAM_RESULT


def test_json_fixture_exact() -> None:
    result = GENERATE_CONTENT.parse_response(fixture_bytes("gemini_generate.json"))
    assert result == ResponseResult(
        model="gemini-2.5-flash",
        usage=Usage(input_tokens=800, output_tokens=210, reasoning_tokens=150, web_search_requests=2),
        usage_final=True,
        input_tokens_hint=800,
        output_chars=len("Antwort ✓"),
        complete=True,
        finish_reasons=("STOP",),
    )


def test_buffered_stream_array_as_whole_body() -> None:
    assert GENERATE_CONTENT.parse_response(fixture_bytes("gemini_stream.json")).usage == STREAM_USAGE


def test_stream_parser_picks_framing_from_query() -> None:
    sse = STREAM_GENERATE_CONTENT.stream_parser("/v1beta/models/m:streamGenerateContent?alt=sse&key=x")
    array = STREAM_GENERATE_CONTENT.stream_parser("/v1beta/models/m:streamGenerateContent?key=x")
    assert isinstance(sse, GeminiStreamParser) and isinstance(array, GeminiStreamParser)
    sse.feed(fixture_bytes("gemini_stream.json"))
    array.feed(fixture_bytes("gemini_stream.json"))
    assert sse.result().usage is None and array.result().usage == STREAM_USAGE


def test_array_framing_tolerates_sse_bodies() -> None:
    """Bare top-level objects count as elements, so a mislabelled SSE body is still metered."""
    result = run_whole(STREAMS["gemini_array"][0], fixture_bytes("gemini_stream.sse"))
    assert result.usage == STREAM_USAGE and result.usage_final


def test_truncated_stream_keeps_running_totals_but_not_final() -> None:
    data = fixture_bytes("gemini_stream.json")
    cut = data.rindex(b'"finishReason"')
    result = run_stream(STREAMS["gemini_array"][0], [data[:cut]])
    assert not result.complete and not result.usage_final
    assert result.usage == Usage(input_tokens=5120, cache_read_tokens=4096, output_tokens=300, reasoning_tokens=300)
    assert result.input_tokens_hint == 5120 and result.output_chars == len("**Denken** über Klammern") + 25


def test_array_close_completes_without_finish_reason() -> None:
    body = b'[{"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":4}}\r\n]'
    result = run_whole(STREAMS["gemini_array"][0], body)
    assert result.complete and result.usage_final and result.usage == Usage(input_tokens=3, output_tokens=4)


def test_vertex_like_chunks_without_counts_do_not_reset_usage() -> None:
    chunks = [
        {"usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1}},
        {"usageMetadata": {"trafficType": "ON_DEMAND"}, "candidates": [{"content": {"parts": [{"text": "ab"}]}}]},
        {"candidates": [{"content": {"parts": [{"text": "c"}]}}]},
    ]
    body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks)
    result = run_whole(STREAMS["gemini_sse"][0], body)
    assert result.usage == Usage(input_tokens=7, output_tokens=1) and result.output_chars == 3
    assert not result.usage_final


@pytest.mark.parametrize("body", [
    b'[{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}]',
    b'{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}',
])
def test_errors(body: bytes) -> None:
    assert GENERATE_CONTENT.parse_response(body).error == "RESOURCE_EXHAUSTED"
    assert run_whole(STREAMS["gemini_array"][0], body).error == "RESOURCE_EXHAUSTED"


def test_parse_request_model_from_path() -> None:
    body = json.dumps({"contents": [], "generationConfig": {"maxOutputTokens": 8192}}).encode()
    info = STREAM_GENERATE_CONTENT.parse_request("/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", body)
    assert (info.model, info.stream, info.max_output_tokens, info.malformed) == ("gemini-2.5-pro", True, 8192, False)
    info = GENERATE_CONTENT.parse_request("/v1/models/gemini-2.5-flash:generateContent", b'{"contents":[]}')
    assert (info.model, info.stream, info.max_output_tokens) == ("gemini-2.5-flash", False, None)
    snake = GENERATE_CONTENT.parse_request(
        "/v1beta/models/m:generateContent", b'{"generation_config":{"max_output_tokens":5}}'
    )
    assert snake.max_output_tokens == 5


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1beta/models/gemini-2.5-pro:generateContent", ("gemini-2.5-pro", "generateContent", False)),
        (
            "/v1/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            ("gemini-2.0-flash", "streamGenerateContent", True),
        ),
        ("/v1beta/models/gemini%2D2.5:streamGenerateContent?key=k", ("gemini-2.5", "streamGenerateContent", False)),
        ("/v1beta/models/m:countTokens", None),
        ("/v1beta/tunedModels/t:generateContent", ("tunedModels/t", "generateContent", False)),  # metered; no list price
        ("/v1beta/models", None),
    ],
)
def test_parse_path(path: str, expected: tuple | None) -> None:
    got = parse_path(path)
    assert (None if got is None else (got.model, got.method, got.sse)) == expected
