"""SSE decoder, raw block splitter and Gemini's JSON-array splitter: arbitrary read boundaries,
every line-ending style, bounded memory with resync, never raising."""

from __future__ import annotations

import json

import pytest

from spendgate.metering.framing import (
    JSONArrayStreamSplitter,
    SSEBlockSplitter,
    SSEDecoder,
    SSEEvent,
)


def decode(pieces: list[bytes], cap: int = 4 * 1024 * 1024) -> tuple[list[SSEEvent], bool]:
    dec = SSEDecoder(max_event_bytes=cap)
    events = [e for p in pieces for e in dec.feed(p)]
    return events + dec.flush(), dec.garbled


def all_splits(data: bytes) -> list[list[bytes]]:
    splits = [[data[:i], data[i:]] for i in range(len(data) + 1)]
    splits.append([data[i : i + 1] for i in range(len(data))])
    return splits


SAMPLE = (
    b"\xef\xbb\xbf: comment line\n"
    b"event: first\n"
    b"data: h\xc3\xa9llo \xf0\x9f\x91\x8b\n"
    b"data:second line\n"
    b"id: 7\n"
    b"retry: 100\n"
    b"\n"
    b"data\n"
    b"\n"
    b"event: ignored-without-data\n"
    b"\n"
    b"data:  two spaces\n"
    b"unknown: field\n"
    b"\n"
)
EXPECTED = [
    SSEEvent("first", "héllo 👋\nsecond line"),
    SSEEvent(None, ""),
    SSEEvent(None, " two spaces"),
]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_fields_and_every_split(eol: bytes) -> None:
    data = SAMPLE.replace(b"\n", eol)
    for pieces in all_splits(data):
        events, garbled = decode(pieces)
        assert events == EXPECTED, pieces
        assert not garbled


def test_mixed_line_endings_and_cr_lf_split_across_reads() -> None:
    events, _ = decode([b"data: a\r", b"\ndata: b\r", b"\r", b"data: c\n\r\n"])
    assert events == [SSEEvent(None, "a\nb"), SSEEvent(None, "c")]


