"""OpenAI Chat Completions: cached tokens inside prompt_tokens, include_usage injection and the
usage-only chunk the proxy drops again."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_providers_common import (
    STREAMS,
    bytewise,
    fixture_bytes,
    run_stream,
    run_whole,
)

from spendgate.metering.framing import SSEBlockSplitter, SSEDecoder
from spendgate.metering.providers.base import ResponseResult
from spendgate.metering.providers.openai_chat import (
    CHAT,
    _event_data,
    hide_added_usage,
    with_include_usage,
)
from spendgate.usage import Usage

FACTORY = STREAMS["openai_chat"][0]


def test_stream_fixture_exact() -> None:
    result = run_whole(FACTORY, fixture_bytes("openai_chat_stream.sse"))
    assert result == ResponseResult(
        service_tier="default",
        model="gpt-4.1-mini-2025-04-14",
        usage=Usage(input_tokens=2300, cache_read_tokens=1792, output_tokens=150, reasoning_tokens=64),
        usage_final=True,
        input_tokens_hint=None,
        output_chars=29,  # content 16 + tool arguments 13
        error=None,
        complete=True,
        garbled=False,
        events=10,  # 9 chunks + [DONE]
        finish_reasons=("tool_calls",),
    )


def test_json_fixture_exact() -> None:
    result = CHAT.parse_response(fixture_bytes("openai_chat.json"))
    assert result == ResponseResult(
        service_tier="default",
        model="o4-mini-2025-04-16",
        usage=Usage(input_tokens=5000, cache_read_tokens=4864, output_tokens=700, reasoning_tokens=640),
        usage_final=True,
        output_chars=len("Ça marche."),
        complete=True,
        finish_reasons=("stop",),
    )


def test_truncated_before_usage_chunk() -> None:
    data = fixture_bytes("openai_chat_stream.sse")
    cut = data.index(b'"choices":[]')
    result = run_stream(FACTORY, [data[:cut]])
    assert result.usage is None and not result.usage_final and not result.complete
    assert result.output_chars == 29 and result.model == "gpt-4.1-mini-2025-04-14"


def test_midstream_error() -> None:
    body = (
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4.1","choices":[{"index":0,'
        b'"delta":{"content":"The"},"finish_reason":null}]}\n\n'
        b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
    )
    result = run_whole(FACTORY, body)
    assert result.error == "server_error" and result.usage is None and result.output_chars == 3


def test_error_body() -> None:
    body = b'{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}'
    assert CHAT.parse_response(body).error == "insufficient_quota"


REQUEST = {
    "model": "gpt-4.1",
    "messages": [{"role": "user", "content": "Grüß dich 👋"}],
    "temperature": 0.7,
    "max_completion_tokens": 1000,
    "stream": True,
    "n": 1,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "user": "u-42",
}


def test_request_without_include_usage_is_rewritten() -> None:
    body = json.dumps(REQUEST, indent=2, ensure_ascii=False).encode()
    info = CHAT.parse_request("/v1/chat/completions", body)
    assert info.drop_usage_chunk and info.rewritten_body is not None
    assert (info.model, info.stream, info.max_output_tokens, info.metadata_user) == ("gpt-4.1", True, 1000, "u-42")
    assert info.input_bytes == len(body)
    rewritten = json.loads(info.rewritten_body)
    assert rewritten == {**REQUEST, "stream_options": {"include_usage": True}}
    assert list(rewritten) == [*REQUEST, "stream_options"]
    # every byte the client wrote is kept, the member added at the object's end (never parsed and
    # written again: forty-second review); the client's own spelling of "Grüß dich 👋" included
    assert info.rewritten_body == body[:-1] + b',"stream_options":{"include_usage":true}}'
    assert "Grüß dich 👋".encode() in info.rewritten_body


@pytest.mark.parametrize("body", [
    b'{"model":"m","stream":true,"messages":[]}',
    b'{"model":"m","stream":true,"messages":[]}\n  \r\n',
    b'  {"stream":true,\n"model":"m","messages":[{"content":"}"}]} ',
    b'{"model":"m","model":"x","stream":true,"n":1.0e0,"big":123456789012345678901234567890,"messages":[]}',
])
def test_include_usage_added_reads_as_the_whole_rewrite_does(body: bytes) -> None:
    """The member added at the end says what `with_include_usage` of the parsed body says, and the
    rest of the body reads as the client wrote it (duplicates, numbers and spacing included)."""
    info = CHAT.parse_request("/v1/chat/completions", body)
    assert info.drop_usage_chunk and info.rewritten_body.startswith(body.rstrip()[:-1])
    assert json.loads(info.rewritten_body) == with_include_usage(json.loads(body))


@pytest.mark.parametrize("body", [
    b'{"model":"m","stream":true,"stream\\u005foptions":{"include_usage":false},"messages":[]}',
    b'{"model":"m","stream":true,"stream_options":{"include_usage":true},"stream_options":null,"messages":[]}',
    b'{"model":"m","stream":true,"stream_options":{"include_usage":false},"stream_options":{},"messages":[]}',
])
def test_a_client_spelling_stream_options_oddly_still_gets_usage_asked_for(body: bytes) -> None:
    """A client hiding `stream_options` (an escaped key, a duplicate the parser reads last) cannot
    make the gateway think usage is asked for when the provider reads otherwise: any such member
    sends the body through the whole rewrite, which reads it as a JSON parser does."""
    info = CHAT.parse_request("/v1/chat/completions", body)
    assert info.drop_usage_chunk
    rewritten = json.loads(info.rewritten_body)
    assert rewritten == with_include_usage(json.loads(body)) and rewritten["stream_options"]["include_usage"] is True


@pytest.mark.parametrize("codec", ["utf-16-be", "utf-16-le", "utf-32-be", "utf-32-le", "utf-16", "utf-8-sig"])
def test_include_usage_in_a_body_json_reads_in_another_encoding(codec: str) -> None:
    """json.loads reads UTF-16 and UTF-32 too, where the member's ASCII bytes spliced in would not
    be JSON (review of the forty-second review's follow-up): those are rewritten whole."""
    doc = {"model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "Grüß"}]}
    info = CHAT.parse_request("/v1/chat/completions", json.dumps(doc, ensure_ascii=False).encode(codec))
    assert info.drop_usage_chunk and json.loads(info.rewritten_body) == with_include_usage(doc)


@pytest.mark.parametrize("options", [{"include_obfuscation": False}, {"include_usage": False}, None])
def test_existing_stream_options_are_merged(options: dict | None) -> None:
    req = {"model": "m", "stream_options": options, "stream": True, "messages": []}
    info = CHAT.parse_request("/v1/chat/completions", json.dumps(req).encode())
    assert info.drop_usage_chunk and info.rewritten_body is not None
    rewritten = json.loads(info.rewritten_body)
    assert list(rewritten) == list(req)  # stream_options keeps its place
    assert rewritten["stream_options"] == {**(options or {}), "include_usage": True}


@pytest.mark.parametrize(
    "req",
    [
        {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "messages": []},
        {"model": "m", "stream": False, "messages": []},
        {"model": "m", "messages": []},
    ],
)
def test_no_rewrite_needed(req: dict) -> None:
    info = CHAT.parse_request("/v1/chat/completions", json.dumps(req).encode())
    assert info.rewritten_body is None and not info.drop_usage_chunk and not info.malformed


def test_rewrite_survives_lone_surrogates() -> None:
    body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"\\ud800x"}]}'
    info = CHAT.parse_request("/v1/chat/completions", body)
    assert info.rewritten_body is not None
    assert json.loads(info.rewritten_body)["messages"][0]["content"] == "\ud800x"


