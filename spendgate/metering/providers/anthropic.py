"""Anthropic Messages API (``/v1/messages``, JSON and SSE) and the free ``count_tokens``.

Anthropic's ``input_tokens`` EXCLUDES cache reads and writes, so normalized input adds them back.
In streams ``message_start`` carries provisional usage and ``message_delta`` carries cumulative
values that REPLACE it field by field (input can grow, e.g. with server tools): never sum.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from spendgate.identity import BodyHints
from spendgate.metering.framing import Oversized
from spendgate.metering.providers.base import (
    Adapter,
    JSONEventStreamParser,
    RequestInfo,
    ResponseResult,
    StreamParser,
    add_finish_reason,
    as_int,
    dig,
    error_type,
    load_json,
    modifier,
    parse_json_request,
    str_or_none,
)
from spendgate.metering.salvage import head_field, tail_field
from spendgate.usage import Usage

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

_REPLACED = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")
_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


def _scale(part: int, basis: int, total: int) -> int:
    """Keep a TTL split when the total changed after the split was reported."""
    if total <= 0 or part <= 0 or basis <= 0:
        return 0
    if basis == total:
        return min(part, total)
    return min(round(part * total / basis), total)


@dataclass(slots=True)
class AnthropicUsageState:
    """Running Anthropic usage, merged report by report (message_start, then message_delta)."""

    raw: dict[str, int]
    thinking: int = 0
    web_search: int = 0
    cache_1h: int = 0
    cache_1h_basis: int = 0  # cache_creation_input_tokens when the 1h part was reported

    @classmethod
    def empty(cls) -> AnthropicUsageState:
        return cls(raw={})

    def merge(self, usage: dict) -> None:
        """Fields present (and not null) in ``usage`` replace earlier values; others stay."""
        for key in _REPLACED:
            if usage.get(key) is not None:
                self.raw[key] = as_int(usage[key])
        thinking = dig(usage, "output_tokens_details", "thinking_tokens")
        if thinking is not None:
            self.thinking = as_int(thinking)
        searches = dig(usage, "server_tool_use", "web_search_requests")
        if searches is not None:
            self.web_search = as_int(searches)
        split = usage.get("cache_creation")
        if isinstance(split, dict):
            self.cache_1h = as_int(split.get("ephemeral_1h_input_tokens"))
            self.cache_1h_basis = self.raw.get("cache_creation_input_tokens", 0)
            if not self.cache_1h_basis:  # object without the total: trust the split
                self.cache_1h_basis = self.cache_1h + as_int(split.get("ephemeral_5m_input_tokens"))

    def modifiers(self, usage: dict, into: dict[str, str]) -> dict[str, str]:
        """`speed` (fast mode) and `inference_geo` (data residency) change the price: keep them."""
        out = dict(into)
        for key in ("speed", "inference_geo"):
            value = modifier(usage.get(key))
            if value:
                out[key] = value
        return out

    def to_usage(self) -> Usage:
        read = self.raw.get("cache_read_input_tokens", 0)
        write = self.raw.get("cache_creation_input_tokens", 0)
        output = self.raw.get("output_tokens", 0)
        return Usage(
            input_tokens=self.raw.get("input_tokens", 0) + read + write,
            cache_read_tokens=read,
            cache_write_tokens=write,
            cache_write_1h_tokens=_scale(self.cache_1h, self.cache_1h_basis, write),
            output_tokens=output,
            reasoning_tokens=min(self.thinking, output),
            web_search_requests=self.web_search,
        )


def _content_chars(content: Any) -> int:
    """Characters of text, thinking and tool input in a whole Message's content."""
    total = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                total += len(block[key])
        if block.get("type") == "tool_use" and block.get("input") is not None:
            total += len(str(block["input"]))
    return total


