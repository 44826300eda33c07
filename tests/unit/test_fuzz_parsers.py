"""Hypothesis fuzzing: whatever bytes arrive, in whatever pieces, no parser raises and result()
always answers. Well-formed JSON of any shape must not even trip the internal error guard."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_providers_common import STREAMS, fixture_bytes

from spendgate.metering.framing import (
    JSONArrayStreamSplitter,
    SSEBlockSplitter,
    SSEDecoder,
)
from spendgate.metering.providers import (
    HOST_PATTERNS,
    PROVIDER_HOSTS,
    gemini,
    openai_chat,
    openai_extra,
    openai_media,
    route,
    vertex,
)
from spendgate.metering.providers.anthropic import COUNT_TOKENS, MESSAGES
from spendgate.metering.providers.base import Adapter, ResponseResult
from spendgate.metering.providers.gemini import (
    GENERATE_CONTENT,
    STREAM_GENERATE_CONTENT,
)
from spendgate.metering.providers.openai_chat import CHAT, hide_added_usage
from spendgate.metering.providers.openai_responses import RESPONSES

ADAPTERS: list[tuple[Adapter, str]] = [
    (MESSAGES, "/v1/messages"),
    (COUNT_TOKENS, "/v1/messages/count_tokens"),
    (CHAT, "/v1/chat/completions"),
    (RESPONSES, "/v1/responses"),
    (GENERATE_CONTENT, "/v1beta/models/m:generateContent"),
    (STREAM_GENERATE_CONTENT, "/v1beta/models/m:streamGenerateContent?alt=sse"),
    (STREAM_GENERATE_CONTENT, "/v1beta/models/m:streamGenerateContent"),
    # the services added with issue 16 (SSE-framed; Bedrock's binary frames: test_providers_bedrock.py)
    (vertex.STREAM_RAW_PREDICT, "/v1/projects/p/locations/l/publishers/anthropic/models/c@1:streamRawPredict"),
    (vertex.STREAM_GENERATE_CONTENT, "/v1/projects/p/locations/l/publishers/google/models/g:streamGenerateContent?alt=sse"),
    (vertex.CODE_ASSIST["streamGenerateContent"], "/v1internal:streamGenerateContent?alt=sse"),
    (openai_chat.AZURE_CHAT, "/openai/deployments/d/chat/completions?api-version=2024-10-21"),
    (openai_extra.EMBEDDINGS, "/v1/embeddings"),
    (openai_extra.COMPLETIONS, "/v1/completions"),
    # embeddings and generated media (billed per image or second)
    (gemini.EMBED_CONTENT, "/v1beta/models/gemini-embedding-001:embedContent"),
    (gemini.IMAGEN_PREDICT, "/v1beta/models/imagen-4.0-generate-001:predict"),
    (gemini.VEO_PREDICT_LONG_RUNNING, "/v1beta/models/veo-3.0-generate-001:predictLongRunning"),
    (openai_media.VIDEOS_CREATE, "/v1/videos"),
    (openai_media.VIDEOS_REMIX, "/v1/videos/v/remix"),
    (openai_media.IMAGES_GENERATIONS, "/v1/images/generations"),
    (openai_media.TRANSCRIPTIONS, "/v1/audio/transcriptions"),
    (openai_media.SPEECH, "/v1/audio/speech"),
]
FIXTURE_BODIES = [fixture_bytes(fixture) for _, fixture in STREAMS.values()]
FUZZ = settings(
    max_examples=int(os.environ.get("SPENDGATE_FUZZ_EXAMPLES", "150")),  # raise it for a soak run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

adapter_index = st.integers(0, len(ADAPTERS) - 1)
cuts = st.lists(st.integers(0, 10_000), max_size=12)


def pieces(data: bytes, positions: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in positions})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def stream_all(adapter: Adapter, path: str, parts: list[bytes]) -> ResponseResult:
    parser = adapter.stream_parser(path)
    for part in parts:
        parser.feed(part)
        assert isinstance(parser.result(), ResponseResult)
    parser.close()
    result = parser.result()
    assert result.output_chars >= 0 and result.events >= 0
    return result


@FUZZ
@given(adapter_index, st.binary(max_size=2000), cuts)
def test_random_bytes_never_raise(i: int, data: bytes, positions: list[int]) -> None:
    adapter, path = ADAPTERS[i]
    stream_all(adapter, path, pieces(data, positions))
    assert isinstance(adapter.parse_response(data), ResponseResult)
    adapter.parse_request(path, data)


@FUZZ
@given(adapter_index, st.sampled_from(range(len(FIXTURE_BODIES))), st.data())
def test_mutated_and_truncated_real_shapes_never_raise(i: int, body_index: int, data: st.DataObject) -> None:
    adapter, path = ADAPTERS[i]
    body = bytearray(FIXTURE_BODIES[body_index])
    for _ in range(data.draw(st.integers(0, 8))):
        pos = data.draw(st.integers(0, len(body)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "insert":
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif pos < len(body):
            if op == "flip":
                body[pos] = data.draw(st.integers(0, 255))
            else:
                del body[pos]
    cut = data.draw(st.integers(0, len(body)))
    truncated = bytes(body[:cut])
    stream_all(adapter, path, pieces(truncated, data.draw(cuts)))
    adapter.parse_response(truncated)
    adapter.parse_request(path, truncated)


json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
KEYS = [
    "type", "usage", "message", "delta", "choices", "response", "usageMetadata", "candidates", "error", "item",
    "output", "content", "parts", "text", "input_tokens", "output_tokens", "cache_creation", "server_tool_use",
    "prompt_tokens", "completion_tokens", "promptTokenCount", "thoughtsTokenCount", "finishReason", "model",
    "modelVersion", "output_tokens_details", "web_search_requests", "tool_calls", "function", "arguments",
    "groundingMetadata", "webSearchQueries", "stream", "stream_options", "include_usage", "generationConfig",
    "maxOutputTokens", "max_tokens", "metadata", "user_id", "code", "status",
]
TYPES = [
    "message_start", "message_delta", "message_stop", "content_block_delta", "error", "text_delta",
    "thinking_delta", "input_json_delta", "response.completed", "response.failed", "response.output_item.done",
    "response.output_text.delta", "web_search_call", "response.created",
]
json_values = st.recursive(
    json_scalars | st.sampled_from(TYPES),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    max_leaves=25,
)
json_objects = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)


def dumps(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True)


@FUZZ
@given(adapter_index, st.lists(json_objects, min_size=1, max_size=6), cuts)
def test_any_json_shape_is_handled_without_internal_errors(i: int, objs: list[dict], positions: list[int]) -> None:
    adapter, path = ADAPTERS[i]
    if adapter.provider == "gemini" and "alt=sse" not in path:  # JSON-array framing
        body = ("[" + ",\r\n".join(dumps(o) for o in objs) + "]").encode()
    else:
        body = "".join(f"event: {o.get('type', 'x')!s:.20}\ndata: {dumps(o)}\n\n" for o in objs).encode()
    result = stream_all(adapter, path, pieces(body, positions))
    assert not result.garbled  # every payload was valid JSON: nothing may have blown up inside
    for obj in objs:
        whole = adapter.parse_response(dumps(obj).encode())
        assert not whole.garbled
        request = adapter.parse_request(path, dumps(obj).encode())
        assert not request.malformed


@FUZZ
@given(st.binary(max_size=600), cuts, st.integers(1, 200))
def test_framers_never_raise_and_stay_bounded(data: bytes, positions: list[int], cap: int) -> None:
    dec, arr, blocks = SSEDecoder(cap), JSONArrayStreamSplitter(cap), SSEBlockSplitter(cap)
    for part in pieces(data, positions):
        dec.feed(part)
        arr.feed(part)
        for block in blocks.feed(part):
            hide_added_usage(block)
        assert len(dec._line) <= cap and len(arr._elem) <= cap and len(blocks._buf) <= cap + len(part)
    dec.flush()
    blocks.flush()


@FUZZ
@given(st.binary(max_size=600), cuts)
def test_block_splitter_loses_no_bytes(data: bytes, positions: list[int]) -> None:
    splitter = SSEBlockSplitter()
    out = b"".join(b for part in pieces(data, positions) for b in splitter.feed(part))
    assert out + splitter.flush() == data


@FUZZ
@given(st.text(max_size=60), st.text(max_size=120))
def test_route_never_raises(host: str, path: str) -> None:
    r = route(host, path)
    assert r is None or r.provider in {*PROVIDER_HOSTS.values(), *(p for _, p in HOST_PATTERNS)}
