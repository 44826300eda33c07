"""Replays of the real Bedrock, Azure, Vertex and embeddings recordings in tests/fixtures/wire.
Bedrock recordings are decoded events: they are re-framed as AWS event-stream frames
(ConverseStream: the event type in ``:event-type``, the inner object as the payload;
InvokeModelWithResponseStream: ``{"bytes": base64(event)}`` in ``chunk`` frames)."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest
from test_providers_common import assert_split_invariant, reframe_chunks, wire_bytes

from spendgate.metering.providers import route
from spendgate.metering.providers.eventstream import encode
from spendgate.usage import Usage

pytestmark = pytest.mark.wire

BEDROCK = "bedrock-runtime.us-east-1.amazonaws.com"
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1%3A0"


def _adapter(host: str, path: str):
    r = route(host, path)
    assert r is not None and r.adapter is not None
    return r.adapter


def converse_frames(name: str) -> bytes:
    out = b""
    for line in wire_bytes(name).decode().splitlines():
        if line.strip():
            ((event, payload),) = json.loads(line).items()
            out += encode({":event-type": event, ":content-type": "application/json", ":message-type": "event"},
                          json.dumps(payload).encode())
    return out


def test_bedrock_converse_json() -> None:
    r = _adapter(BEDROCK, f"/model/{MODEL}/converse").parse_response(wire_bytes("bedrock_converse.json"))
    assert r.usage == Usage(input_tokens=22, output_tokens=57) and r.usage_final


@pytest.mark.parametrize(("name", "usage"), [
    ("bedrock_converse_stream_decoded.chunks.jsonl", Usage(input_tokens=22, output_tokens=55)),
    ("bedrock_converse_stream_reasoning_decoded.chunks.jsonl", Usage(input_tokens=51, output_tokens=94)),
])
def test_bedrock_converse_stream_every_split(name: str, usage: Usage) -> None:
    a = _adapter(BEDROCK, f"/model/{MODEL}/converse-stream")
    r = assert_split_invariant(lambda: a.stream_parser(""), converse_frames(name), 3)
    assert r.usage == usage and r.usage_final and r.complete and not r.garbled


def test_bedrock_invoke_stream_every_split() -> None:
    data = b""
    for line in wire_bytes("bedrock_invoke_stream_anthropic_decoded.chunks.jsonl").decode().splitlines():
        if line.strip():
            payload = json.dumps({"bytes": base64.b64encode(line.encode()).decode()}).encode()
            data += encode({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
                           payload)
    a = _adapter(BEDROCK, f"/model/{MODEL}/invoke-with-response-stream")
    r = assert_split_invariant(lambda: a.stream_parser(""), data, 3)
    assert r.usage == Usage(input_tokens=8, output_tokens=28) and r.usage_final and r.complete


def test_aws_codec_vector_prelude() -> None:
    """The aws-sdk-go ``all_headers`` vector: our header layout gives its lengths and prelude CRC."""
    vec = json.loads(wire_bytes("aws_eventstream_test_vector_all_headers.decoded.json"))
    raw = b""
    for h in vec["headers"]:
        name, kind, value = h["name"].encode(), h["type"], h["value"]
        raw += bytes([len(name)]) + name + bytes([kind])
        if kind in (6, 7):
            v = base64.b64decode(value)
            raw += struct.pack(">H", len(v)) + v
        elif kind == 9:
            raw += base64.b64decode(value)
        elif kind in (2, 3, 4, 5, 8):
            raw += int(value).to_bytes({2: 1, 3: 2, 4: 4, 5: 8, 8: 8}[kind], "big", signed=kind != 2)
    payload = base64.b64decode(vec["payload"])
    assert len(raw) == vec["headers_length"]
    assert 12 + len(raw) + len(payload) + 4 == vec["total_length"]
    prelude = struct.pack(">II", vec["total_length"], vec["headers_length"])
    assert zlib.crc32(prelude) == vec["prelude_crc"]


def test_azure_chat_stream() -> None:
    a = _adapter("contoso.openai.azure.com", "/openai/deployments/nano/chat/completions")
    data = reframe_chunks("azure_openai_chat_stream.chunks.jsonl", named=False, done=True)
    r = assert_split_invariant(lambda: a.stream_parser(""), data, 37)
    assert r.model == "gpt-5-nano-2025-08-07" and not r.garbled and r.error is None
    assert r.usage == Usage(input_tokens=15, output_tokens=78, reasoning_tokens=64) and r.usage_final


def test_azure_responses_stream() -> None:
    a = _adapter("contoso.openai.azure.com", "/openai/v1/responses")
    data = reframe_chunks("azure_openai_responses_stream.chunks.jsonl", named=True)
    r = assert_split_invariant(lambda: a.stream_parser(""), data, 53)
    assert r.usage == Usage(input_tokens=11, output_tokens=11) and r.usage_final and r.complete


def test_vertex_gemini_stream_only_the_last_chunk_counts() -> None:
    path = "/v1/projects/p/locations/global/publishers/google/models/gemini-3.1-pro-preview:streamGenerateContent?alt=sse"
    a = _adapter("aiplatform.googleapis.com", path)
    data = reframe_chunks("vertex_gemini_stream.chunks.jsonl", named=False)
    r = assert_split_invariant(lambda: a.stream_parser(path), data, 211)
    assert r.usage == Usage(input_tokens=31, output_tokens=684 + 1026, reasoning_tokens=1026) and r.usage_final


def test_openai_embeddings() -> None:
    r = _adapter("api.openai.com", "/v1/embeddings").parse_response(wire_bytes("openai_embeddings.json"))
    assert r.usage == Usage(input_tokens=12) and r.usage_final