# One whole text/thinking delta event exactly as Anthropic frames it: the fixed head, one JSON
# string, the fixed tail (Anthropic pads events with spaces before the last brace: allowed). The
# string is decoded alone by msgspec, a C loop at ~3.7 GB/s that also checks UTF-8 and escapes
# (~1.3x faster than a byte translate at 16 KB, and texts with escapes such as "\n" in code stay
# on this path); its character count is the length of the str. A text of 4 KB or more that is
# plain ASCII (no backslash, inner quote or CR) is counted by its length instead. Whatever msgspec
# refuses and json.loads might still take (a lone surrogate, a control character, invalid UTF-8,
# an inner unescaped quote) goes through the SSE decoder and json.loads as before, as does anything
# else (other events, other spacing or field order, a split read). The whole event is exactly what
# this pattern matches, with the string read as JSON:
#   _DELTA_HEAD "(JSON string body)" _DELTA_TAIL
_DELTA_HEAD = re.compile(
    rb'event: content_block_delta\ndata: \{"type":"content_block_delta","index":(?:0|[1-9][0-9]{0,8}),'
    rb'"delta":\{"type":"(?:text_delta","text|thinking_delta","thinking)":"'
)
_DELTA_TAIL = re.compile(rb'"\}[ \t]*\}[ \t]*\n\n')
_TEXT_HEAD_0 = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"text_delta","text":"')  # what _DELTA_HEAD matches most often
_TAIL = b'"}}\n\n'
_TEXT = msgspec.json.Decoder(str)  # one JSON string literal, quotes included
_EVENT_LINE = b"event: content_block_delta\n"  # the first line of every delta
_EVENT_LINE_LEN = len(_EVENT_LINE)
_HOLD_MAX = 64 * 1024  # an unfinished delta held for the next read (real deltas are tens of bytes)
_SLICE_MAX = 4096  # a longer text is decoded from a memoryview (below ~4 KB msgspec reads a copy faster)
_HELD_PIECES = 256  # held tiny reads are joined past this many (each is an object of ~40 bytes)


def _unfinished(data: bytes, pos: int = 0) -> bool:
    """Whether `data[pos:]` may still become one plain delta: all or part of the event line, then a
    data line that has not ended, or has just ended with its blank line still to come. The decoder
    dispatches nothing from such bytes. Anything else (a CR, a second line, more than _HOLD_MAX)
    is the decoder's at once, so the bytes of one event are joined a few times at most, never per read."""
    if len(data) - pos > _HOLD_MAX or data.find(b"\r", pos) >= 0 or not _EVENT_LINE.startswith(
            data[pos : pos + _EVENT_LINE_LEN]):
        return False
    end = data.find(b"\n", pos + _EVENT_LINE_LEN)
    return end < 0 or end == len(data) - 1


