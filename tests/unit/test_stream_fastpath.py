"""The Anthropic stream parser's plain-delta fast path gives exactly what the full path gives.

The reference is the same parser with the fast path switched off (the SSE decoder and json.loads
for every event); streams mix plain deltas with every kind of text (quotes, escapes, control
characters, non-ASCII, invalid UTF-8), other events and garbage, and are cut at arbitrary reads.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.metering.providers import anthropic
from spendgate.metering.providers.anthropic import AnthropicStreamParser


class SlowParser(AnthropicStreamParser):
    def feed(self, data: bytes) -> None:  # the full path only
        anthropic.JSONEventStreamParser.feed(self, data)


START = (b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-sonnet-4-5",'
         b'"usage":{"input_tokens":10,"output_tokens":1}}}\n\n')
END = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
       b'"usage":{"output_tokens":42}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')


def delta(text: str, kind: str = "text", pad: str = "") -> bytes:
    """A delta as Anthropic frames it; `pad` goes before the last brace (recorded streams pad so)."""
    field, typ = ("thinking", "thinking_delta") if kind == "thinking" else ("text", "text_delta")
    body = json.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": typ, field: text}},
                      separators=(",", ":"), ensure_ascii=False)
    body = body[:-1] + pad + body[-1:]
    return b"event: content_block_delta\ndata: " + body.encode("utf-8", "surrogatepass") + b"\n\n"


texts = st.text(alphabet=st.characters(codec=None, exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", "plain words", 'a "quote"', "back\\slash", "tab\there", "new\nline", "é ü 日本", "\x00", "\u2028"])
raw_events = st.sampled_from([
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\xff\xfe"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":01,"delta":{"type":"text_delta","text":"x"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\x01b"}}\n\n',
    b'event: content_block_delta\r\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"crlf"}}\r\n\r\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n',
    b"event: content_block_delta\n", b"\n", b"\r", b": keep-alive\n\n", b"garbage{{{\n\n",
    b'event: ping\ndata: {"type":"ping"}\n\n',
])  # fmt: skip
pads = st.sampled_from(["", " ", "             ", "\t", " \t ", "\u00a0", "\n"])
events = st.lists(st.one_of(st.builds(delta, texts, st.sampled_from(["text", "thinking"]), pads), raw_events),
                  max_size=25)


def run(parser: AnthropicStreamParser, stream: bytes, cuts: list[int]) -> object:
    last = 0
    for cut in sorted(set(c for c in cuts if 0 < c < len(stream))):
        parser.feed(stream[last:cut])
        last = cut
    parser.feed(stream[last:])
    parser.close()
    return parser.result()


@settings(max_examples=400, deadline=None)
@given(events, st.lists(st.integers(min_value=0, max_value=4000), max_size=12), st.booleans())
def test_fast_path_equals_full_path(evs: list[bytes], cuts: list[int], framed: bool) -> None:
    stream = (START if framed else b"") + b"".join(evs) + (END if framed else b"")
    assert run(AnthropicStreamParser(), stream, cuts) == run(SlowParser(), stream, cuts)


@given(events)
def test_fast_path_one_event_per_read(evs: list[bytes]) -> None:
    """How the proxy sees a real stream: one network read per event."""
    fast, slow = AnthropicStreamParser(), SlowParser()
    for ev in [START, *evs, END]:
        fast.feed(ev)
        slow.feed(ev)
    assert fast.result() == slow.result()


def test_recorded_stream_gives_the_same_result() -> None:
    """A real recorded stream (padded deltas) through both paths, one line per read and whole."""
    wire = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "wire"  # as test_providers_common
    for name in ("anthropic_messages_stream_recorded.sse", "anthropic_messages_stream_thinking_recorded.sse"):
        f = wire / name
        if not f.exists():  # the shared recordings are not in the repository
            continue
        data = f.read_bytes()
        assert run(AnthropicStreamParser(), data, []) == run(SlowParser(), data, [])
        fast, slow = AnthropicStreamParser(), SlowParser()
        for block in data.split(b"\n\n"):
            fast.feed(block + b"\n\n")
            slow.feed(block + b"\n\n")
        assert fast.result() == slow.result()


def test_plain_deltas_skip_json() -> None:
    p = AnthropicStreamParser()
    p.feed(START)
    p.feed(delta("hello") + delta("wörld", "thinking", "   ") + delta('say "hi"'))
    r = p.result()
    assert r.events == 4 and r.output_chars == len("hello") + len("wörld") + len('say "hi"')