def test_malformed_request_is_forwarded_untouched() -> None:
    info = CHAT.parse_request("/v1/chat/completions", b'{"stream": true, ')
    assert info.malformed and info.rewritten_body is None and not info.drop_usage_chunk


USAGE_BLOCK = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'


@pytest.mark.parametrize(
    ("block", "out"),
    [
        (USAGE_BLOCK, b""),
        (USAGE_BLOCK.replace(b"\n", b"\r\n"), b""),
        (b'data: {"choices":[],"usage":null}\n\n', b'data: {"choices":[]}\n\n'),
        (b'data: {"usage":null,"choices":[]}\n\n', b'data: {"choices":[]}\n\n'),
        (b'data: {"choices":[],"prompt_filter_results":[]}\n\n', None),  # Azure's first chunk
        (b'data: {"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1}}\n\n', None),
        # the member cut only where the bytes read back as the object without it
        (b'data: {"choices":[{"index":0,"delta":{"content":"x"}}],"usage":null,"obfuscation":"a"}\n\n',
         b'data: {"choices":[{"index":0,"delta":{"content":"x"}}],"obfuscation":"a"}\n\n'),
        (b'data: {"usage":null}\n\n', None),
        (b'data: {"choices":[{"delta":{"x":{"usage":null}}}],"usage":null}\n\n', None),  # two: not ours to pick
        (b'data: {"choices":[], "usage": null}\n\n', None),  # not OpenAI's spelling: as it came
        (b'data: {"choices":[],"usage":null,"usage":null}\n\n', None),
        (b"data: [DONE]\n\n", None),
        (b": comment\n\n", None),
        (b"\xff\xfe garbage", None),
        (b"", None),
    ],
)
def test_hide_added_usage(block: bytes, out: bytes | None) -> None:
    assert hide_added_usage(block) == out


