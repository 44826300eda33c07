"""Incremental framers for streamed LLM responses: SSE events and Gemini's JSON-array stream.

Network reads split a stream at arbitrary bytes (inside a UTF-8 character, between ``\\r`` and
``\\n``, inside a JSON string). These framers keep only the one pending event/element, so memory
stays bounded however long the stream runs, and they never raise on garbage: a proxy must keep
forwarding bytes even when it cannot understand them.

An event bigger than the cap (a Gemini image chunk of 6 MiB with its usageMetadata at the end, an
OpenAI ``response.completed`` repeating a generated image) is not dropped: the framer keeps its
first `head_bytes` and a rolling last `tail_bytes` and hands them on as an `Oversized` piece, from
which adapters read the small fields they need (usage, finish reason, model; see
`spendgate.metering.salvage`). Memory stays bounded by cap + head + 2 x tail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024
"""Cap on one pending event/element. Real events are KBs (Codex repeats its instructions in
``response.created``, tens of KBs); anything near MiBs is garbage or abuse."""

_EOL = re.compile(rb"[\r\n]")
_BOM = b"\xef\xbb\xbf"


HEAD_BYTES = 64 * 1024
"""Kept from the start of an oversized event: event type, ids, model come first."""
TAIL_BYTES = 256 * 1024
"""Kept from the end of an oversized event: usage comes last (after Codex's tool list in a
Responses object, tens of KBs)."""


@dataclass(slots=True, frozen=True)
class Oversized:
    """What is kept of an event/element larger than the cap: its head, its tail, its size."""

    head: str
    tail: str
    size: int  # bytes of the whole event's data


@dataclass(slots=True, frozen=True)
class SSEEvent:
    event: str | None  # the ``event:`` field, None when absent
    data: str  # ``data:`` lines joined by "\n" (the head, when oversized)
    oversized: Oversized | None = None  # set when the event outgrew the cap


class _HeadTail:
    """Bounded memory of a long byte sequence: the first `head` bytes and a rolling last `tail`."""

    __slots__ = ("head", "head_max", "tail", "tail_max", "size")

    def __init__(self, head_max: int, tail_max: int) -> None:
        self.head = bytearray()
        self.head_max = head_max
        self.tail = bytearray()
        self.tail_max = tail_max
        self.size = 0

    def add(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if not n:
            return
        self.size += n
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += data[:room]
        self.tail += data[-self.tail_max:] if n > self.tail_max else data
        if len(self.tail) > 2 * self.tail_max:  # trim now and then: amortized O(1) per byte
            del self.tail[: len(self.tail) - self.tail_max]

    def done(self) -> Oversized:
        tail = self.tail[-self.tail_max:] if len(self.tail) > self.tail_max else self.tail
        return Oversized(_decode(self.head), _decode(tail), self.size)


def _limits(cap: int) -> tuple[int, int]:
    return min(HEAD_BYTES, max(cap // 8, 16)), min(TAIL_BYTES, max(cap // 4, 16))


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-8", errors="replace")


class SSEDecoder:
    """WHATWG-style ``text/event-stream`` decoder fed with arbitrary byte chunks.

    Lines end in ``\\n``, ``\\r\\n`` or ``\\r``. Complete lines never split a UTF-8 character
    (``\\r``/``\\n`` bytes never occur inside one), so decoding happens per line. An event that
    grows beyond ``max_event_bytes`` is passed on as its head and tail (``SSEEvent.oversized``);
    only those are kept while the rest streams by, and the decoder resyncs at the next blank line.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.garbled = False
        self._line = bytearray()  # the current, unterminated line
        self._data: list[str] = []  # data lines of the pending event
        self._event: str | None = None
        self._pending_bytes = 0  # bytes held by the pending event's complete lines
        self._skip_lf = False  # the last chunk ended in "\r": a leading "\n" belongs to it
        self._discarding = False  # an oversized event is being skipped up to a blank line
        self._over: _HeadTail | None = None  # what is kept of it
        self._over_event: str | None = None
        self._line_seen_bytes = False  # discard mode: the current line is not empty
        self._first_line = True

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Consume the next chunk; return the events it completed. Never raises."""
        out: list[SSEEvent] = []
        try:
            self._feed(bytes(data), out)
        except Exception:  # pragma: no cover - defensive: the decoder must never break a proxy
            self._reset_event()
            self._line.clear()
            self.garbled = True
        return out

    def idle(self) -> bool:
        """Between events, with nothing held: the next byte starts a new line of a new event.

        Fast paths (a parser that recognizes whole, plain events itself) may only skip the
        decoder in this state; they leave it as they found it.
        """
        return not (self._line or self._data or self._pending_bytes or self._skip_lf or self._discarding
                    or self._first_line or self._line_seen_bytes or self._event is not None)

    def flush(self) -> list[SSEEvent]:
        """End of stream: dispatch a final event whose blank line never came.

        Stricter decoders drop it; for metering a terminator-less last event (seen in recorded
        fixtures) is worth reading. A truncated event just fails to parse downstream.
        """
        out: list[SSEEvent] = []
        try:
            if self._line or self._line_seen_bytes:
                self._end_line(out)
            if not self._discarding and self._data:
                self._end_line_blank(out)
            if self._discarding:
                self._end_oversized(out)
            self._reset_event()
        except Exception:  # pragma: no cover
            self.garbled = True
        return out

    # -- internals -------------------------------------------------------------------------

    def _feed(self, data: bytes, out: list[SSEEvent]) -> None:
        i, n = 0, len(data)
        if n and self._skip_lf:
            if data[0] == 0x0A:
                i = 1
        if n:
            self._skip_lf = False
        # the next "\n" and "\r" at or after i, each found by bytes.find (memchr: GB/s, where
        # a regex search crawled at ~200 MB/s over long lines); -1: none left in `data`
        nl = cr = -2  # -2: not looked for yet
        while i < n:
            if -1 != nl < i:
                nl = data.find(b"\n", i)
            if -1 != cr < i:
                cr = data.find(b"\r", i)
            if nl == -1 and cr == -1:
                self._append(data, i, n)
                return
            j = nl if cr == -1 else cr if nl == -1 else min(nl, cr)
            self._append(data, i, j)
            self._end_line(out)
            if data[j] == 0x0D:
                if j + 1 < n:
                    if data[j + 1] == 0x0A:
                        j += 1
                else:
                    self._skip_lf = True
            i = j + 1

    def _append(self, data: bytes, start: int, end: int) -> None:
        if start >= end:
            return
        if self._discarding:
            self._line_seen_bytes = True
            if self._over is not None:
                self._over.add(memoryview(data)[start:end])
            return
        if self._pending_bytes + len(self._line) + (end - start) > self.max_event_bytes:
            self._start_oversized(data, start, end)
            self._line_seen_bytes = True
            return
        self._line += data[start:end]

    def _start_oversized(self, data: bytes, start: int, end: int) -> None:
        """Keep head and tail of the event's data from here on; drop the middle."""
        over = _HeadTail(*_limits(self.max_event_bytes))
        for i, line in enumerate(self._data):
            over.add(("\n" if i else "").encode() + line.encode("utf-8", "surrogateescape"))
        line = bytes(self._line) + data[start:end]
        if self._data:
            over.add(b"\n")
        name, sep, value = line.partition(b":")
        over.add((value[1:] if value[:1] == b" " else value) if sep and name == b"data" else line)
        self._over, self._over_event = over, self._event
        self._discarding = True
        self._line.clear()
        self._reset_event()

    def _end_oversized(self, out: list[SSEEvent]) -> None:
        if self._over is not None:
            kept = self._over.done()
            out.append(SSEEvent(self._over_event, kept.head, kept))
        self._over, self._over_event = None, None
        self._discarding = False

    def _reset_event(self) -> None:
        self._data = []
        self._event = None
        self._pending_bytes = 0

    def _end_line(self, out: list[SSEEvent]) -> None:
        if self._discarding:
            if not self._line_seen_bytes:
                self._end_oversized(out)  # blank line: the oversized event ends, resynced
            elif self._over is not None:
                self._over.add(b"\n")
            self._line_seen_bytes = False
            return
        line = bytes(self._line)
        self._line.clear()
        if self._first_line:
            self._first_line = False
            if line.startswith(_BOM):
                line = line[len(_BOM) :]
        if not line:
            self._end_line_blank(out)
            return
        self._pending_bytes += len(line)
        self._field(line)

    def _end_line_blank(self, out: list[SSEEvent]) -> None:
        if self._data:
            out.append(SSEEvent(self._event, "\n".join(self._data)))
        self._reset_event()

    def _field(self, line: bytes) -> None:
        if line[:1] == b":":
            return  # comment / keep-alive
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(_decode(value))
        elif name == b"event":
            self._event = _decode(value)
        # "id", "retry" and unknown fields carry nothing we meter


