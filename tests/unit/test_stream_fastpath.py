"""The Anthropic stream parser's plain-delta fast path gives exactly what the full path gives.

The reference is the same parser with the fast path switched off (the SSE decoder and json.loads
for every event); streams mix plain deltas with every kind of text (quotes, escapes, control
characters, non-ASCII, invalid UTF-8), other events and garbage, and are cut at arbitrary reads.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.metering.providers import anthropic
from spendgate.metering.providers.anthropic import AnthropicStreamParser
from tests.support.wire import wire_bytes


class SlowParser(AnthropicStreamParser):
    def feed(self, data: bytes) -> None:  # the full path only
        anthropic.JSONEventStreamParser.feed(self, data)


START = (b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-sonnet-4-5",'
         b'"usage":{"input_tokens":10,"output_tokens":1}}}\n\n')
END = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
       b'"usage":{"output_tokens":42}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')


_HEAD_0 = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'


def delta(text: str, kind: str = "text", pad: str = "", index: int = 0) -> bytes:
    """A delta as Anthropic frames it; `pad` goes before the last brace (recorded streams pad so)."""
    field, typ = ("thinking", "thinking_delta") if kind == "thinking" else ("text", "text_delta")
    body = json.dumps({"type": "content_block_delta", "index": index, "delta": {"type": typ, field: text}},
                      separators=(",", ":"), ensure_ascii=False)
    body = body[:-1] + pad + body[-1:]
    return b"event: content_block_delta\ndata: " + body.encode("utf-8", "surrogatepass") + b"\n\n"


texts = st.text(alphabet=st.characters(codec=None, exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", "plain words", 'a "quote"', "back\\slash", "tab\there", "new\nline", "é ü 日本", "\x00", "\u2028"]) | st.builds(
    lambda t, n: (t or "x") * n, st.text(alphabet=st.characters(codec=None, exclude_categories=("Cs",)), max_size=40),
    st.integers(30, 90))  # long texts (past anthropic._SLICE_MAX bytes) are read from a memoryview
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
    """The result after each read (a stream cut off there reads it so) and after the end."""
    last, seen = 0, []
    for cut in sorted(set(c for c in cuts if 0 < c < len(stream))):
        parser.feed(stream[last:cut])
        seen.append(parser.result())
        last = cut
    parser.feed(stream[last:])
    parser.close()
    return seen, parser.result()


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


@pytest.mark.parametrize("name", ["anthropic_messages_stream_recorded.sse",
                                  "anthropic_messages_stream_thinking_recorded.sse"])
def test_recorded_stream_gives_the_same_result(name: str) -> None:
    """A real recorded stream (padded deltas) through both paths, one line per read and whole."""
    data = wire_bytes(name)
    assert run(AnthropicStreamParser(), data, []) == run(SlowParser(), data, [])
    fast, slow = AnthropicStreamParser(), SlowParser()
    for block in data.split(b"\n\n"):
        fast.feed(block + b"\n\n")
        slow.feed(block + b"\n\n")
    assert fast.result() == slow.result()


def test_a_delta_cut_across_reads_skips_json(monkeypatch) -> None:
    """A long delta arrives in 16 KB TLS records: its pieces are joined, not sent to json.loads;
    a piece past _HOLD_MAX, or one still held at the end, goes to the decoder as before."""
    full: list[bytes] = []
    real_feed = anthropic.JSONEventStreamParser.feed
    monkeypatch.setattr(anthropic.JSONEventStreamParser, "feed", lambda self, d: (full.append(bytes(d)), real_feed(self, d)))
    text = "x" * 40_000 + "\n" + "é" * 100
    ev = delta(text) + delta("short")
    for size in (1, 7, 16_384):
        p = AnthropicStreamParser()
        p.feed(START)  # a stream's first event: the decoder is idle after it
        full[:] = []
        for i in range(0, len(ev), size):
            p.feed(ev[i : i + size])
        p.close()
        assert full == [] and p.result().output_chars == len(text) + 5 and p.result().events == 3
    p = AnthropicStreamParser()
    p.feed(START)
    full[:] = []
    p.feed(ev[:100])
    p.close()  # cut off inside the held delta: the decoder reads it at the end, as before
    assert full == [ev[:100]] and p.result() == run(SlowParser(), START + ev[:100], [])[1]
    big = delta("y" * (anthropic._HOLD_MAX + 20_000))
    p = AnthropicStreamParser()
    p.feed(START)
    full[:] = []
    for i in range(0, len(big), 16_384):
        p.feed(big[i : i + 16_384])
    p.close()
    assert full and p.result().output_chars == anthropic._HOLD_MAX + 20_000


@pytest.mark.parametrize("size", [16_384, 10_000, 4_097])
def test_reads_out_of_step_with_the_events_return_to_the_fast_path(monkeypatch, size: int) -> None:
    """Deltas longer than a read (16 KB TLS records): every read but the first begins inside an
    event. The decoder finishes that event and the rest of the read takes the fast path, so the
    decoder sees the first read and one short head, not the whole stream; the result is the same."""
    full: list[bytes] = []
    real_feed = anthropic.JSONEventStreamParser.feed
    monkeypatch.setattr(anthropic.JSONEventStreamParser, "feed", lambda self, d: (full.append(bytes(d)), real_feed(self, d)))
    stream = START + b"".join(delta("x" * 16_384 + str(i)) for i in range(40)) + END
    cuts = list(range(size, len(stream), size))
    fast = run(AnthropicStreamParser(), stream, cuts)
    decoded = sum(map(len, full))
    monkeypatch.setattr(anthropic.JSONEventStreamParser, "feed", real_feed)
    assert fast == run(SlowParser(), stream, cuts)
    assert decoded < size + 16_600 + len(END), decoded


def test_plain_deltas_skip_json() -> None:
    p = AnthropicStreamParser()
    p.feed(START)
    p.feed(delta("hello") + delta("wörld", "thinking", "   ") + delta('say "hi"'))
    r = p.result()
    assert r.events == 4 and r.output_chars == len("hello") + len("wörld") + len('say "hi"')


# What the fast path accepts, as one pattern: the fixed head, one JSON string (read by json.loads,
# which must give text without lone surrogates: what msgspec reads the same way), the fixed tail.
# The steps in _plain_until must accept exactly these events, and count the same.
_ONE_PATTERN = __import__("re").compile(
    rb'event: content_block_delta\ndata: \{"type":"content_block_delta","index":(?:0|[1-9][0-9]{0,8}),'
    rb'"delta":\{"type":"(?:text_delta","text|thinking_delta","thinking)":("(?:[^"\\\n]|\\[^\n])*")\}[ \t]*\}[ \t]*\n\n'
)


def _by_pattern(parser: AnthropicStreamParser, data: bytes) -> tuple[int, int, bytes]:
    pos, events, chars = 0, 0, 0
    while pos < len(data):
        end = data.find(b"\n", pos + 27)
        if end < 0:
            break
        m = _ONE_PATTERN.match(data, pos, end + 2)
        if m is None or len(m.group(0)) > anthropic.sse_cap(parser):
            break
        literal = m.group(1)
        # a long text of plain ASCII is counted by its length: control characters in it are taken
        # (as the full path takes them, JSONEventStreamParser._handle); others are msgspec's
        lenient = (len(literal) - 2 >= anthropic._SLICE_MAX and data.isascii() and b"\\" not in literal
                   and b"\r" not in literal)
        try:
            text = json.loads(literal, strict=not lenient)
            text.encode("utf-8")  # json.loads lets lone surrogates through (escaped or surrogatepass)
        except (ValueError, UnicodeError):
            break
        chars += len(text)
        events += 1
        pos = m.end()
    return events, chars, data[pos:]


mutations = st.sampled_from([b'"', b"\\", b"\x00", b"\x1f", b"\t", b"\n", b"\r", b"\x7f", b"\xff", b"\xc3\xa9",
                             b" ", b"}", b'"}', b"\n\n", b"x", b"\\n", b'\\"', b"\\u00e9", b"\\ud83d", b"\\ude00",
                             b"\\ud83d\\ude00", b"\xed\xa0\x80", b"\\x", b"\\u12"])  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.builds(delta, texts, st.sampled_from(["text", "thinking"]), pads,
                                    st.sampled_from([0, 0, 1, 12])),
                          st.lists(st.tuples(st.integers(0, 200), mutations), max_size=3)), min_size=1, max_size=6),
       st.integers(0, 40))
def test_plain_deltas_accept_what_the_one_pattern_accepted(evs, cut_tail: int) -> None:
    """Events with bytes spliced in anywhere (quotes, backslashes, controls, line feeds, braces),
    several per read, the last one maybe cut short: same events, characters and remainder. The
    common head and tail are compared as bytes before the patterns: index 0 and others, pads."""
    parts = []
    for ev, muts in evs:
        for at, piece in muts:
            at = min(at, len(ev))
            ev = ev[:at] + piece + ev[at:]
        parts.append(ev)
    data = b"".join(parts)
    data = data[: len(data) - cut_tail] if cut_tail < len(data) else data
    fast = AnthropicStreamParser()
    before = fast.result().events, fast.result().output_chars
    rest = data[fast._plain_until(data, 0):]
    got = (fast.result().events - before[0], fast.result().output_chars - before[1], rest)
    assert got == _by_pattern(AnthropicStreamParser(), data)


@pytest.mark.parametrize("tail", ["", "z" * anthropic._SLICE_MAX], ids=["short", "long"])
def test_plain_deltas_every_byte_inside_the_text(tail: str) -> None:
    """Each of the 256 byte values, each pair of a lead and a following byte, each escape letter,
    and the UTF-8 forms json.loads and msgspec read differently (surrogates, overlong), in a text;
    a long text is read from a memoryview, a short one from a slice: both are checked."""
    base = delta("ab cd" + tail)
    at = base.index(b"ab cd") + 2
    for b1 in range(256):
        pieces = [bytes([b1]), b"\\" + bytes([b1]), b"\\u00" + bytes([b1]) + b"0" if b1 < 0x80 else b"",
                  *(bytes([b1, b2]) for b2 in (0x00, 0x1F, 0x22, 0x5C, 0x80, 0xA9, 0xBF) if b1 >= 0x80)]
        if b1 >= 0xE0:
            pieces += [bytes([b1, 0x80, 0x80]), bytes([b1, 0xA0, 0x80]), bytes([b1, 0x9F, 0xBF, 0xBF]), bytes([b1, 0x90, 0x80, 0x80])]
        for piece in pieces:
            data = base[:at] + piece + base[at:] + delta("next")
            fast = AnthropicStreamParser()
            rest = data[fast._plain_until(data, 0):]
            assert (fast.result().events, fast.result().output_chars, rest) == \
                _by_pattern(AnthropicStreamParser(), data), piece


@pytest.mark.parametrize("byte", [bytes([b]) for b in (*range(0x20), 0x22, 0x5C, 0x7F, 0xC3)])
@pytest.mark.parametrize("size", [anthropic._SLICE_MAX - 2, anthropic._SLICE_MAX, 16_384, 70_000])
def test_a_long_plain_text_counted_by_its_length_reads_as_the_full_path(byte: bytes, size: int) -> None:
    """A long ASCII text without a backslash, inner quote or CR is counted by its length, not
    decoded: a raw control character in it (invalid JSON, which the full path takes leniently)
    counts as one character there too, and a quote, backslash, CR, line feed or non-ASCII byte
    sends the text back to msgspec or the full path. One read, and reads of 16 KB."""
    text = b"y" * (size // 2) + byte + b"y" * (size - size // 2)
    event = _HEAD_0 + text + b'"}}\n\n'
    stream = START + event + delta("next") + END
    slow = run(SlowParser(), stream, [])
    assert run(AnthropicStreamParser(), stream, []) == slow
    cuts = list(range(16_384, len(stream), 16_384))
    assert run(AnthropicStreamParser(), stream, cuts) == run(SlowParser(), stream, cuts)
    if byte not in (b'"', b"\\", b"\n", b"\r", b"\xc3"):  # a text JSON reads: the event is counted
        assert slow[1].output_chars == size + 1 + 4 and not slow[1].garbled


# Found by the attack review of the hold (each failed before its fix).
_CR_DELTA = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
             b'"delta":{"type":"text_delta","text":"hello"}}')


def _after_each_read(parser: AnthropicStreamParser, pieces: list[bytes]) -> list[object]:
    seen = []
    for piece in pieces:
        parser.feed(piece)
        seen.append(parser.result())
    return seen


@pytest.mark.parametrize("ending", [b"\r\n\r\n", b"\r\r", b"\n\r", b"\r\n\r", b"\n\r\n"])
def test_an_event_ended_by_carriage_returns_is_not_held(ending: bytes) -> None:
    """The decoder ends lines on CR too: such an event is complete, so result() shows it at once."""
    rest = (b'event: message_delta\r\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
            b'"usage":{"output_tokens":42}}\r\n\r\nevent: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n')
    pieces = [START, _CR_DELTA + ending, rest]
    assert _after_each_read(AnthropicStreamParser(), pieces) == _after_each_read(SlowParser(), pieces)


def test_lines_that_are_no_plain_delta_go_to_the_decoder_at_once() -> None:
    """An event line, then many short lines: after the second line nothing is held any more, so
    no read joins what came before it again (the hold was re-joined per read: quadratic)."""
    p = AnthropicStreamParser()
    p.feed(START)
    p.feed(b"event: content_block_delta\n")
    p.feed(b"a\n")  # the data line just ended: may it still be a delta? (no, but the hold cannot tell yet)
    for _ in range(1_000):
        p.feed(b"a\n")
        assert not p._held
