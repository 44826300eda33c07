"""Events bigger than the per-event memory cap (issue 14, part 2): memory stays bounded and the
small fields (usage, finish reason, model) are read from events of any size, in every framing."""

from __future__ import annotations

import base64
import gzip
import json
import os
from datetime import UTC, datetime

import pytest

from spendgate.identity import Identity
from spendgate.metering import providers
from spendgate.metering.framing import (
    DEFAULT_MAX_EVENT_BYTES,
    HEAD_BYTES,
    TAIL_BYTES,
    JSONArrayStreamSplitter,
    SSEDecoder,
)
from spendgate.metering.meter import Body, Exchange, judge
from spendgate.metering.streams import StreamTap

MODEL = "gemini-2.5-flash-image"
IMAGE = base64.b64encode(os.urandom(int(4.6 * 1024 * 1024))).decode()  # ~6.1 MiB of base64
assert len(IMAGE) > 6 * 1024 * 1024


def gemini_chunk(text: str | None, cands: int, last: bool, image: str | None = None) -> dict:
    part = {"inlineData": {"mimeType": "image/png", "data": image}} if image else {"text": text}
    cand: dict = {"content": {"parts": [part], "role": "model"}, "index": 0}
    if last:
        cand["finishReason"] = "STOP"
    usage = {"promptTokenCount": 1300, "candidatesTokenCount": cands, "totalTokenCount": 1300 + cands,
             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1300}]}
    if last:
        usage["candidatesTokensDetails"] = [{"modality": "IMAGE", "tokenCount": 1290}]
    return {"candidates": [cand], "usageMetadata": usage, "modelVersion": MODEL, "responseId": "resp-1"}


CHUNKS = [gemini_chunk("Here is", 2, False), gemini_chunk(" your image", 4, False),
          gemini_chunk(None, 1290, True, IMAGE)]
