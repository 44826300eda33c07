"""mitmproxy's HTTP/2 layer, made to mark the end of a streamed body the way its HTTP/1 layer does.

A `response.stream` callable is handed ``b""`` at the body's end. mitmproxy's HTTP/1 layer hands
it no other empty read; its HTTP/2 layer also hands one on for a DATA frame without payload that
does not end the stream (RFC 9113 section 6.1 allows such a frame: a flush, or padding only). The
callable cannot tell the two apart, so spendgate's stream tap took such a frame inside an event for
the end: the event filter let go of an event half read, and the client saw the usage spendgate had
added to the request (fourteenth and fifteenth attacker reviews, docs/security.md).

Such a frame carries nothing to hand on. `install` makes mitmproxy acknowledge it (padding still
used flow-control window) and go on, so ``b""`` means the end again, on HTTP/2 as on HTTP/1. The
client no longer receives the empty frame itself; HTTP/2 framing is hop by hop, and plain
mitmproxy buffering a body does not pass it on either.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

import h2.events
from mitmproxy.proxy.layers.http import _http2

log = logging.getLogger("spendgate")

_MARK = "_spendgate_skips_empty_data"


def install() -> bool:
    """Patch `Http2Connection.handle_h2_event` once per process; False (and a warning) when this
    mitmproxy has not the method or stream states it is written for."""
    conn = getattr(_http2, "Http2Connection", None)
    original = getattr(conn, "handle_h2_event", None)
    headers_received = getattr(getattr(_http2, "StreamState", None), "HEADERS_RECEIVED", None)
    if original is None or headers_received is None:
        log.warning("spendgate: this mitmproxy's HTTP/2 layer is not the one expected; an empty DATA frame "
                    "inside a streamed event may let the event filter go early (docs/security.md)")
        return False
    if getattr(original, _MARK, False):
        return True

    def handle_h2_event(self: Any, event: h2.events.Event) -> Generator[Any, Any, bool]:
        if (isinstance(event, h2.events.DataReceived) and not event.data and not event.stream_ended
                and self.streams.get(event.stream_id) is headers_received):
            self.h2_conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            return False  # nothing to hand on; "stop processing" is False, as for any DATA frame
        return (yield from original(self, event))

    setattr(handle_h2_event, _MARK, True)
    conn.handle_h2_event = handle_h2_event
    return True
