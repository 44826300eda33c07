import gzip
import json
import zlib

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.metering.providers.base import ResponseResult, StreamParser
from spendgate.metering import streams
from spendgate.metering.streams import EventFilter, IncrementalDecoder, StreamTap

try:
    from compression import zstd
except ImportError:
    from backports import zstd

BODY = b"".join(b"data: {\"n\": %d}\n\n" % i for i in range(200))


class Collect(StreamParser):
    def __init__(self):
        self.data = bytearray()

    def feed(self, data: bytes) -> None:
        self.data += data

    def result(self) -> ResponseResult:
        return ResponseResult(events=len(self.data))


def deflate_raw(b):
    c = zlib.compressobj(wbits=-15)
    return c.compress(b) + c.flush()


ENCODERS = {
    "identity": lambda b: b,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": deflate_raw,
    "br": brotli.compress,
    "zstd": zstd.compress,
}


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("step", [1, 7, 4096])
def test_tap_forwards_bytes_untouched_and_decodes_a_copy(name, step):
    encoded = ENCODERS[name](BODY)
    parser = Collect()
    tap = StreamTap(parser, "deflate" if name == "deflate-raw" else name)
    out = b"".join(tap(encoded[i : i + step]) for i in range(0, len(encoded), step)) + tap(b"")
    assert out == encoded
    assert bytes(parser.data) == BODY
    assert tap.bytes_seen == len(encoded) and tap.broken is None


def test_garbage_in_an_encoded_stream_stops_parsing_not_forwarding():
    parser = Collect()
    tap = StreamTap(parser, "gzip")
    junk = b"this is not gzip at all" * 10
    assert tap(junk) == junk
    assert tap.broken is not None
    assert tap(b"more") == b"more"


def test_unknown_encoding_is_forwarded():
    tap = StreamTap(Collect(), "compress")
    assert tap(b"abc") == b"abc" and tap.broken


class Exploding(Collect):
    def feed(self, data):
        raise RuntimeError("parser bug")


def test_parser_exception_never_reaches_the_client():
    tap = StreamTap(Exploding(), "")
    assert tap(b"data: x\n\n") == b"data: x\n\n"
    assert "parser bug" in tap.broken


def drop_marked(block: bytes) -> bytes | None:
    return b"" if b"DROP" in block else None


@given(st.lists(st.integers(min_value=0, max_value=len(BODY)), max_size=30))
@settings(max_examples=200, deadline=None)
def test_dropper_removes_exactly_the_marked_event_at_any_split(cuts):
    at = BODY.index(b"data", 100)  # an event boundary
    body = BODY[:at] + b"data: DROP me\r\n\r\n" + BODY[at:]
    points = sorted(set(c for c in cuts if c <= len(body)))
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)])]
    d = EventFilter(drop_marked)
    out = b"".join(d(p) for p in pieces if p) + d(b"")
    assert out == BODY and d.dropped == 1


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_filtering_tap_never_hands_on_an_empty_piece_mid_stream(encoding):
    """mitmproxy sends each piece a stream callable returns as one HTTP/1 chunk: an empty one is
    the chunked body's end (thirteenth review). A read with nothing to forward yet gives no piece;
    a gzip read that decodes to nothing yet does not make the filter let go of what it holds."""
    body = b"data: a\n\ndata: DROP me\n\ndata: par" + b"tial\n\n"
    wire = ENCODERS[encoding](body)
    tap = StreamTap(Collect(), encoding, EventFilter(drop_marked))
    reads = [wire[:3], wire[3:]] if encoding == "gzip" else [b"data: a\n\n", b"data: DROP me\n\n", b"data: par",
                                                               b"tial\n\n"]
    out = [tap(r) for r in reads]
    assert all(piece != b"" for piece in out), out
    if encoding == "identity":
        assert out == [b"data: a\n\n", (), (), b"data: partial\n\n"]
    else:
        assert out[0] == ()  # three bytes of the gzip header decode to nothing
    assert b"".join(p for p in out if p) + tap(b"") == b"data: a\n\ndata: partial\n\n"


def test_dropper_releases_an_unterminated_tail_at_the_end():
    d = EventFilter(drop_marked)
    assert d(b"data: a\n\ndata: partial") == b"data: a\n\n"
    assert d(b"") == b"data: partial"


def test_dropper_filter_errors_forward_the_event():
    def boom(block):
        raise ValueError("bad")

    d = EventFilter(boom)
    assert d(b"data: a\n\n") == b"data: a\n\n"


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd", "deflate"])
def test_incremental_decoder_matches_one_shot(enc):
    encoded = ENCODERS[enc](BODY)
    dec = IncrementalDecoder(enc)
    assert b"".join(dec.feed(encoded[i : i + 3]) for i in range(0, len(encoded), 3)) == BODY


# -- AfterForwarding: reads held, then read in batches after the tap handed them on -----------