SSE_BODY = b"".join(b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\r\n\r\n" for c in CHUNKS)
ARRAY_BODY = b"[" + b"\n,\r\n".join(json.dumps(c, indent=2).encode() for c in CHUNKS) + b"\n]"


def pieces(data: bytes, size: int = 65536):
    return [data[i : i + size] for i in range(0, len(data), size)]


def exchange(host: str, path: str, body: bytes = b"{}") -> Exchange:
    route = providers.route(host, path)
    return Exchange("r1", datetime.now(UTC), 0.0, route, route.adapter.parse_request(path, body),
                    Identity(user="u", source="test"))


def run_stream(host: str, path: str, body: bytes, encoding: str = ""):
    ex = exchange(host, path)
    parser = ex.route.adapter.stream_parser(path)
    tap = StreamTap(parser, encoding)
    framer = parser._sse if parser._sse is not None else parser._array
    biggest = 0
    raw = gzip.compress(body) if encoding == "gzip" else body
    for piece in pieces(raw):
        assert tap(piece) == piece  # the client gets every byte untouched
        over = framer._over
        held = len(getattr(framer, "_line", b"")) + len(getattr(framer, "_elem", b""))
        if over is not None:
            assert len(over.head) <= HEAD_BYTES and len(over.tail) <= 2 * TAIL_BYTES
            held += len(over.head) + len(over.tail)
        biggest = max(biggest, held)
    tap(b"")
    assert biggest <= DEFAULT_MAX_EVENT_BYTES + HEAD_BYTES + 2 * TAIL_BYTES
    return ex, parser.result()


@pytest.mark.parametrize("encoding", ["", "gzip"])
def test_the_field_report_gemini_sse_image_chunk_of_6_mib(encoding):
    path = f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    ex, result = run_stream("generativelanguage.googleapis.com", path, SSE_BODY, encoding)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (1300, 1290)
    assert result.usage_final and result.complete and not result.garbled and result.model == MODEL
    verdict = judge(ex, result, None)
    assert (verdict.outcome, verdict.estimated) == ("ok", False)


def test_gemini_json_array_stream_with_an_oversized_element():
    path = f"/v1beta/models/{MODEL}:streamGenerateContent"
    ex, result = run_stream("generativelanguage.googleapis.com", path, ARRAY_BODY)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (1300, 1290)
    assert result.usage_final and result.complete and not result.garbled
    assert judge(ex, result, None).outcome == "ok"


def test_code_assist_wrapped_oversized_chunk():
    body = b"".join(b"data: " + json.dumps({"response": c}).encode() + b"\n\n" for c in CHUNKS)
    ex, result = run_stream("generativelanguage.googleapis.com", f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse", body)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (1300, 1290) and result.complete


def test_whole_gemini_body_of_6_mib_is_read_whole():
    ex = exchange("generativelanguage.googleapis.com", f"/v1beta/models/{MODEL}:generateContent")
    raw = json.dumps(CHUNKS[-1]).encode()
    for enc, data in (("", raw), ("gzip", gzip.compress(raw))):
        result = Body(data, enc).parse(ex.route.adapter)
        assert (result.usage.input_tokens, result.usage.output_tokens) == (1300, 1290)
        assert judge(ex, result, None).outcome == "ok"


def test_openai_responses_completed_event_repeating_a_generated_image():
    tools = [{"type": "function", "name": f"tool{i}", "parameters": {"type": "object"}} for i in range(300)]
    completed = {"type": "response.completed", "sequence_number": 9, "response": {
        "id": "resp_1", "object": "response", "status": "completed", "model": "gpt-5",
        "output": [{"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": IMAGE}],
        "service_tier": "default", "tools": tools,
        "usage": {"input_tokens": 2000, "input_tokens_details": {"cached_tokens": 500}, "output_tokens": 700,
                  "output_tokens_details": {"reasoning_tokens": 250}, "total_tokens": 2700}}}
    body = (b'event: response.created\ndata: {"type":"response.created","response":{"model":"gpt-5"}}\n\n'
            b"event: response.completed\ndata: " + json.dumps(completed).encode() + b"\n\n")
    ex, result = run_stream("api.openai.com", "/v1/responses", body)
    assert (result.usage.input_tokens, result.usage.cache_read_tokens, result.usage.output_tokens) == (2000, 500, 700)
    assert result.complete and result.usage_final and result.model == "gpt-5" and not result.garbled


def test_openai_chat_chunk_with_huge_delta_and_trailing_usage():
    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-audio-preview",
             "choices": [{"index": 0, "delta": {"audio": {"data": IMAGE}}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 40, "completion_tokens": 900}}
    body = b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"
    ex, result = run_stream("api.openai.com", "/v1/chat/completions", body)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (40, 900) and result.complete


def test_anthropic_huge_delta_counts_toward_estimates_and_usage_still_arrives():
    start = {"type": "message_start", "message": {"model": "claude-sonnet-4-5", "usage": {"input_tokens": 10, "output_tokens": 1}}}
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * (5 * 1024 * 1024)}}
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1400000}}
    body = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in (start, delta, end))
    body += b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    ex, result = run_stream("api.anthropic.com", "/v1/messages", body)
    assert result.usage.output_tokens == 1400000 and result.complete and not result.garbled
    assert result.output_chars >= 5 * 1024 * 1024  # had the stream been cut, the estimate sees it


def test_framers_pass_oversized_pieces_on_with_head_and_tail():
    big = b"data: " + b"x" * 500 + b"\n" + b"data: " + b"y" * 600 + b"\n\n"
    data = b"data: before\n\n" + big + b"data: after\n\n"
    for step in (1, 13, len(data)):
        dec = SSEDecoder(max_event_bytes=1000)
        events = [e for i in range(0, len(data), step) for e in dec.feed(data[i : i + step])] + dec.flush()
        assert [e.data for e in events][::2] == ["before", "after"] and not dec.garbled
        over = events[1].oversized
        assert over.size > 1000 and over.head.startswith("xxx") and over.tail.rstrip().endswith("yyy")
        assert len(over.head) <= 1000 // 8 and len(over.tail) <= 1000 // 4
    arr = b'[{"a": 1}, {"big": "' + b"x" * 2000 + b'", "usage": {"n": 5}}, {"c": 3}]'
    for step in (1, 17, len(arr)):
        splitter = JSONArrayStreamSplitter(max_element_bytes=500)
        got = [t for i in range(0, len(arr), step) for t in splitter.feed(arr[i : i + step])]
        assert got[0] == '{"a": 1}' and got[2] == '{"c": 3}' and splitter.closed and not splitter.garbled
        assert got[1].size > 2000 and got[1].tail.endswith('"usage": {"n": 5}}')
