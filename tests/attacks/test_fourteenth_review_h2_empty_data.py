"""Fourteenth review, finding 1: over HTTP/2, an empty DATA frame from the provider in the middle of
an event is taken for the end of the stream.

mitmproxy's HTTP/2 layer hands a `response.stream` callable every DATA frame's payload, an empty
one included (only an empty frame that ends the stream is skipped; its HTTP/1 layer skips every
empty read). An empty DATA frame without END_STREAM is legal (RFC 9113 section 6.1) and some
servers send them (a flush, or a frame that carries only padding). StreamTap reads b"" as "the
body ended": it closes the stream parser and releases what EventFilter holds, then goes on being
fed. With a frame like that inside an event:

* the filter forwards the event's head and then its tail as two "blocks", neither of which it can
  read: the client gets the `"usage":null` members and the usage-only chunk it never asked for
  (what fixes 1 and 2 of the thirteenth review exist to hide);
* the parser reads the partial event as a whole one: the row is "stream garbled", estimated,
  although the provider reported exact usage.

Plain mitmdump (same h2 client, same h2 provider) gives the client the stream unchanged; it never
asked for usage, so it sees none. Expected: an empty piece in the middle of a stream is nothing
(NO_PIECE, no parser close, no flush); only mitmproxy's end of message ends the stream (in
StreamTap.__call__, which cannot tell the two apart today: the fix needs the end signalled some
other way, e.g. dropping empty non-final DATA before the callable, as the HTTP/1 layer does).
"""

from __future__ import annotations

import pytest

from tests.attacks.fourteenth_review_support import H2Recorder, asked_for_usage, chat_events, post_chat
from tests.attacks.thirteenth_review_support import side_by_side

DONE = b"data: [DONE]\n\n"


def h2_openai_stream(cut: int):
    """OpenAI's chat stream over HTTP/2, each event in two DATA frames with an empty one between,
    after `cut` bytes: inside the JSON (20), or inside the first field name (3, `dat`: the
    fifteenth review broke the fourteenth's first fix with it)."""
    def script(req) -> list:
        parts: list = [("headers", [(":status", "200"), ("content-type", "text/event-stream; charset=utf-8")], False)]
        for e in chat_events(asked_for_usage(req)) + [DONE]:
            parts += [("data", e[:cut], False), 0.05, ("data", b"", False), 0.05, ("data", e[cut:], False), 0.05]
        parts.append(("data", b"", True))
        return parts
    return script


@pytest.fixture(params=[20, 3], ids=["inside-the-json", "inside-the-field-name"])
def rig(tmp_path, request):
    rec = H2Recorder(tmp_path / "rec")
    rec.h2_script = h2_openai_stream(request.param)
    with side_by_side(tmp_path, rec) as rig:
        yield rig


def test_empty_data_frame_mid_event_keeps_the_added_usage_hidden(rig):
    rec, plain, gw = rig
    plain_text = post_chat(plain)
    assert plain_text == b"".join(chat_events(asked=False)) + DONE  # the control: plain mitmdump

    gw_text = post_chat(gw)
    assert b'"stream_options":{"include_usage":true}' in rec.h2_requests[-1].body  # the gateway added it
    assert b'"usage"' not in gw_text, gw_text
    assert gw_text == plain_text


def test_empty_data_frame_mid_event_does_not_garble_the_metering(rig):
    """The client asked for usage itself (no filter): what it gets is right, and so is the row."""
    rec, plain, gw = rig
    body = (b'{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},'
            b'"messages":[{"role":"user","content":"hi"}]}')
    assert post_chat(plain, body) == b"".join(chat_events(asked=True)) + DONE
    assert post_chat(gw, body) == b"".join(chat_events(asked=True)) + DONE
    row = gw.ledger(wait_for=1)[0]
    assert row["input_tokens"] == 5 and row["output_tokens"] == 2, row
    assert not row["estimated"], row
