"""Anthropic Messages: normalization (input EXCLUDES cache), replace-not-sum stream usage,
TTL split, errors, truncation and count_tokens."""

from __future__ import annotations

import json

from test_providers_common import STREAMS, fixture_bytes, run_stream, run_whole

from spendgate.metering.providers.anthropic import (
    COUNT_TOKENS,
    MESSAGES,
    AnthropicUsageState,
)
from spendgate.metering.providers.base import ResponseResult
from spendgate.usage import Usage

STREAM_USAGE = Usage(
    input_tokens=40 + 12000 + 1500,
    cache_read_tokens=12000,
    cache_write_tokens=1500,
    cache_write_1h_tokens=1000,
    output_tokens=321,
    reasoning_tokens=120,
    web_search_requests=2,
)


def parser():
    return STREAMS["anthropic"][0]()


def sse(*events: dict) -> bytes:
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events
    )


def start(usage: dict) -> dict:
    return {"type": "message_start", "message": {"model": "claude-x", "usage": usage}}


def delta(usage: dict) -> dict:
    return {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}


def test_stream_fixture_exact() -> None:
    result = run_whole(STREAMS["anthropic"][0], fixture_bytes("anthropic_stream.sse"))
    assert result == ResponseResult(
        model="claude-sonnet-4-5-20250929",
        usage=STREAM_USAGE,
        service_tier="standard",
        usage_final=True,
        input_tokens_hint=13540,
        output_chars=57,  # thinking 16 + text 23 + tool json 18; signature_delta not counted
        error=None,
        complete=True,
        garbled=False,
        events=18,  # the ": keep-alive" comment is not an event
    )
    assert result.usage is not None
    assert result.usage.uncached_input_tokens == 40
    assert result.usage.cache_write_5m_tokens == 500


def test_json_fixture_exact() -> None:
    result = MESSAGES.parse_response(fixture_bytes("anthropic_message.json"))
    assert result.usage == Usage(
        input_tokens=7 + 4096 + 2048,
        cache_read_tokens=4096,
        cache_write_tokens=2048,
        cache_write_1h_tokens=2000,
        output_tokens=90,
        reasoning_tokens=30,
        web_search_requests=1,
    )
    assert result.model == "claude-opus-4-1-20250805"
    assert result.usage_final and result.complete and result.error is None
    assert result.output_chars == 30


def test_message_start_alone_is_provisional() -> None:
    data = fixture_bytes("anthropic_stream.sse")
    cut = data.index(b"event: message_delta")
    result = run_stream(STREAMS["anthropic"][0], [data[:cut]])
    assert not result.usage_final and not result.complete
    assert result.input_tokens_hint == 13540
    assert result.output_chars == 57
    assert result.usage is not None and result.usage.output_tokens == 2  # provisional


def test_delta_replaces_field_by_field_never_sums() -> None:
    body = sse(
        start({"input_tokens": 2037, "cache_read_input_tokens": 100, "output_tokens": 1}),
        delta({"input_tokens": 15665, "output_tokens": 795, "server_tool_use": {"web_search_requests": 1}}),
        delta({"output_tokens": 800}),
        {"type": "message_stop"},
    )
    result = run_whole(parser, body)
    assert result.usage == Usage(
        input_tokens=15665 + 100, cache_read_tokens=100, output_tokens=800, web_search_requests=1
    )
    assert result.input_tokens_hint == 2137 and result.usage_final and result.complete


def test_null_fields_in_delta_do_not_replace() -> None:
    body = sse(start({"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}),
               delta({"cache_read_input_tokens": None, "output_tokens": 4}))
    result = run_whole(parser, body)
    assert result.usage == Usage(input_tokens=15, cache_read_tokens=5, output_tokens=4)


def test_ttl_split_kept_and_scaled_when_total_changes() -> None:
    split = {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 300}
    first = start({"input_tokens": 1, "cache_creation_input_tokens": 400, "cache_creation": split})
    same = run_whole(parser, sse(first, delta({"cache_creation_input_tokens": 400, "output_tokens": 3})))
    assert same.usage is not None and same.usage.cache_write_1h_tokens == 300
    grown = run_whole(parser, sse(first, delta({"cache_creation_input_tokens": 800, "output_tokens": 3})))
    assert grown.usage is not None
    assert (grown.usage.cache_write_tokens, grown.usage.cache_write_1h_tokens) == (800, 600)
    all_1h = {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 400}
    body = sse(start({"cache_creation_input_tokens": 400, "cache_creation": all_1h}),
               delta({"cache_creation_input_tokens": 450}))
    result = run_whole(parser, body)
    assert result.usage is not None and result.usage.cache_write_1h_tokens == 450
    newer = sse(first, delta({"cache_creation_input_tokens": 50, "cache_creation": {"ephemeral_1h_input_tokens": 20}}))
    result = run_whole(parser, newer)
    assert result.usage is not None and result.usage.cache_write_1h_tokens == 20


def test_reasoning_only_from_thinking_tokens() -> None:
    state = AnthropicUsageState.empty()
    state.merge({"input_tokens": 3, "output_tokens": 50})
    assert state.to_usage().reasoning_tokens == 0
    state.merge({"output_tokens_details": {"thinking_tokens": 70}})
    assert state.to_usage().reasoning_tokens == 50  # never more than the output it is part of


def test_midstream_error_after_200() -> None:
    result = run_whole(STREAMS["anthropic_error"][0], fixture_bytes("anthropic_stream_error.sse"))
    assert result.error == "overloaded_error"
    assert not result.complete and not result.usage_final
    assert result.input_tokens_hint == 13540
    assert result.output_chars == len("Größe prüfen")


def test_error_body() -> None:
    body = b'{"type":"error","error":{"type":"billing_error","message":"spend limit reached"}}'
    result = MESSAGES.parse_response(body)
    assert result.error == "billing_error" and result.usage is None


def test_trailing_padding_inside_data_json() -> None:
    body = b'event: message_stop\ndata: {"type":"message_stop"              }\n\n'
    assert run_whole(parser, body).complete


def test_parse_request() -> None:
    body = json.dumps({
        "model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": True,
        "metadata": {"user_id": "user_abc_account__session_1"},
        "messages": [{"role": "user", "content": "hi"}],
    }).encode()
    info = MESSAGES.parse_request("/v1/messages?beta=true", body)
    assert (info.model, info.stream, info.max_output_tokens) == ("claude-sonnet-4-5", True, 32000)
    assert info.metadata_user == "user_abc_account__session_1"
    assert info.input_bytes == len(body) and not info.free and not info.malformed
    assert info.rewritten_body is None


def test_parse_request_malformed() -> None:
    for body in (b"", b"not json", b"[1,2]", b'"x"'):
        info = MESSAGES.parse_request("/v1/messages", body)
        assert info.malformed and info.model is None


def test_count_tokens_is_free_and_not_usage() -> None:
    info = COUNT_TOKENS.parse_request("/v1/messages/count_tokens", b'{"model":"claude-x","messages":[]}')
    assert info.free and info.model == "claude-x"
    result = COUNT_TOKENS.parse_response(b'{"input_tokens": 1234}')
    assert result.usage is None and result.error is None
    assert COUNT_TOKENS.endpoint == "count_tokens" and MESSAGES.endpoint == "messages"
