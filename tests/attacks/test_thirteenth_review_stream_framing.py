"""Thirteenth review (transparency), finding 1: an OpenAI chat stream the gateway added
`include_usage` to ends early for an HTTP/1.1 client, and corrupts its keep-alive connection.

The usage-only event the gateway hides (streams.EventFilter, then EventDropper) usually arrives in a network read
of its own: OpenAI writes one event per chunk. The dropper then returns b"" for that read, and
mitmproxy turns every piece a `response.stream` callable returns into a chunk of its own: an
empty one is "0\\r\\n\\r\\n", the chunked body's terminator. The client's response ends there,
before `data: [DONE]`; the rest of the stream ("e\\r\\ndata: [DONE]...0\\r\\n\\r\\n") follows on
the connection and is read as the head of the next response. The same happens whenever a read
ends inside an event (the dropper holds the partial event and returns b""). Plain mitmdump
forwards the whole stream and the connection carries the next request fine.
"""

from __future__ import annotations

import json

import pytest

from tests.attacks.thirteenth_review_support import Recorder, dechunk, open_tunnel, read_response, side_by_side

HOST = "api.openai.com"
KEY = "sk-test-SECRET456"
BODY = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def _request(path: str, body: bytes = b"", method: str = "POST") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {KEY}\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def _chunk(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def openai_chat_stream(req, split: int | None = None) -> list:
    """What OpenAI sends: one event per HTTP chunk, written as it is produced; with include_usage,
    `"usage":null` on every chunk and a last `choices: []` chunk carrying the usage. `split`: cut
    each event into reads of that many bytes instead (a read ending inside an event)."""
    asked = (json.loads(req.decoded_body).get("stream_options") or {}).get("include_usage") is True
    events = []
    for piece in ("Hel", "lo"):
        c = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        events.append(_chunk(c))
    if asked:
        events.append(_chunk({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                              "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}))
    events.append(b"data: [DONE]\n\n")
    out: list = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                 b"transfer-encoding: chunked\r\n\r\n"]
    for e in events:
        for i in range(0, len(e), split or len(e)):
            part = e[i:i + (split or len(e))]
            out += [b"%x\r\n%s\r\n" % (len(part), part), 0.05]  # flushed: one read each
    out.append(b"0\r\n\r\n")
    return out


def ok_json(req) -> list:
    body = b'{"object":"list","data":[]}'
    return [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)]


@pytest.fixture
def rig(tmp_path):
    with side_by_side(tmp_path, Recorder(tmp_path / "rec")) as rig:
        yield rig


def _stream_then_next(proxy, rec, script) -> tuple[bytes, tuple[bytes, bytes] | Exception]:
    """A streamed chat request, then a GET on the same (keep-alive) connection."""
    rec.script = script
    s = open_tunnel(proxy.port, proxy.ca_file, HOST)
    try:
        s.sendall(_request("/v1/chat/completions", BODY))
        _head, body = read_response(s, timeout=10)
        rec.script = ok_json
        s.sendall(_request("/v1/models", method="GET"))
        try:
            second = read_response(s, timeout=5)
        except Exception as e:  # noqa: BLE001 - what the client library would see
            second = e
        return body, second
    finally:
        s.close()


def _sse_text(chunked_body: bytes) -> bytes:
    return b"".join(dechunk(chunked_body))


@pytest.mark.parametrize("split", [None, 40], ids=["event-per-read", "read-ends-inside-an-event"])
def test_hidden_usage_chunk_does_not_end_the_clients_stream_early(rig, split):
    rec, plain, gw = rig
    script = lambda r: openai_chat_stream(r, split)  # noqa: E731

    plain_body, plain_next = _stream_then_next(plain, rec, script)
    assert _sse_text(plain_body).endswith(b"data: [DONE]\n\n")  # the control: plain mitmdump
    assert not isinstance(plain_next, Exception) and plain_next[0].startswith(b"HTTP/1.1 200"), plain_next

    gw_body, gw_next = _stream_then_next(gw, rec, script)
    chunks = dechunk(gw_body)
    # the client's body ends at the first empty chunk: everything it gets must be in front of it
    assert b"" not in chunks[:-1], f"an empty chunk (the terminator) in the middle of the stream: {gw_body!r}"
    text = _sse_text(gw_body)
    assert b'"content":"Hel"' in text and b'"content":"lo"' in text
    assert text.endswith(b"data: [DONE]\n\n"), text
    assert b'"choices":[]' not in text  # the chunk we added is still hidden
    # and the connection still carries the next request
    assert not isinstance(gw_next, Exception), f"the next response on the connection broke: {gw_next!r}"
    assert gw_next[0].startswith(b"HTTP/1.1 200"), gw_next
    assert gw_next[1] == b'{"object":"list","data":[]}'


def openai_chat_stream_recorded_shape(req) -> list:
    """The same stream as OpenAI really sends it with include_usage (tests/fixtures/wire/
    openai_chat_stream_include_usage.chunks.jsonl: every chunk carries `"usage":null`), all in
    one read so the framing bug above does not get in the way."""
    asked = (json.loads(req.decoded_body).get("stream_options") or {}).get("include_usage") is True
    events = b""
    for piece in ("Hel", "lo"):
        c = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        if asked:
            c["usage"] = None
        events += _chunk(c)
    if asked:
        events += _chunk({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                          "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
    events += b"data: [DONE]\n\n"
    return [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncontent-length: %d\r\n\r\n%s"
            % (len(events), events)]


def _events(proxy, rec) -> bytes:
    rec.script = openai_chat_stream_recorded_shape
    s = open_tunnel(proxy.port, proxy.ca_file, HOST)
    try:
        s.sendall(_request("/v1/chat/completions", BODY))
        head, body = read_response(s, timeout=10)
        return _sse_text(body) if b"transfer-encoding: chunked" in head.lower() else body
    finally:
        s.close()


def test_client_that_did_not_ask_for_usage_gets_the_chunks_it_would_have_got(rig):
    """Finding 2 (low): README "added upstream, removed before the client sees it" and
    architecture.md "so it gets exactly what it asked for": only the usage-only chunk is removed;
    every other chunk still carries the `"usage":null` member that include_usage makes OpenAI add,
    which the client never asked for and plain mitmdump never shows it."""
    rec, plain, gw = rig
    plain_events = _events(plain, rec)
    gw_events = _events(gw, rec)
    assert b'"usage"' not in plain_events  # the control
    assert gw_events == plain_events, gw_events