def test_lone_cr_then_lf_in_next_read_is_one_line_ending() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: x\r") == []
    assert dec.feed(b"\n") == []  # the LF belongs to the CR: no blank line yet
    assert dec.feed(b"\r\n") == [SSEEvent(None, "x")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    events, _ = decode([b"data: \xff\xfe ok\n\n"])
    assert events == [SSEEvent(None, "\ufffd\ufffd ok")]


def test_flush_dispatches_unterminated_last_event() -> None:
    events, _ = decode([b'event: message_stop\ndata: {"type":"message_stop"}'])
    assert events == [SSEEvent("message_stop", '{"type":"message_stop"}')]


def test_oversized_event_is_passed_on_as_head_and_tail_and_decoder_resyncs() -> None:
    big = b"data: " + b"x" * 500 + b"\n" + b"data: " + b"y" * 600 + b"\n\n"
    data = b"data: before\n\n" + big + b"data: after\n\n"
    for pieces in ([data], [data[i : i + 13] for i in range(0, len(data), 13)]):
        events, garbled = decode(pieces, cap=1000)
        assert [e.data for e in events if e.oversized is None] == ["before", "after"]
        assert events[1].oversized is not None and events[1].oversized.size > 1000
        assert not garbled


def test_oversized_single_line_without_newline_is_bounded() -> None:
    dec = SSEDecoder(max_event_bytes=100)
    for _ in range(50):
        assert dec.feed(b"z" * 64) == []
    assert len(dec._line) == 0 and len(dec._over.tail) <= 2 * 25 + 64  # nothing accumulated
    events = dec.feed(b"\n\ndata: ok\n\n")
    assert events[0].oversized.size == 50 * 64 + 1 and events[1] == SSEEvent(None, "ok")  # + its line end


def test_never_raises_on_odd_input() -> None:
    dec = SSEDecoder()
    for junk in (b"", b"\x00\x00", b":\n\n", b"data", b"\r\r\r", b"event:\n\n", b"\xef\xbb"):
        dec.feed(junk)
    dec.flush()


# -- SSEBlockSplitter ------------------------------------------------------------------------------

BLOCKS = [b"event: a\r\ndata: 1\r\n\r\n", b"data: 2\n\n", b": c\r\r", b"data: 3\n\r\n", b"\n"]


def test_block_splitter_reassembles_exact_bytes_at_any_split() -> None:
    data = b"".join(BLOCKS) + b"data: tail"
    for pieces in all_splits(data):
        splitter = SSEBlockSplitter()
        got = [b for p in pieces for b in splitter.feed(p)]
        assert got == BLOCKS
        assert splitter.flush() == b"data: tail"


def test_block_splitter_trailing_cr_waits_for_more() -> None:
    splitter = SSEBlockSplitter()
    assert splitter.feed(b"data: 1\r\r") == []  # the second CR may be the start of CRLF
    assert splitter.feed(b"\n") == [b"data: 1\r\r\n"]


def test_block_splitter_is_bounded() -> None:
    splitter = SSEBlockSplitter(max_event_bytes=50)
    out = splitter.feed(b"data: " + b"x" * 100)
    assert out == [b"data: " + b"x" * 100] and splitter.flush() == b""


# -- JSONArrayStreamSplitter ---------------------------------------------------------------------

ELEMENTS = [
    {"text": "brackets ] } [ { inside", "n": 1},
    {"text": 'quote \\" and backslash \\\\ and \\u00e9 ü 🚀', "nested": [[1, {"a": []}], {}]},
    [1, 2, {"x": "]"}],
]


def test_array_splitter_every_split() -> None:
    data = ("[" + ",\r\n".join(json.dumps(e, ensure_ascii=False, indent=1) for e in ELEMENTS) + "]\n").encode()
    for pieces in all_splits(data):
        splitter = JSONArrayStreamSplitter()
        got = [json.loads(t) for p in pieces for t in splitter.feed(p)]
        assert got == ELEMENTS
        assert splitter.closed and not splitter.garbled


def test_array_splitter_reports_elements_as_soon_as_they_close() -> None:
    splitter = JSONArrayStreamSplitter()
    assert splitter.feed(b'[{"a": 1}') == ['{"a": 1}']
    assert not splitter.closed
    assert splitter.feed(b',\r\n{"b": "}"') == []
    assert splitter.feed(b"}]") == ['{"b": "}"}']
    assert splitter.closed


def test_bare_object_is_one_element() -> None:
    splitter = JSONArrayStreamSplitter()
    assert splitter.feed(b'{"error": {"code": 429}}') == ['{"error": {"code": 429}}']


def test_oversized_element_is_passed_on_as_head_and_tail_and_splitter_resyncs() -> None:
    data = b'[{"a": 1}, {"big": "' + b"x" * 2000 + b'"}, {"c": 3}]'
    for step in (1, 17, len(data)):
        splitter = JSONArrayStreamSplitter(max_element_bytes=500)
        got = [t for i in range(0, len(data), step) for t in splitter.feed(data[i : i + step])]
        assert [json.loads(t) for t in got if isinstance(t, str)] == [{"a": 1}, {"c": 3}]
        assert got[1].size > 2000 and got[1].head.startswith('{"big"')
        assert splitter.closed and not splitter.garbled
        assert len(splitter._elem) == 0


def test_unbalanced_garbage_never_raises() -> None:
    splitter = JSONArrayStreamSplitter()
    for junk in (b"]]]}}}", b'"unterminated', b"\\", b"[[[[", b"\xff\x00", b"}"):
        splitter.feed(junk)
    assert splitter.garbled


def _reference_events(data: bytes) -> list[SSEEvent]:
    """The SSE spec's line rules written the slow, obvious way (a regex split on CR, LF, CRLF)."""
    import re

    out, lines, event = [], [], None
    for line in re.split(rb"\r\n|\r|\n", data)[:-1]:  # the part after the last line ending is unterminated
        text = line.decode("utf-8", "replace")
        if not text:
            if lines:
                out.append(SSEEvent(event, "\n".join(lines)))
            lines, event = [], None
        elif not text.startswith(":"):
            name, sep, value = text.partition(":")
            value = value[1:] if sep and value.startswith(" ") else value
            if name == "data":
                lines.append(value)
            elif name == "event":
                event = value
    return out


def test_line_endings_found_anywhere_in_long_reads_match_the_reference() -> None:
    """The decoder finds CR and LF with bytes.find (not a regex) in reads of any size and mix."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    parts = st.sampled_from([b"data: ", b"event: e", b"x" * 3000, b"\r", b"\n", b"\r\n", b": c", b"data:y", b"\n\n"])

    @settings(max_examples=200, deadline=None)
    @given(st.lists(parts, max_size=40), st.lists(st.integers(1, 9000), max_size=6))
    def check(seq: list[bytes], cuts: list[int]) -> None:
        data = b"".join(seq) + b"\n\n"
        if data.startswith(b"\n"):
            data = b"data: z" + data
        points = sorted({c % len(data) for c in cuts})
        pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
        events, _ = decode(pieces)
        assert events == _reference_events(data)

    check()