def _anthropic_stream() -> bytes:
    """Plain deltas (the parser's fast path), thinking, an escaped one and usage at both ends."""
    def delta(text: str, kind: str = "text") -> bytes:
        return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"%s_delta",'
                b'"%s":%s}}\n\n' % (kind.encode(), kind.encode(), json.dumps(text, ensure_ascii=False).encode()))

    return (b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-sonnet-4-5",'
            b'"usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
            + b"".join(delta(f"word {i} \u00e9", "thinking" if i % 7 == 0 else "text") for i in range(60))
            + delta('esc"aped') + b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
            b'"end_turn"},"usage":{"output_tokens":42}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')


class Timers:
    """`call_later` as AfterForwarding uses it: callbacks kept until the test runs them."""

    def __init__(self) -> None:
        self.pending: list = []

    def __call__(self, delay: float, callback) -> None:
        assert delay == streams.HOLD_S
        self.pending.append(callback)

    def run(self) -> None:
        while self.pending:
            self.pending.pop(0)()


def sends(out) -> list[bytes]:
    """What mitmproxy sends of a tap's answer: bytes as one piece, else each piece it yields."""
    return [out] if isinstance(out, bytes) else list(out)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=4000), max_size=30), st.lists(st.sampled_from(
    ["run", "read", "none", "none", "abandon"]), min_size=31, max_size=31), st.booleans(),
    st.sampled_from([1, 100, 1000, 64 * 1024]))
def test_after_forwarding_reads_what_the_parser_reads_directly(cuts, between, ended, batch) -> None:
    """Random reads, batches of any size; between reads the timers run or not, the result is read
    or not, and mitmproxy may never resume the tap's generator (a send that failed): every result
    equals a parser fed the same bytes directly, and a batch is read only after its last piece
    went out."""
    from spendgate.metering.providers.anthropic import AnthropicStreamParser
    from spendgate.metering.streams import AfterForwarding

    stream = _anthropic_stream()
    timers = Timers()
    deferred = AfterForwarding(AnthropicStreamParser(), timers)
    tap, direct = StreamTap(deferred, ""), AnthropicStreamParser()
    points = sorted({c for c in cuts if c < len(stream)}) + [len(stream)]
    last = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(streams, "BATCH", batch)
        for point, step in zip(points, between):
            chunk = stream[last:point]
            last = point
            seen = deferred.parser.result().events
            out = tap(chunk)
            direct.feed(chunk)
            if isinstance(out, bytes):
                assert out == chunk and deferred.parser.result().events == seen  # held, not read
            else:
                assert next(out) == chunk and deferred.parser.result().events == seen  # sent before it is read
                if step != "abandon":
                    assert list(out) == [] and not deferred._held  # then the batch is read
            if step == "run":
                timers.run()
            elif step == "read":
                assert deferred.result() == direct.result()
    if ended:
        assert tap(b"") == b""
        direct.close()
    assert deferred.result() == direct.result() and direct.result().usage is not None
    timers.run()  # drains that run after the reads found nothing left
    assert deferred.result() == direct.result()


def test_after_forwarding_batches_reads_and_times_out_a_partial_batch(monkeypatch) -> None:
    """A batch is read once, joined, by the tap's generator; fewer bytes wait for the timer."""
    from spendgate.metering.streams import AfterForwarding

    monkeypatch.setattr(streams, "BATCH", 10)
    timers, fed = Timers(), []

    class Feeds(Collect):
        def feed(self, data: bytes) -> None:
            fed.append(bytes(data))
            super().feed(data)

    deferred = AfterForwarding(Feeds(), timers)
    tap = StreamTap(deferred, "")
    assert tap(b"abcd") == b"abcd" and tap(b"efgh") == b"efgh" and fed == [] and len(timers.pending) == 1
    assert sends(tap(b"ijkl")) == [b"ijkl"] and fed == [b"abcdefghijkl"]  # one join, one feed
    assert tap(b"mn") == b"mn" and fed == [b"abcdefghijkl"]
    timers.run()  # the timer set for the first read drains what came since
    assert fed == [b"abcdefghijkl", b"mn"]
    assert tap(b"op") == b"op" and len(timers.pending) == 1  # a new timer for a new hold
    assert deferred.result().events == 16 and fed[-1] == b"op"


def test_after_forwarding_joins_a_trickle_of_tiny_reads() -> None:
    """1-byte reads (an upstream's tiny HTTP/2 frames) are held as a few pieces, not one object
    each, and read as they came (attack review 38)."""
    from spendgate.metering.streams import HELD_READS, AfterForwarding

    deferred = AfterForwarding(Collect(), Timers())
    tap = StreamTap(deferred, "")
    data = bytes(range(256)) * 40
    for i in range(len(data)):
        assert tap(data[i : i + 1]) == data[i : i + 1]
    assert len(deferred._held) <= HELD_READS + 1 and deferred._held_bytes == len(data)
    assert deferred.result().events == len(data) and bytes(deferred.parser.data) == data


