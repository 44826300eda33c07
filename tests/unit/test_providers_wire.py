"""Replays of real provider recordings (tests/fixtures/wire; the AGPL-3.0 ones only from ../shared, skipped when absent).

``*.chunks.jsonl`` lines are event payloads: they are re-framed as SSE (with ``event:`` lines for
Anthropic/Responses, and the ``[DONE]`` the recorder stripped for Chat Completions)."""

from __future__ import annotations

import json
import random

import pytest
from test_providers_common import (
    ParserFactory,
    bytewise,
    decoded_pieces,
    reframe_chunks,
    run_stream,
    run_whole,
    wire_bytes,
)

from spendgate.metering.framing import SSEBlockSplitter
from spendgate.metering.providers import route
from spendgate.metering.providers.base import ResponseResult
from spendgate.metering.providers.openai_chat import hide_added_usage
from spendgate.usage import Usage

pytestmark = pytest.mark.wire

ANTHROPIC = ("api.anthropic.com", "/v1/messages?beta=true")
CHAT = ("api.openai.com", "/v1/chat/completions")
RESPONSES = ("api.openai.com", "/v1/responses")
CODEX = ("chatgpt.com", "/backend-api/codex/responses")
GEMINI_SSE = ("generativelanguage.googleapis.com", "/v1beta/models/gemini-3-pro-preview:streamGenerateContent?alt=sse")
GEMINI_ARRAY = ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:streamGenerateContent")
GEMINI_JSON = ("generativelanguage.googleapis.com", "/v1beta/models/gemini-3-pro-preview:generateContent")


def factory(target: tuple[str, str]) -> ParserFactory:
    r = route(*target)
    assert r is not None and r.adapter is not None
    return lambda: r.adapter.stream_parser(target[1])


def parse_json(target: tuple[str, str], name: str) -> ResponseResult:
    r = route(*target)
    assert r is not None and r.adapter is not None
    return r.adapter.parse_response(wire_bytes(name))


def check_stream(target: tuple[str, str], data: bytes) -> ResponseResult:
    """Whole, byte by byte, random splits and gzip/brotli all agree; nothing garbled."""
    make = factory(target)
    expected = run_whole(make, data)
    assert not expected.garbled
    if len(data) < 20_000:
        assert run_stream(make, bytewise(data)) == expected
    rng = random.Random(len(data))
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(data) + 1), 5))
        assert run_stream(make, [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]) == expected
    for codec in ("gzip", "br"):
        assert run_stream(make, decoded_pieces(data, codec, 97)) == expected
    return expected


# -- Anthropic -----------------------------------------------------------------------------------


def test_anthropic_final_input_comes_from_message_delta() -> None:
    r = check_stream(ANTHROPIC, reframe_chunks("anthropic_messages_stream_delta_input_tokens.chunks.jsonl", True))
    assert r.usage == Usage(input_tokens=61, output_tokens=2)
    assert r.input_tokens_hint == 43 and r.usage_final and r.complete
    assert r.model == "claude-opus-4-5-20251101" and r.output_chars == len("pong")


def test_anthropic_web_search_stream() -> None:
    r = check_stream(ANTHROPIC, reframe_chunks("anthropic_messages_stream_web_search.chunks.jsonl", True))
    assert r.usage == Usage(input_tokens=15665, output_tokens=795, web_search_requests=1)
    assert r.input_tokens_hint == 2037 and r.complete


def test_anthropic_prompt_cache_stream() -> None:
    r = check_stream(ANTHROPIC, reframe_chunks("anthropic_messages_stream_prompt_cache_thinking.chunks.jsonl", True))
    assert r.usage == Usage(
        input_tokens=6 + 6289 + 3337, cache_read_tokens=6289, cache_write_tokens=3337, output_tokens=198
    )
    assert r.input_tokens_hint == 2 + 3068  # message_start: input + cache write
    assert r.model == "claude-sonnet-5"


def test_anthropic_text_stream() -> None:
    r = check_stream(ANTHROPIC, reframe_chunks("anthropic_messages_stream_text.chunks.jsonl", True))
    assert r.usage == Usage(input_tokens=12, output_tokens=30) and r.complete


