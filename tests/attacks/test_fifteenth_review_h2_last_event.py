"""Fifteenth review, finding 2: over HTTP/2, the filter keeps the stream's last event from the client
at the real end when the event's last byte is a CR, although the event is complete.

Since the fourteenth review, an empty read on HTTP/2 no longer releases what EventFilter holds when
it "holds an event", on the ground that at a real end only an unfinished event can be held and an
SSE client discards one unread (WHATWG HTML, server-sent events). But SSEBlockSplitter also holds a
*complete* event whose blank line is a lone CR (`data: [DONE]\\r\\r`, or `...\\r\\n\\r`): it waits to
see whether an LF follows. CR is a legal SSE line ending (the 13th/14th reviews list "CR line
endings" as held); an SSE client dispatches that event (EventSource does; the OpenAI Python SDK's
`_iter_chunks` yields a chunk ending in `\\r\\r`). Through spendgate over HTTP/2 it never arrives:
the client sees the stream end without its last event ([DONE] here; the last content chunk for a
server that sends no [DONE]). Over HTTP/1 spendgate releases it, and plain mitmdump forwards it.

Second test (lower severity, the fourteenth review's deliberate choice, shown for the record): an
unterminated last event (`data: [DONE]\\n`, no blank line) is withheld over HTTP/2 only, whereas
plain mitmdump and spendgate over HTTP/1 forward it. Line-based clients (go-openai reads
`ReadBytes('\\n')` and acts on each `data:` line; `requests.iter_lines()` scripts) do read it.

Fixed where it starts (addons/h2_data.py): mitmproxy's HTTP/2 layer no longer hands the stream
callable an empty read for an empty DATA frame that does not end the stream, so an empty read is
the end again and the filter lets go of whatever it holds there, on HTTP/2 as on HTTP/1.
"""

from __future__ import annotations

import pytest

from spendgate.metering.providers import openai_chat
from spendgate.metering.streams import EventFilter, StreamTap
from tests.attacks.fourteenth_review_support import H2Recorder, asked_for_usage, chat_events, post_chat
from tests.attacks.thirteenth_review_support import side_by_side


def test_tap_releases_a_complete_cr_terminated_last_event():
    """StreamTap alone: the end lets go of a held event that is complete (CR-terminated)."""
    upstream = b"".join(chat_events(True, b"\r")) + b"data: [DONE]\r\r"
    wanted = b"".join(chat_events(False, b"\r")) + b"data: [DONE]\r\r"
    tap = StreamTap(openai_chat.ChatStreamParser(), "", EventFilter(openai_chat.hide_added_usage))
    out = [tap(upstream), tap(b"")]
    assert b"".join(p for p in out if p) == wanted
    assert tap.finish().complete


def _script(last: bytes):
    def script(req) -> list:
        eol = b"\r" if last.endswith(b"\r") else b"\n"
        parts: list = [("headers", [(":status", "200"), ("content-type", "text/event-stream; charset=utf-8")], False)]
        for e in chat_events(asked_for_usage(req), eol):
            parts += [("data", e, False), 0.02]
        parts.append(("data", last, True))
        return parts
    return script


@pytest.fixture(params=[b"data: [DONE]\r\r", b"data: [DONE]\n"], ids=["ends-in-a-lone-cr", "unterminated"])
def rig(tmp_path, request):
    rec = H2Recorder(tmp_path / "rec")
    rec.h2_script = _script(request.param)
    with side_by_side(tmp_path, rec) as rig:
        yield rig, request.param


def test_h2_last_event_reaches_the_client_as_plain_mitmdump_forwards_it(rig):
    (rec, plain, gw), last = rig
    plain_text = post_chat(plain)
    assert plain_text.endswith(last)  # the control: plain mitmdump forwards it
    gw_text = post_chat(gw)
    assert b'"stream_options":{"include_usage":true}' in rec.h2_requests[-1].body
    assert gw_text == plain_text, gw_text[-80:]
    row = gw.ledger(wait_for=1)[0]
    assert row["input_tokens"] == 5 and row["output_tokens"] == 2 and not row["estimated"], row