def test_after_forwarding_stops_reading_on_a_parser_bug_and_forwards_on() -> None:
    from spendgate.metering.streams import AfterForwarding

    class Broken(Collect):
        closed = False

        def feed(self, data: bytes) -> None:
            if b"boom" in data:
                raise RuntimeError("parser bug")
            super().feed(data)

        def close(self) -> None:
            self.closed = True

    timers = Timers()
    deferred = AfterForwarding(Broken(), timers)
    tap = StreamTap(deferred, "")
    assert tap(b"one ") == b"one " and len(timers.pending) == 1
    assert tap(b"two ") == b"two " and len(timers.pending) == 1  # one timer for what is held
    timers.run()
    assert deferred.result().events == 8
    for chunk in (b"boom", b"three"):
        assert tap(chunk) == chunk
        timers.run()
    assert tap(b"") == b"" and deferred.result().events == 8
    assert not deferred.parser.closed  # a parser a bug stopped is not closed on its half-read state


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_after_forwarding_holds_at_most_a_piece_of_a_decoded_read(encoding) -> None:
    """A few KB on the wire that decode to megabytes: the parser reads them during the same tap
    call once a PIECE is held, rather than all of them waiting for the loop's next pass."""
    from spendgate.metering.streams import PIECE, AfterForwarding

    body = b": " + b"a" * (8 * PIECE) + b"\n\n"
    wire = ENCODERS[encoding](body)
    deferred = AfterForwarding(Collect(), Timers())
    tap = StreamTap(deferred, encoding)
    out = tap(wire)
    assert (out if isinstance(out, bytes) else next(out)) == wire  # sent; a batch is read after that
    assert len(body) - PIECE <= len(deferred.parser.data) < len(body)  # at most one PIECE still held
    assert deferred.result().events == len(body)


@pytest.mark.parametrize("cap, read, broken", [(12, 12, False), (11, 8, True), (13, 12, False)])
def test_the_identity_path_keeps_the_decoded_cap(cap: int, read: int, broken: bool) -> None:
    """Identity bodies skip the decoder's layers, not its cap: past it the side channel stops,
    exactly at it nothing does, and every chunk goes on unchanged either way."""
    tap = StreamTap(Collect(), "", max_decoded=cap)
    for chunk in (b"abcd", b"efgh", b"ijkl"):
        assert tap(chunk) == chunk
    assert len(tap.parser.data) == read and (tap.broken is not None) is broken
    assert tap(b"mnop") == b"mnop"


def test_a_stray_empty_read_never_cuts_an_event_short_for_the_meter():
    """The parser is closed by `finish` (the response hook), not by an empty read: an empty read
    that was not the end (mitmproxy's HTTP/2 layer gave one for an empty DATA frame before
    addons/h2_data.py) cannot make the row read half an event as a whole one (fourteenth review)."""
    from spendgate.metering.providers.anthropic import AnthropicStreamParser

    events = (b'event: message_start\ndata: {"type":"message_start","message":{"model":"m","usage":'
              b'{"input_tokens":5,"output_tokens":1}}}\n\n'
              b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
              b'"usage":{"output_tokens":2}}\n\n')
    cut = events.index(b'"usage":{"output_tokens":2}')
    tap = StreamTap(AnthropicStreamParser(), "")
    assert [tap(events[:cut]), tap(b""), tap(events[cut:]), tap(b"")] == [events[:cut], b"", events[cut:], b""]
    r = tap.finish()
    assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens) == (5, 2) and not r.garbled
    assert tap.finish() is not None  # closing twice is harmless


def test_http2_empty_data_frames_are_not_handed_on_as_the_end():
    """addons/h2_data.py: mitmproxy's HTTP/2 layer acknowledges an empty DATA frame that does not
    end the stream and hands nothing on; one that ends it is still the end (as mitmproxy had it)."""
    import sys
    from pathlib import Path

    import h2.events
    from mitmproxy.proxy.layers.http import _http2

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "addons"))
    import h2_data

    assert h2_data.install() and h2_data.install()  # once per process, however often loaded

    class Conn:
        streams = {1: _http2.StreamState.HEADERS_RECEIVED}
        acknowledged: list = []

        class h2_conn:  # noqa: N801 (stands in for the h2 connection)
            @staticmethod
            def acknowledge_received_data(n, sid):
                Conn.acknowledged.append((n, sid))

        ReceiveData = _http2.ResponseData

    def run(data: bytes, ended: bool) -> list:
        ev = h2.events.DataReceived(stream_id=1, data=data, flow_controlled_length=len(data) + 8,
                                    stream_ended=h2.events.StreamEnded(stream_id=1) if ended else None)
        return list(_http2.Http2Connection.handle_h2_event(Conn(), ev))

    assert run(b"", False) == [] and Conn.acknowledged == [(8, 1)]  # padding used window: acknowledged
    sent = run(b"data", False)
    assert len(sent) == 1 and sent[0].event.data == b"data"  # a frame with data is handed on as before
    assert run(b"", True) == []  # an empty frame that ends the stream: mitmproxy's own StreamEnded says so


def test_finish_reads_a_last_event_that_lacked_its_blank_line():
    from spendgate.metering.providers.anthropic import AnthropicStreamParser

    tap = StreamTap(AnthropicStreamParser(), "")
    tap(b'event: message_stop\ndata: {"type":"message_stop"}\n')
    tap(b"")
    assert tap.finish().complete
