"""The stream tap: forward every byte at once, parse a decoded copy on the side.

mitmproxy hands a streamed body to a callable one network read at a time, still
content-encoded. The tap returns each chunk unchanged (unless told to drop an event the client
never asked for), and feeds an incrementally decoded copy to the provider's stream parser. A
parsing or decoding failure disables the side channel for that stream; it never reaches the
client.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import brotli

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on interpreter
    from backports import zstd  # type: ignore[no-redef]

from spendgate.bounds import MAX_DECODED_BYTES
from spendgate.metering.framing import SSEBlockSplitter
from spendgate.metering.providers.base import ResponseResult, StreamParser

log = logging.getLogger(__name__)


class DecodedTooLarge(ValueError):
    """A body decoded past its cap (a compression bomb, or simply too big to parse)."""


PIECE = 1 << 20  # bytes: the most one decoding step produces, whatever the compression ratio
BATCH = 64 * 1024  # bytes of a stream held before they are read together (AfterForwarding)
HOLD_S = 0.05  # seconds a held read waits at most for its batch to fill
HELD_READS = 256  # reads held apart at most; more are joined into one
NO_PIECE: tuple[()] = ()  # what a stream callable returns to send nothing for a read (b"" would end the body)


def is_identity(content_encoding: str | None) -> bool:
    """Whether a Content-Encoding value leaves the body as it is (absent, empty or ``identity``;
    RFC 9110 section 8.4), compared as the decoders compare it: trimmed, any case."""
    return (content_encoding or "").strip().lower() in ("", "identity")


class IncrementalDecoder:
    """Decode a content-encoded body piece by piece (identity, gzip, deflate, br, zstd).

    Output comes in pieces of at most PIECE bytes (`feed_iter`), so a few compressed bytes that
    expand to gigabytes never become one huge buffer; past `max_output` decoded bytes in total
    it raises DecodedTooLarge. That bounds memory for gzip/br/zstd bombs on the whole-body
    path and on the stream tap alike.
    """

    def __init__(self, content_encoding: str, max_output: int | None = None) -> None:
        enc = (content_encoding or "identity").strip().lower()
        self.encoding = enc
        self.max_output = max_output
        self.produced = 0  # decoded bytes so far
        self._pieces: Callable[[bytes, int], Iterator[bytes]]
        self.identity = is_identity(enc)  # the pieces are the data itself, unsplit
        if self.identity:
            self._pieces = lambda b, n: iter((b,))
        elif enc in ("gzip", "x-gzip"):
            self._pieces = _ZlibPieces(zlib.decompressobj(16 + zlib.MAX_WBITS),
                                       lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)).pieces
        elif enc == "deflate":
            self._pieces = _DeflateAuto().pieces
        elif enc == "br":
            self._pieces = _BrotliPieces().pieces
        elif enc == "zstd":
            self._pieces = _ZstdPieces().pieces
        else:
            raise ValueError(f"unsupported content-encoding {enc!r}")

    def passes(self, size: int) -> bool:
        """Identity within the cap: count `size` more decoded bytes, which are the data itself (no
        pieces to make: the tap's path for most streams). False otherwise, and nothing counted:
        `feed_iter` decides, and raises past the cap."""
        if not self.identity or (self.max_output is not None and self.produced + size > self.max_output):
            return False
        self.produced += size
        return True

    def feed_iter(self, data: bytes, piece: int = PIECE) -> Iterator[bytes]:
        """Decoded pieces of `data` (each at most `piece` bytes); raises DecodedTooLarge past the cap."""
        if not data:
            return
        for out in self._pieces(data, piece):
            self.produced += len(out)
            if self.max_output is not None and self.produced > self.max_output:
                raise DecodedTooLarge(f"decoded body exceeds {self.max_output} bytes")
            if out:
                yield out

    def feed(self, data: bytes) -> bytes:
        return b"".join(self.feed_iter(data))


class _ZlibPieces:
    """zlib output in pieces. With `again` (gzip), bytes after the end of a member start the next
    one: a gzip body is a series of members (RFC 1952 §2.2) and servers decode them all, so reading
    only the first would show us a different body than the provider reads."""

    def __init__(self, d, again: Callable[[], Any] | None = None) -> None:
        self.d = d
        self.again = again

    def pieces(self, data: bytes, n: int) -> Iterator[bytes]:
        while True:
            yield self.d.decompress(data, n)
            while self.d.unconsumed_tail:
                yield self.d.decompress(self.d.unconsumed_tail, n)
            if self.again is None or not (self.d.eof and self.d.unused_data):
                return
            data, self.d = self.d.unused_data, self.again()


class _BrotliPieces:
    def __init__(self) -> None:
        self.d = brotli.Decompressor()

    def pieces(self, data: bytes, n: int) -> Iterator[bytes]:
        # brotli lets its output buffer overshoot the limit (up to about twice): ask for half
        limit = max(n // 2, 1)
        out = self.d.process(data, output_buffer_limit=limit)
        while out:
            yield out
            if self.d.is_finished():
                return
            out = self.d.process(b"", output_buffer_limit=limit)  # output still held back


class _ZstdPieces:
    """zstd output in pieces, frame after frame: a zstd body may hold several frames, all decoded
    by the server (RFC 8878 §3), so bytes after one frame's end start the next."""

    def __init__(self) -> None:
        self.d = zstd.ZstdDecompressor()

    def pieces(self, data: bytes, n: int) -> Iterator[bytes]:
        while True:
            if self.d.eof:  # the previous frame ended: what follows is a new one
                data, self.d = self.d.unused_data + data, zstd.ZstdDecompressor()
            if not data and self.d.needs_input:
                return
            yield self.d.decompress(data, n)
            while not self.d.needs_input and not self.d.eof:
                yield self.d.decompress(b"", n)
            if not (self.d.eof and self.d.unused_data):
                return
            data = b""


class _DeflateAuto:
    """HTTP 'deflate' is zlib-wrapped in theory and raw deflate in practice: accept both."""

    def __init__(self) -> None:
        self._d: _ZlibPieces | None = None
        self._first = b""

    def pieces(self, data: bytes, n: int) -> Iterator[bytes]:
        if self._d is None:
            self._first += data
            if len(self._first) < 2:
                return
            raw = (self._first[0] & 0x0F) != 8 or int.from_bytes(self._first[:2], "big") % 31 != 0
            self._d = _ZlibPieces(zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS))
            data, self._first = self._first, b""
        yield from self._d.pieces(data, n)