def test_proxy_drops_exactly_the_usage_chunk_and_still_meters_it() -> None:
    data = fixture_bytes("openai_chat_stream.sse")
    splitter, parser, forwarded = SSEBlockSplitter(), FACTORY(), bytearray()
    for piece in bytewise(data):
        parser.feed(piece)
        for block in splitter.feed(piece):
            edited = hide_added_usage(block)
            forwarded += block if edited is None else edited
    forwarded += splitter.flush()
    assert parser.result().usage is not None
    dropped = [b for b in data.split(b"\n\n") if b'"choices":[]' in b and b'"usage":{' in b]
    assert len(dropped) == 1
    assert bytes(forwarded) == data.replace(dropped[0] + b"\n\n", b"").replace(b',"usage":null', b"")
    assert forwarded.endswith(b"data: [DONE]\n\n")


@given(st.binary(max_size=40).map(lambda b: b.translate(bytes.maketrans(b"abcdef", b'\n\r: "{'))))
@settings(max_examples=400, deadline=None)
def test_event_data_fast_form_reads_as_the_sse_decoder_does(payload: bytes) -> None:
    """hide_added_usage reads OpenAI's one-line form directly: the same data the decoder gives."""
    block = b"data: " + payload + b"\n\n"
    decoder = SSEDecoder()
    events = decoder.feed(block) + decoder.flush()
    want = events[0].data if len(events) == 1 else None
    got = _event_data(block)
    assert (got.decode("utf-8", "replace") if isinstance(got, bytes) else got) == want


# -- seventeenth review X1 / D1: reasoning outside completion_tokens (xAI), DeepSeek's cache hits --

XAI_USAGE = {"prompt_tokens": 663, "completion_tokens": 50, "total_tokens": 837,
             "prompt_tokens_details": {"cached_tokens": 654}, "completion_tokens_details": {"reasoning_tokens": 124}}


def _chat_json(usage: dict, model: str = "grok-4-0709") -> bytes:
    return json.dumps({"model": model, "choices": [{"index": 0, "message": {"content": "hi"},
                                                    "finish_reason": "stop"}], "usage": usage}).encode()


def _chat_sse(usage: dict, model: str = "grok-4-0709") -> bytes:
    chunks = [{"model": model, "choices": [{"index": 0, "delta": {"content": "hi"}}]},
              {"model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}]
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def test_xai_reasoning_outside_completion_is_added_to_output_in_json_and_stream() -> None:
    expected = Usage(input_tokens=663, cache_read_tokens=654, output_tokens=174, reasoning_tokens=124)
    assert CHAT.parse_response(_chat_json(XAI_USAGE)).usage == expected
    assert run_whole(FACTORY, _chat_sse(XAI_USAGE)).usage == expected
    assert run_stream(FACTORY, bytewise(_chat_sse(XAI_USAGE))).usage == expected


@pytest.mark.parametrize("usage, output, reasoning", [
    # OpenAI: reasoning inside completion_tokens (total = prompt + completion): not counted twice
    ({"prompt_tokens": 5000, "completion_tokens": 700, "total_tokens": 5700,
      "completion_tokens_details": {"reasoning_tokens": 640}}, 700, 640),
    ({"prompt_tokens": 5000, "completion_tokens": 700,  # no total: read as OpenAI's
      "completion_tokens_details": {"reasoning_tokens": 640}}, 700, 640),
    ({"prompt_tokens": 5000, "completion_tokens": 700, "total_tokens": 9999,  # a total that adds up to neither
      "completion_tokens_details": {"reasoning_tokens": 640}}, 700, 640),
    ({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
      "completion_tokens_details": {"reasoning_tokens": 0}}, 5, 0),
])
def test_reasoning_inside_completion_is_not_double_counted(usage: dict, output: int, reasoning: int) -> None:
    for result in (CHAT.parse_response(_chat_json(usage, "o4-mini")), run_whole(FACTORY, _chat_sse(usage, "o4-mini"))):
        assert result.usage is not None and result.usage.output_tokens == output
        assert result.usage.reasoning_tokens == reasoning


@pytest.mark.parametrize("usage, cached", [
    ({"prompt_tokens": 100000, "completion_tokens": 1000, "total_tokens": 101000,
      "prompt_cache_hit_tokens": 90000, "prompt_cache_miss_tokens": 10000}, 90000),
    # both spellings: OpenAI's wins (DeepSeek may send both, with the same count)
    ({"prompt_tokens": 100, "completion_tokens": 1, "prompt_cache_hit_tokens": 64,
      "prompt_tokens_details": {"cached_tokens": 64}}, 64),
    ({"prompt_tokens": 100, "completion_tokens": 1, "prompt_cache_hit_tokens": 64,
      "prompt_tokens_details": {"cached_tokens": 0}}, 0),
])
def test_deepseek_cache_hits_are_cache_reads(usage: dict, cached: int) -> None:
    for result in (CHAT.parse_response(_chat_json(usage, "deepseek-chat")),
                   run_whole(FACTORY, _chat_sse(usage, "deepseek-chat"))):
        assert result.usage is not None and result.usage.cache_read_tokens == cached