@pytest.mark.parametrize(
    ("name", "usage", "chars"),
    [
        ("anthropic_messages_stream_basic.sse", Usage(input_tokens=11, output_tokens=6), len("Hello there!")),
        ("anthropic_messages_stream_recorded.sse", Usage(input_tokens=135, output_tokens=10), len("[12345,67890]")),
        ("anthropic_messages_stream_tool_use.sse", Usage(input_tokens=377, output_tokens=65), None),
        ("anthropic_messages_stream_thinking_recorded.sse", Usage(input_tokens=18, output_tokens=240), None),
    ],
)
def test_anthropic_raw_sse(name: str, usage: Usage, chars: int | None) -> None:
    r = check_stream(ANTHROPIC, wire_bytes(name))
    assert r.usage == usage and r.usage_final and r.complete and r.error is None
    if chars is not None:
        assert r.output_chars == chars


def test_anthropic_midstream_error() -> None:
    r = check_stream(ANTHROPIC, wire_bytes("anthropic_messages_stream_midstream_error.sse"))
    assert r.error == "api_error" and not r.complete and not r.usage_final
    assert r.input_tokens_hint == 18


def test_anthropic_json_bodies() -> None:
    assert parse_json(ANTHROPIC, "anthropic_messages_text.json").usage == Usage(input_tokens=12, output_tokens=29)
    web = parse_json(ANTHROPIC, "anthropic_messages_web_search.json")
    assert web.usage == Usage(input_tokens=27118, output_tokens=600, web_search_requests=2)
    thinking = parse_json(ANTHROPIC, "anthropic_messages_thinking_nonstream.json")
    assert thinking.usage == Usage(input_tokens=18, output_tokens=254)
    assert parse_json(ANTHROPIC, "anthropic_error_429_rate_limit.json").error == "rate_limit_error"


def test_anthropic_recorded_exchange_stream_body() -> None:
    exchange = json.loads(wire_bytes("anthropic_429_retry_then_stream_exchange.json"))
    body = exchange[2]["response"]["body"]
    r = check_stream(ANTHROPIC, body.encode("utf-8"))
    assert r.usage_final and r.complete and r.usage is not None and r.usage.input_tokens > 0


# -- OpenAI Chat Completions -----------------------------------------------------------------------


def test_openai_chat_include_usage_chunks() -> None:
    r = check_stream(CHAT, reframe_chunks("openai_chat_stream_include_usage.chunks.jsonl", False, done=True))
    assert r.usage == Usage(input_tokens=16, output_tokens=300) and r.complete
    assert r.model == "gpt-4.1-nano-2025-04-14"


def test_openai_chat_raw_sse_and_usage_chunk_filter() -> None:
    data = wire_bytes("openai_chat_stream_include_usage_raw.sse")
    r = check_stream(CHAT, data)
    assert r.usage == Usage(input_tokens=19, output_tokens=238) and r.complete
    splitter = SSEBlockSplitter()
    blocks = splitter.feed(data) + [splitter.flush()]
    assert sum(hide_added_usage(b) == b"" for b in blocks) == 1


def test_azure_chat_stream() -> None:
    data = reframe_chunks("azure_openai_chat_stream.chunks.jsonl", False, done=True)
    r = check_stream(CHAT, data)
    assert r.usage == Usage(input_tokens=15, output_tokens=78, reasoning_tokens=64)
    assert r.model == "gpt-5-nano-2025-08-07"  # not the empty model of the prompt_filter chunk
    splitter = SSEBlockSplitter()
    assert sum(hide_added_usage(b) == b"" for b in splitter.feed(data)) == 1  # not the first choices:[] chunk


def test_openai_chat_midstream_error() -> None:
    r = check_stream(CHAT, wire_bytes("openai_chat_stream_midstream_error.sse"))
    assert r.error == "server_error" and r.usage is None and not r.complete


def test_openai_chat_json() -> None:
    assert parse_json(CHAT, "openai_chat_completion.json").usage == Usage(input_tokens=16, output_tokens=363)
    assert parse_json(CHAT, "openai_error_insufficient_quota_429.json").error == "insufficient_quota"