class AnthropicStreamParser(JSONEventStreamParser):
    """Messages SSE: usage from message_start (provisional) and message_delta (final)."""

    def __init__(self) -> None:
        super().__init__()
        self._usage = AnthropicUsageState.empty()
        # the start of a delta event cut short by the last reads, as the reads' own buffers (a
        # memoryview past what was counted): joined once, when a line may have ended
        self._held: list[bytes | memoryview] = []
        self._held_bytes = 0

    def feed(self, data: bytes) -> None:
        """Plain text deltas at the start of a read are counted without the decoder or json.loads
        (they are most of a stream's events); the rest of the read takes the full path.

        A read that ends inside what may still become a plain delta (TLS records are 16 KB: a
        long delta arrives in pieces) is held, up to _HOLD_MAX, and read joined with what follows
        once a line may have ended: what the decoder would have done with it, since it was idle
        and could not have dispatched anything from those bytes yet (see `_unfinished`). The
        bytes are copied once, by that join: a 16 KB delta cut across two reads cost four copies
        of itself before (221,841 -> 167,413 instructions per such delta, callgrind)."""
        if not data:  # nothing for the decoder either (and no entry in what is held)
            return
        pos = 0
        if self._held:
            cut = self._held_event_end(data)
            if cut > 0:  # the held delta ends in this read: only it is joined, the rest read in place
                self._read(self._let_go(data[:cut]), 0)
                pos = cut
                if pos == len(data):
                    return
            else:
                self._held.append(data)
                self._held_bytes += len(data)
                if b"\n" not in data and b"\r" not in data and self._held_bytes <= _HOLD_MAX:
                    if len(self._held) > _HELD_PIECES:  # a trickle of tiny reads: one piece, not
                        self._held = [b"".join(self._held)]  # hundreds of objects
                    return  # the same line goes on
                data = self._let_go()
        self._read(data, pos)

    def _held_event_end(self, data: bytes) -> int:
        """Where in `data` the held delta's event ends (just past its blank line), when `data` ends
        it as a plain delta ends: the data line's line feed, then the blank line, no CR before.
        -1 otherwise: the held reads and `data` are then joined whole and read as before."""
        held_bytes = self._held_bytes
        if held_bytes > _EVENT_LINE_LEN and self._held[-1][-1:] == b"\n":  # the data line has ended
            cut = 1 if data[:1] == b"\n" else -1
        else:  # the data line's end (the event line's own line feed may still be in `data`)
            end = data.find(b"\n", max(0, _EVENT_LINE_LEN - held_bytes))
            cut = end + 2 if end >= 0 and data[end + 1 : end + 2] == b"\n" else -1
        return cut if cut > 0 and data.find(b"\r", 0, cut) < 0 else -1

    def _read(self, data: bytes, pos: int) -> None:
        """Read `data` from `pos` on, with nothing held: plain deltas counted, the rest decoded."""
        sse = self._sse
        if sse is not None and not sse.idle():
            # the read begins inside an event: the decoder finishes it, and the rest may take the
            # fast path. Without this, reads out of step with the events (16 KB TLS records, longer
            # deltas) kept every later event on the full path. Any split is the decoder's same
            # answer; the fast path still runs only if the decoder is idle after it.
            end = data.find(b"\n\n", pos)
            if end < 0 or end + 2 == len(data):
                super().feed(data[pos:] if pos else data)
                return
            super().feed(data[pos : end + 2])
            pos = end + 2
        if sse is not None and data.startswith(_EVENT_LINE[: len(data) - pos], pos) and sse.idle():
            try:
                pos = self._plain_until(data, pos)
            except Exception:  # never: the full path then reads the same bytes
                pass
            if pos == len(data):
                return
            if _unfinished(data, pos):
                rest = len(data) - pos
                # a view keeps its whole read alive: a copy when the rest is the smaller part
                self._held = [memoryview(data)[pos:] if 2 * rest >= len(data) else data[pos:]]
                self._held_bytes = rest
                return
        super().feed(data[pos:] if pos else data)

    def _let_go(self, tail: bytes = b"") -> bytes:
        """The held reads (and `tail`) as one piece of bytes; nothing is held after."""
        if tail:
            self._held.append(tail)
        data = b"".join(self._held)
        self._held, self._held_bytes = [], 0
        return data

    def close(self) -> None:
        """End of stream: held bytes go to the decoder first, as they would have."""
        if self._held:
            super().feed(self._let_go())
        super().close()

    def _plain_until(self, data: bytes, pos: int) -> int:
        """Count the plain delta events of `data` from `pos` on; where the first other byte is."""
        events, chars, n, cap = 0, 0, len(data), sse_cap(self)
        head_match, tail_match = _DELTA_HEAD.match, _DELTA_TAIL.match
        view = None
        plain_ascii: bool | None = None  # the whole read is ASCII (asked once, for a long text)
        while pos < n:
            # where the data line ends (the first line feed after the event line; the text
            # holds none): without one the event is split across reads (the full path's to join).
            # Then the fixed head, the text up to its closing quote, and the fixed tail (their
            # most common spellings compared as bytes first, the patterns otherwise).
            end = data.find(b"\n", pos + _EVENT_LINE_LEN)
            if end < 0 or end + 2 - pos > cap:
                break
            if data.startswith(_TEXT_HEAD_0, pos, end):
                start = pos + len(_TEXT_HEAD_0)
            else:
                head = head_match(data, pos, end)
                if head is None:
                    break
                start = head.end()
            # the text's closing quote: the tail holds none, so it is the line's last one
            if data.startswith(_TAIL, end - 3):
                quote = end - 3
            else:
                quote = data.rfind(b'"', start, end)
                if quote < 0 or tail_match(data, quote, end + 2) is None:
                    break
            if quote - start >= _SLICE_MAX:
                # a long text of plain ASCII (no escape, inner quote or CR) is its length: what
                # the full path reads, which takes control characters (JSONEventStreamParser.
                # _handle); msgspec's decode would check every byte (~4 µs per 16 KB)
                if plain_ascii is None:
                    plain_ascii = data.isascii()
                if plain_ascii and data.find(b"\\", start, quote) < 0 and data.find(b'"', start, quote) < 0 \
                        and data.find(b"\r", start, quote) < 0:
                    chars += quote - start
                    events += 1
                    pos = end + 2
                    continue
                # else read where it lies (a slice would copy it first)
                view = view or memoryview(data)
                literal: bytes | memoryview = view[start - 1 : quote + 1]
            else:
                literal = data[start - 1 : quote + 1]
            try:
                chars += len(_TEXT.decode(literal))
            except msgspec.DecodeError:  # see above: the full path's to read
                break
            events += 1
            pos = end + 2
        if events:
            self._result.events += events
            self._result.output_chars += chars
        return pos

    def on_event(self, event: str | None, obj: dict) -> None:
        kind = obj.get("type") if isinstance(obj.get("type"), str) else event
        r = self._result
        if kind == "message_start":
            message = obj.get("message")
            r.model = str_or_none(dig(message, "model")) or r.model
            usage = dig(message, "usage")
            if isinstance(usage, dict):
                r.service_tier = str_or_none(usage.get("service_tier")) or r.service_tier
                r.modifiers = self._usage.modifiers(usage, r.modifiers)
                self._usage.merge(usage)
                r.usage = self._usage.to_usage()
                r.input_tokens_hint = r.usage.input_tokens
        elif kind == "content_block_delta":
            delta = obj.get("delta")
            field = _DELTA_TEXT.get(dig(delta, "type") or "")
            if field and isinstance(delta.get(field), str):
                r.output_chars += len(delta[field])
        elif kind == "message_delta":
            add_finish_reason(r, dig(obj, "delta", "stop_reason"))
            usage = obj.get("usage")
            if isinstance(usage, dict):
                r.modifiers = self._usage.modifiers(usage, r.modifiers)
                self._usage.merge(usage)
                r.usage = self._usage.to_usage()
                r.usage_final = True
        elif kind == "message_stop":
            r.complete = True
        elif kind == "error" or event == "error":
            r.error = error_type(obj) or "error"

    def on_oversized(self, event: str | None, over: Oversized) -> None:
        """A huge delta counts toward output estimates; a huge message_start/delta keeps its usage."""
        kind = head_field(over, "type")
        kind = kind if isinstance(kind, str) else event
        if kind == "content_block_delta":
            self._result.output_chars += over.size
        elif kind == "message_start":
            self.on_event(event, {"type": kind, "message": {"model": head_field(over, "model"),
                                                            "usage": tail_field(over, "usage")}})
        elif kind == "message_delta":
            self.on_event(event, {"type": kind, "usage": tail_field(over, "usage")})
        elif kind in ("error", "message_stop"):
            self.on_event(event, {"type": kind, "error": head_field(over, "error")})
        else:
            self._result.garbled = True


