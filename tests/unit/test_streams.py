import gzip
import zlib

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.metering.providers.base import ResponseResult, StreamParser
from spendgate.metering.streams import EventDropper, IncrementalDecoder, StreamTap

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
    assert tap.bytes_seen == len(encoded) and tap.ended and tap.broken is None


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


def drop_marked(block: bytes) -> bool:
    return b"DROP" in block


@given(st.lists(st.integers(min_value=0, max_value=len(BODY)), max_size=30))
@settings(max_examples=200, deadline=None)
def test_dropper_removes_exactly_the_marked_event_at_any_split(cuts):
    at = BODY.index(b"data", 100)  # an event boundary
    body = BODY[:at] + b"data: DROP me\r\n\r\n" + BODY[at:]
    points = sorted(set(c for c in cuts if c <= len(body)))
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)])]
    d = EventDropper(drop_marked)
    out = b"".join(d(p) for p in pieces if p) + d(b"")
    assert out == BODY and d.dropped == 1


def test_dropper_releases_an_unterminated_tail_at_the_end():
    d = EventDropper(drop_marked)
    assert d(b"data: a\n\ndata: partial") == b"data: a\n\n"
    assert d(b"") == b"data: partial"


def test_dropper_filter_errors_forward_the_event():
    def boom(block):
        raise ValueError("bad")

    d = EventDropper(boom)
    assert d(b"data: a\n\n") == b"data: a\n\n"


@pytest.mark.parametrize("enc", ["gzip", "br", "zstd", "deflate"])
def test_incremental_decoder_matches_one_shot(enc):
    encoded = ENCODERS[enc](BODY)
    dec = IncrementalDecoder(enc)
    assert b"".join(dec.feed(encoded[i : i + 3]) for i in range(0, len(encoded), 3)) == BODY