# -- OpenAI Responses ------------------------------------------------------------------------------


def test_responses_stream_cached_and_reasoning() -> None:
    r = check_stream(RESPONSES, reframe_chunks("openai_responses_stream.chunks.jsonl", True))
    assert r.usage == Usage(input_tokens=7112, cache_read_tokens=3072, output_tokens=463, reasoning_tokens=64)
    assert r.model == "gpt-5.3-codex" and r.complete


def test_responses_raw_sse_cached_tokens() -> None:
    r = check_stream(RESPONSES, wire_bytes("openai_responses_stream_cached_tokens.sse"))
    assert r.usage == Usage(input_tokens=16909, cache_read_tokens=15744, output_tokens=54)


def test_responses_stream_error_then_failed() -> None:
    r = check_stream(RESPONSES, reframe_chunks("openai_responses_stream_error_insufficient_quota.chunks.jsonl", True))
    assert r.error == "insufficient_quota" and r.usage is None and r.complete


def test_azure_responses_stream() -> None:
    r = check_stream(RESPONSES, reframe_chunks("azure_openai_responses_stream.chunks.jsonl", True))
    assert r.usage == Usage(input_tokens=11, output_tokens=11) and r.model == "gpt-5.1"


def test_codex_chatgpt_stream_and_request() -> None:
    r = check_stream(CODEX, wire_bytes("codex_cli_responses_stream.sse"))
    assert r.usage == Usage(input_tokens=4006, output_tokens=13) and r.model == "gpt-5-codex" and r.complete
    adapter = route(*CODEX).adapter  # type: ignore[union-attr]
    info = adapter.parse_request(CODEX[1], wire_bytes("codex_cli_responses_request.json"))
    assert (info.model, info.stream, info.malformed) == ("gpt-5-codex", True, False)


def test_responses_json() -> None:
    r = parse_json(RESPONSES, "openai_responses.json")
    assert r.usage == Usage(input_tokens=7243, cache_read_tokens=3072, output_tokens=423, reasoning_tokens=58)
    web = parse_json(RESPONSES, "openai_responses_web_search.json")
    assert web.usage == Usage(
        input_tokens=19681, cache_read_tokens=3712, output_tokens=3773, reasoning_tokens=3136, web_search_requests=3
    )


# -- Gemini ------------------------------------------------------------------------------------------


def test_gemini_stream_thoughts_added() -> None:
    r = check_stream(GEMINI_SSE, reframe_chunks("gemini_stream.chunks.jsonl", False))
    assert r.usage == Usage(input_tokens=9, output_tokens=23 + 185, reasoning_tokens=185)
    assert r.model == "gemini-3-pro-preview" and r.complete and r.usage_final


def test_vertex_stream_counts_only_in_last_chunk() -> None:
    r = check_stream(GEMINI_SSE, reframe_chunks("vertex_gemini_stream.chunks.jsonl", False))
    assert r.usage == Usage(input_tokens=31, output_tokens=684 + 1026, reasoning_tokens=1026)
    assert r.complete and r.usage_final


def test_gemini_implicit_cache_as_json_array_and_sse() -> None:
    chunks = json.loads(wire_bytes("gemini_stream_implicit_cache_recorded.json"))["response"]
    expected = Usage(input_tokens=12282, cache_read_tokens=11883, output_tokens=224 + 44, reasoning_tokens=44)
    array = ("[" + ",\r\n".join(json.dumps(c, ensure_ascii=False, indent=2) for c in chunks) + "]").encode()
    assert check_stream(GEMINI_ARRAY, array).usage == expected
    sse = b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)
    assert check_stream(GEMINI_SSE, sse).usage == expected


def test_gemini_json_bodies() -> None:
    r = parse_json(GEMINI_JSON, "gemini_generate_content.json")
    assert r.usage == Usage(input_tokens=9, output_tokens=28 + 244, reasoning_tokens=244)
    assert parse_json(GEMINI_JSON, "gemini_error_429.json").error == "RESOURCE_EXHAUSTED"
