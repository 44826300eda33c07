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
from collections.abc import Callable

import brotli

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on interpreter
    from backports import zstd  # type: ignore[no-redef]

from spendgate.metering.framing import SSEBlockSplitter
from spendgate.metering.providers.base import StreamParser

log = logging.getLogger(__name__)

class IncrementalDecoder:
    """Decode a content-encoded body piece by piece (identity, gzip, deflate, br, zstd)."""

    def __init__(self, content_encoding: str) -> None:
        enc = (content_encoding or "identity").strip().lower()
        self.encoding = enc
        self._feed: Callable[[bytes], bytes]
        if enc in ("", "identity"):
            self._feed = lambda b: b
        elif enc in ("gzip", "x-gzip"):
            self._feed = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
        elif enc == "deflate":
            self._feed = _DeflateAuto().feed
        elif enc == "br":
            self._feed = brotli.Decompressor().process
        elif enc == "zstd":
            self._feed = zstd.ZstdDecompressor().decompress
        else:
            raise ValueError(f"unsupported content-encoding {enc!r}")

    def feed(self, data: bytes) -> bytes:
        return self._feed(data) if data else b""


class _DeflateAuto:
    """HTTP 'deflate' is zlib-wrapped in theory and raw deflate in practice: accept both."""

    def __init__(self) -> None:
        self._d: zlib._Decompress | None = None
        self._first = b""

    def feed(self, data: bytes) -> bytes:
        if self._d is None:
            self._first += data
            if len(self._first) < 2:
                return b""
            raw = (self._first[0] & 0x0F) != 8 or int.from_bytes(self._first[:2], "big") % 31 != 0
            self._d = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
            data, self._first = self._first, b""
        return self._d.decompress(data)


class EventDropper:
    """Forward whole SSE events, dropping those matching `drop`; at most one event is held back.

    Used only when we changed the request (OpenAI include_usage) and must hide the extra event
    from the client; the response is then requested uncompressed so events are visible.
    """

    def __init__(self, drop: Callable[[bytes], bool]) -> None:
        self.drop = drop
        self.blocks = SSEBlockSplitter()
        self.dropped = 0

    def __call__(self, chunk: bytes) -> bytes:
        if not chunk:  # end of stream: release whatever is left
            return self.blocks.flush()
        out = bytearray()
        for block in self.blocks.feed(chunk):
            if self._safe_drop(block):
                self.dropped += 1
            else:
                out += block
        return bytes(out)

    def _safe_drop(self, block: bytes) -> bool:
        try:
            return bool(self.drop(block))
        except Exception:  # never let a filter bug break the stream
            log.exception("event filter failed; forwarding the event")
            return False


class StreamTap:
    """The callable given to mitmproxy as `response.stream`. Bytes in, same bytes out."""

    def __init__(
        self,
        parser: StreamParser,
        content_encoding: str = "",
        dropper: EventDropper | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.parser = parser
        self.dropper = dropper
        self.clock = clock
        self.first_byte_at: float | None = None
        self.bytes_seen = 0
        self.ended = False
        self.broken: str | None = None  # why the side channel stopped, if it did
        try:
            self.decoder: IncrementalDecoder | None = IncrementalDecoder(content_encoding)
        except ValueError as e:
            self.decoder, self.broken = None, str(e)

    def __call__(self, chunk: bytes) -> bytes:
        if chunk:
            if self.first_byte_at is None:
                self.first_byte_at = self.clock()
            self.bytes_seen += len(chunk)
            decoded = self._observe(chunk)
        else:
            self.ended = True
            self._close()
            decoded = b""
        if self.dropper is None:
            return chunk
        # Filtering needs visible events, so the client gets the decoded body (the edge removed
        # content-encoding). Should decoding fail, the rest goes through as it came.
        return self.dropper(chunk if decoded is None else decoded)

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
        try:
            decoded = self.decoder.feed(chunk)
        except Exception as e:  # garbage in an encoded body: stop looking, keep forwarding
            return self._stop(e)
        try:
            self.parser.feed(decoded)
        except Exception as e:  # a parser bug
            self._stop(e)
        return decoded

    def _stop(self, e: Exception) -> None:
        self.broken = f"{type(e).__name__}: {e}"
        self.decoder = None
        log.warning("stream side channel stopped: %s", self.broken)