class EventFilter:
    """Forward whole SSE events, each as `edit` says; at most one event is held back.

    `edit(block)` gets one raw event block (up to and including its blank line) and returns the
    bytes to forward instead (b"" drops it), or None to forward it as it came. Used only when we
    changed the request (OpenAI include_usage) and must give the client back what it asked for;
    the response is then requested uncompressed so events are visible.
    """

    def __init__(self, edit: Callable[[bytes], bytes | None]) -> None:
        self.edit = edit
        self.blocks = SSEBlockSplitter()
        self.dropped = 0  # events taken out whole

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # end of stream: release whatever is left
            return self.blocks.flush()
        out = bytearray()
        for block in self.blocks.feed(chunk):
            replaced = self._safe_edit(block)
            if replaced is None:
                out += block
            elif replaced:
                out += replaced
            else:
                self.dropped += 1
        return bytes(out)

    def _safe_edit(self, block: bytes) -> bytes | None:
        try:
            return self.edit(block)
        except Exception:  # never let a filter bug break the stream
            log.exception("event filter failed; forwarding the event")
            return None


class AfterForwarding(StreamParser):
    """A stream parser fed in batches, each after the proxy handed its bytes on.

    Reading each network read where it arrives cost the event loop a call chain per read (and a
    loop callback to run it after the send) on top of the text's own decode: ~3 µs per read of a
    16 KB delta, where the decode is ~4 µs. Nothing needs the parse before the response hook, so
    reads are held and read together, joined, in one `feed`:

    - by the tap, just after it handed on the read that brought `BATCH` bytes (`due`);
    - by `later` (the event loop's ``call_later``) `HOLD_S` after a read was held, when fewer come;
    - by every reader of the parse (`result`, `close`) first, so the same bytes are read in the
      same order and nothing is read late.

    A batch is read after its last read went out, so no read waits for its own parse; what is held
    stays under one PIECE (a compressed read can decode to many): past it, the parser reads at once.
    Event loop only.
    """

    def __init__(self, parser: StreamParser, later: Callable[[float, Callable[[], None]], Any]) -> None:
        self.parser = parser
        self._later = later
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._timed = False  # a `later` drain is on its way
        self._failed = False

    @property
    def due(self) -> bool:
        """A batch is held: the tap has it read once the read that completed it went out."""
        return self._held_bytes >= BATCH

    def feed(self, data: bytes) -> None:
        held = self._held
        held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > PIECE:
            self.drain()
            return
        if len(held) > HELD_READS:  # a trickle of tiny reads (1-byte HTTP/2 frames): one piece, not
            self._held = [b"".join(held)]  # tens of thousands of objects (~40 bytes each) for 50 ms
        if not self._timed:
            self._timed = True
            self._later(HOLD_S, self._timer)

    def _timer(self) -> None:
        self._timed = False
        self.drain()

    def drain(self) -> None:
        """Read everything held, joined (one `feed` per batch, not per read). Never raises."""
        held, self._held = self._held, []
        size, self._held_bytes = self._held_bytes, 0
        if self._failed or not held:
            return
        try:
            if len(held) == 1 or size > PIECE:  # a join stays within one PIECE, like a decoded piece
                for data in held:
                    self.parser.feed(data)
            else:
                self.parser.feed(b"".join(held))
        except Exception:  # a parser bug (feed never raises): stop reading, the stream goes on untouched
            self._failed = True
            log.exception("stream side channel stopped")

    def result(self) -> ResponseResult:
        self.drain()
        return self.parser.result()

    def close(self) -> None:
        self.drain()
        if not self._failed:  # a parser a bug stopped is left as it was, never closed
            self.parser.close()