def sse_cap(parser: JSONEventStreamParser) -> int:
    """The SSE decoder's per-event cap: a longer event is the decoder's to cut down (oversized)."""
    return parser._sse.max_event_bytes if parser._sse is not None else 0


class AnthropicMessagesAdapter(Adapter):
    provider = "anthropic"
    dialect = "anthropic"
    endpoint = "messages"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        try:
            obj, info = parse_json_request(body, ("max_tokens",), ("metadata", "speed"))
            info.metadata_user = str_or_none(dig(obj, "metadata", "user_id"))
            if speed := modifier(obj.get("speed")):  # fast mode asked for: reserve at fast rates
                info.modifiers = {"speed": speed}
            if info.metadata_user:
                info.hints = BodyHints(user_id=info.metadata_user[:4096])
            return info
        except Exception:
            return RequestInfo(malformed=True)

    def parse_response(self, body: bytes) -> ResponseResult:
        try:
            return self._parse_response(body)
        except Exception:
            return ResponseResult(garbled=True)

    def _parse_response(self, body: bytes) -> ResponseResult:
        obj = load_json(body)
        if not isinstance(obj, dict):
            return ResponseResult(garbled=bool(body))
        result = ResponseResult(model=str_or_none(obj.get("model")), error=error_type(obj))
        add_finish_reason(result, obj.get("stop_reason"))
        usage = obj.get("usage")
        if isinstance(usage, dict):
            result.service_tier = str_or_none(usage.get("service_tier"))
            state = AnthropicUsageState.empty()
            result.modifiers = state.modifiers(usage, {})
            state.merge(usage)
            result.usage = state.to_usage()
            result.usage_final = result.complete = True
            result.input_tokens_hint = result.usage.input_tokens
        result.output_chars = _content_chars(obj.get("content"))
        return result

    def stream_parser(self, path: str) -> StreamParser:
        return AnthropicStreamParser()


class AnthropicCountTokensAdapter(AnthropicMessagesAdapter):
    """``count_tokens`` is free: never charged, never blocked; its answer is not usage."""

    endpoint = "count_tokens"

    def parse_request(self, path: str, body: bytes) -> RequestInfo:
        info = super().parse_request(path, body)
        info.free = True
        return info

    def parse_response(self, body: bytes) -> ResponseResult:
        obj = load_json(body)
        return ResponseResult(error=error_type(obj), complete=isinstance(obj, dict))


MESSAGES = AnthropicMessagesAdapter()
COUNT_TOKENS = AnthropicCountTokensAdapter()