class SSEBlockSplitter:
    """Split a stream into raw event blocks (bytes up to and including the blank line).

    For proxies that must forward bytes but drop whole events (the usage chunk we asked OpenAI
    for on the client's behalf). A block longer than the cap is passed through undivided.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buf = bytearray()
        self._line_start = 0  # where the unfinished line starts inside _buf
        self._scanned = 0  # bytes of _buf already searched for a line ending

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete blocks; keep the unfinished tail."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        block_start = 0
        line_start, i, n = self._line_start, self._scanned, len(buf)
        while i < n:
            m = _EOL.search(buf, i)
            if m is None:
                i = n
                break
            j = m.start()
            if buf[j] == 0x0D and j + 1 >= n:
                i = j  # "\r" at the end: wait to see whether "\n" follows
                break
            end = j + 2 if buf[j] == 0x0D and buf[j + 1] == 0x0A else j + 1
            if j == line_start:  # an empty line closes the block
                out.append(bytes(buf[block_start:end]))
                block_start = end
            line_start = i = end
        del buf[:block_start]
        self._line_start, self._scanned = line_start - block_start, i - block_start
        if len(buf) > self.max_event_bytes:
            out.append(bytes(buf))
            buf.clear()
            self._line_start = self._scanned = 0
        return out

    def flush(self) -> bytes:
        """End of stream: whatever is left (an unterminated last block)."""
        rest = bytes(self._buf)
        self._buf.clear()
        self._line_start = self._scanned = 0
        return rest


_ARRAY_TOKENS = re.compile(rb'[\[\]{}"]')
_STRING_TOKENS = re.compile(rb'["\\]')


class JSONArrayStreamSplitter:
    """Split an incrementally delivered JSON array ``[{...},\\r\\n{...}]`` into its elements.

    Gemini's ``streamGenerateContent`` without ``alt=sse`` sends one such array. Tracks only
    string/escape state and bracket depth; each top-level object/array element is returned as
    raw text as soon as it closes. A bare top-level object (an error body) counts as one
    element. An element beyond the cap is returned as an `Oversized` (head and tail only, the
    middle skipped by depth).
    """

    def __init__(self, max_element_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_element_bytes = max_element_bytes
        self.garbled = False
        self.closed = False  # the outer array's "]" was seen
        self._base = 0  # 1 once the outer "[" was seen: elements live one level deeper
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._elem = bytearray()
        self._dropping = False  # the current element outgrew the cap
        self._over: _HeadTail | None = None  # what is kept of it

    def feed(self, data: bytes) -> list[str | Oversized]:
        out: list[str | Oversized] = []
        try:
            self._feed(bytes(data), out)
        except Exception:  # pragma: no cover - defensive
            self.garbled = True
            self._elem.clear()
        return out

    def _in_element(self) -> bool:
        return self._depth > self._base

    def _keep(self, data: bytes, start: int, end: int) -> None:
        if not self._in_element() or start >= end:
            return
        if self._dropping:
            if self._over is not None:
                self._over.add(memoryview(data)[start:end])
            return
        if len(self._elem) + (end - start) > self.max_element_bytes:
            self._dropping = True
            self._over = _HeadTail(*_limits(self.max_element_bytes))
            self._over.add(self._elem)
            self._over.add(memoryview(data)[start:end])
            self._elem.clear()
            return
        self._elem += data[start:end]

    def _feed(self, data: bytes, out: list[str]) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._in_string:
                if self._escape:
                    self._escape = False
                    self._keep(data, i, i + 1)
                    i += 1
                    continue
                m = _STRING_TOKENS.search(data, i)
                if m is None:
                    self._keep(data, i, n)
                    return
                j = m.start()
                self._keep(data, i, j + 1)
                if data[j] == 0x5C:  # backslash
                    self._escape = True
                else:
                    self._in_string = False
                i = j + 1
                continue
            m = _ARRAY_TOKENS.search(data, i)
            if m is None:
                self._keep(data, i, n)
                return
            j = m.start()
            self._keep(data, i, j)
            self._token(data, j, out)
            i = j + 1

    def _token(self, data: bytes, j: int, out: list[str]) -> None:
        c = data[j]
        if c == 0x22:  # '"'
            self._in_string = True
            self._keep(data, j, j + 1)
        elif c in (0x7B, 0x5B):  # '{' '['
            if c == 0x5B and self._depth == 0 and self._base == 0 and not self.closed:
                self._base = self._depth = 1  # the outer array
                return
            self._depth += 1
            self._keep(data, j, j + 1)
        else:  # '}' ']'
            if self._depth <= self._base:
                if c == 0x5D and self._base == 1 and self._depth == 1:
                    self.closed = True
                    self._depth = 0
                else:
                    self.garbled = True  # an unbalanced closer: ignore it
                return
            self._keep(data, j, j + 1)
            self._depth -= 1
            if self._depth == self._base:
                if not self._dropping:
                    out.append(_decode(self._elem))
                elif self._over is not None:
                    out.append(self._over.done())
                self._elem.clear()
                self._dropping, self._over = False, None