class StreamTap:
    """The callable given to mitmproxy as `response.stream`: bytes in, the same bytes out (as bytes,
    or as a generator that yields them and then has the held batch read)."""

    def __init__(
        self,
        parser: StreamParser,
        content_encoding: str = "",
        event_filter: EventFilter | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_decoded: int | None = MAX_DECODED_BYTES,
    ) -> None:
        self.parser = parser
        self._batch = parser if isinstance(parser, AfterForwarding) else None  # read in batches
        self.event_filter = event_filter
        self.clock = clock
        self.first_byte_at: float | None = None
        self.bytes_seen = 0
        self._closed = False
        self.broken: str | None = None  # why the side channel stopped, if it did
        try:
            self.decoder: IncrementalDecoder | None = IncrementalDecoder(content_encoding, max_decoded)
        except ValueError as e:
            self.decoder, self.broken = None, str(e)

    def __call__(self, chunk: bytes) -> bytes | Iterable[bytes]:
        """One read of the body in, what the client gets of it out. mitmproxy sends each piece
        returned as one HTTP/1 chunk, and an empty one is the chunked body's end: a read that
        leaves nothing to forward yet (an event held or dropped) returns no piece at all. Once the
        parser holds a batch (AfterForwarding.due), the pieces come from a generator that has the
        batch read after mitmproxy sent them (it sends each piece before it asks for the next).

        An empty read is the body's end: the filter lets go of what it holds. The parser is closed
        by `finish` (the response hook), so that a stray empty read (mitmproxy's HTTP/2 layer gave
        one for an empty DATA frame before addons/h2_data.py) can never cut an event short."""
        if not chunk:  # the end: the filter lets go of whatever it still holds
            return self.event_filter(b"") if self.event_filter is not None else chunk
        if self.first_byte_at is None:
            self.first_byte_at = self.clock()
        size = len(chunk)
        self.bytes_seen += size
        out: bytes | tuple[()] = chunk
        if self.event_filter is None and self.decoder is not None and self.decoder.passes(size):
            # most streams: what _observe does for one identity piece, without its layers (this
            # runs for every event, with caches cold from the traffic in between)
            self._parse(chunk)
        else:
            decoded = self._observe(chunk)
            if self.event_filter is not None:
                # Filtering needs visible events, so the client gets the decoded body (the edge
                # removed content-encoding). Should decoding fail, the rest goes through as it came.
                visible = chunk if decoded is None else decoded
                out = (self.event_filter(visible) if visible else b"") or NO_PIECE
        batch = self._batch
        return _sent_then_read(out, batch) if batch is not None and batch.due else out

    def finish(self) -> ResponseResult:
        """The body ended cleanly (the response hook): what the stream said, its parser closed once."""
        if not self._closed:
            self._closed = True
            self._close()
        return self.parser.result()

    def _close(self) -> None:
        """Clean end of the body: let the parser read a last event that lacked its blank line."""
        if self.decoder is None:
            return
        try:
            self.parser.close()
        except Exception as e:
            self.broken = f"{type(e).__name__}: {e}"

    def _observe(self, chunk: bytes) -> bytes | None:
        """Decode and parse a copy; the decoded bytes, or None once the side channel stopped."""
        if self.decoder is None:
            return None
        keep = self.event_filter is not None  # only the filtering path forwards decoded bytes
        kept: list[bytes] = []
        parsing = True
        decoder = self.decoder
        try:
            for piece in decoder.feed_iter(chunk):  # pieces of at most streams.PIECE bytes
                if keep:
                    kept.append(piece)
                if parsing:
                    parsing = self._parse(piece)
        except Exception as e:  # garbage in an encoded body, or a bomb: stop looking, keep forwarding
            return self._stop(e)
        return b"".join(kept) if keep else b""

    def _parse(self, piece: bytes) -> bool:
        """Feed the parser one decoded piece; False once a parser bug stopped the side channel
        (the chunk is still handed on)."""
        try:
            self.parser.feed(piece)
            return True
        except Exception as e:
            self._stop(e)
            return False

    def _stop(self, e: Exception) -> None:
        self.broken = f"{type(e).__name__}: {e}"
        self.decoder = None
        log.warning("stream side channel stopped: %s", self.broken)


def _sent_then_read(out: bytes | tuple[()], batch: AfterForwarding) -> Iterator[bytes]:
    """`out` as mitmproxy sends it, then the held batch read: resumed only once the piece was sent
    (proxy/layers/http, state_stream_response_body). If mitmproxy never resumes it, the next batch,
    the timer or the response hook reads what is held, in order."""
    if out:
        yield out  # type: ignore[misc]
    batch.drain()
