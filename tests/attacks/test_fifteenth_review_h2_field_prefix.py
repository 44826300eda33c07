"""Fifteenth review, finding 1: over HTTP/2, an empty DATA frame that falls inside an event's first
field name still lets the filter go (the fourteenth review's fix is incomplete).

`EventFilter.holds_event` decides whether what the filter holds at an empty read is "the start of
an SSE event" by `held.startswith((b"data:", b"event:", b"id:", b"retry:", b":"))`. When the empty
DATA frame comes after only 1-4 bytes of an event (`d`, `da`, `dat`, `data`), the held bytes are a
prefix of `data:`, not something that starts with it: the tap takes them for a body that is not an
event stream, flushes them to the client, and the rest of the event (`ta: {...}\n\n`) becomes a
block of its own that `hide_added_usage` cannot read. The client then gets what the thirteenth
review's fixes exist to hide: the `"usage":null` member in every chunk, and the usage-only chunk
with `choices: []` it never asked for (a client that indexes `choices[0]` breaks on it).

The same happens when the held block starts with a byte-order mark (the stream's first event).

Plain mitmdump (same h2 client, same h2 provider) gives the client the stream the provider sent,
without usage, since the client never asked for it.

Fixed where it starts (addons/h2_data.py): mitmproxy's HTTP/2 layer no longer hands the stream
callable an empty read for an empty DATA frame that does not end the stream, so an empty read is
the end again, on HTTP/2 as on HTTP/1, and the filter's guess (`holds_event`) went.
"""

from __future__ import annotations

import json

import pytest

from tests.attacks.fourteenth_review_support import H2Recorder, data_of, h2_exchange
from tests.attacks.thirteenth_review_support import side_by_side

HOST = "api.openai.com"
HEADERS = [("authorization", "Bearer sk-test-SECRET456"), ("content-type", "application/json")]


def _chunk(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _events(asked: bool) -> list[bytes]:
    out = []
    for piece in ("Hel", "lo"):
        c = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        if asked:
            c["usage"] = None
        out.append(_chunk(c))
    if asked:
        out.append(_chunk({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                           "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}))
    out.append(b"data: [DONE]\n\n")
    return out


def h2_cut_in_field_name(req) -> list:
    """OpenAI's chat stream over HTTP/2, an empty DATA frame after the first 3 bytes (`dat`) of each event."""
    asked = (json.loads(req.body).get("stream_options") or {}).get("include_usage") is True
    parts: list = [("headers", [(":status", "200"), ("content-type", "text/event-stream; charset=utf-8")], False)]
    for e in _events(asked):
        parts += [("data", e[:3], False), 0.05, ("data", b"", False), 0.05, ("data", e[3:], False), 0.05]
    parts.append(("data", b"", True))
    return parts


@pytest.fixture
def rig(tmp_path):
    rec = H2Recorder(tmp_path / "rec")
    rec.h2_script = h2_cut_in_field_name
    with side_by_side(tmp_path, rec) as rig:
        yield rig


def _post(proxy, body: bytes):
    proto, head, frames = h2_exchange(proxy.port, proxy.ca_file, HOST, "POST", "/v1/chat/completions", body, HEADERS)
    assert proto == "h2", proto
    assert frames and frames[-1] == ("END",), frames
    return data_of(frames)


def test_empty_data_frame_inside_the_field_name_keeps_the_added_usage_hidden(rig):
    rec, plain, gw = rig
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    plain_text = _post(plain, body)
    assert plain_text == b"".join(_events(asked=False))  # the control: plain mitmdump

    gw_text = _post(gw, body)
    assert b'"stream_options":{"include_usage":true}' in rec.h2_requests[-1].body  # the gateway added it
    assert b'"usage"' not in gw_text, gw_text
    assert gw_text == plain_text
    row = gw.ledger(wait_for=1)[0]
    assert row["input_tokens"] == 5 and row["output_tokens"] == 2 and not row["estimated"], row
