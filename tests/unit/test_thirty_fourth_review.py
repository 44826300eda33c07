"""Thirty-fourth review: 9d11bd4, AnthropicStreamParser holds the reads themselves (a memoryview past
what was counted, joined once by `_let_go`), `_plain_until(data, pos) -> int`, long texts decoded
from a memoryview, `_unfinished(data, pos)`.

The rule: the fast path gives exactly what the full path gives (SSE decoder + json.loads for every
event: `SlowParser`), after every read and after close, for any cuts; it never raises out of
feed/close and holds bounded memory. Each check below is made against the full path and, where the
parent commit's source can be read from git, against the parent's parser as well (loaded from
``git show 9d11bd4^:spendgate/metering/providers/anthropic.py`` into a module of its own).

Two bugs (Low: no caller in spendgate feeds such reads today), fixed after the review: empty reads
while a delta was held added one list entry each, without bound, and tiny reads while a delta was
held cost ~40 bytes of Python objects each (64 KB held in 2-byte reads: ~1.4 MB). A third (Low):
a held memoryview kept its whole read alive (100 bytes held of a 1 MiB read); a remainder smaller
than half its read is now copied.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import types
import zlib
from pathlib import Path

import pytest

from spendgate.metering.providers import anthropic, bedrock
from spendgate.metering.providers.anthropic import AnthropicStreamParser
from spendgate.metering.providers.eventstream import encode
from spendgate.metering.streams import AfterForwarding, StreamTap

REPO = Path(__file__).resolve().parents[2]
PARENT = "9d11bd4^"


class SlowParser(AnthropicStreamParser):
    def feed(self, data: bytes) -> None:  # the full path only
        anthropic.JSONEventStreamParser.feed(self, data)


def _load_parent() -> types.ModuleType | None:
    try:
        src = subprocess.run(["git", "show", f"{PARENT}:spendgate/metering/providers/anthropic.py"], cwd=REPO,
                             capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if b"_plain_deltas" not in src:  # not the parent this review compares with
        return None
    mod = types.ModuleType("anthropic_parent_9d11bd4")
    sys.modules[mod.__name__] = mod
    exec(compile(src, "anthropic_parent_9d11bd4.py", "exec"), mod.__dict__)
    return mod


_PARENT_MOD = _load_parent()
needs_parent = pytest.mark.skipif(_PARENT_MOD is None, reason="the parent commit's source is not in git here")

START = (b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-sonnet-4-5",'
         b'"usage":{"input_tokens":10,"output_tokens":1}}}\n\n')
END = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
       b'"usage":{"output_tokens":42}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')
EV = anthropic._EVENT_LINE


def delta(text: str, kind: str = "text", pad: str = "", index: int = 0, ascii_only: bool = False) -> bytes:
    field, typ = ("thinking", "thinking_delta") if kind == "thinking" else ("text", "text_delta")
    body = json.dumps({"type": "content_block_delta", "index": index, "delta": {"type": typ, field: text}},
                      separators=(",", ":"), ensure_ascii=ascii_only)
    body = body[:-1] + pad + body[-1:]
    return b"event: content_block_delta\ndata: " + body.encode("utf-8", "surrogatepass") + b"\n\n"


_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
RAW = [
    _HEAD + b'\xff\xfe"}}\n\n', _HEAD.replace(b'"index":0', b'"index":01') + b'x"}}\n\n', _HEAD + b'a\x01b"}}\n\n',
    _HEAD.replace(b"\n", b"\r\n") + b'crlf"}}\r\n\r\n', _HEAD + b'x"}}\n', _HEAD + b'a"b"}}\n\n',
    _HEAD + b'\xed\xa0\x80"}}\n\n', _HEAD + b'\\ud83d"}}\n\n', _HEAD + b'\xc3"}}\n\n', _HEAD + b"\xff" + b"k" * 1100 + b'"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}\n\n',
    b"event: content_block_delta\n", b"\n", b"\r", b"\r\n", b": keep-alive\n\n", b"garbage{{{\n\n", b"event: content_block",
    b'event: ping\ndata: {"type":"ping"}\n\n', b"\xef\xbb\xbf", b"data: [DONE]\n\n",
    b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n',
]  # fmt: skip
ALPHABET = ["a", "b", " ", "é", "日", "😀", '"', "\\", "\n", "\t", "\x00", "\x1f", "\u2028", "\ud800", "xxxxx"]
TERMINATORS = [b"\r\r", b"\r\n\r\n", b"\n\r", b"\r\n", b"\n\r\n", b"\n", b"\r", b"\n\n\n"]


def random_text(rng: random.Random) -> str:
    r = rng.random()
    n = (rng.randint(0, 40) if r < 0.45 else rng.randint(200, 3000) if r < 0.8 else rng.randint(3000, 20000)
         if r < 0.98 else rng.randint(60_000, 80_000))
    unit = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 6 if rng.random() < 0.5 else 60)))
    return (unit * (n // len(unit) + 1))[:n]


def random_event(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.65:
        return delta(random_text(rng), rng.choice(["text", "thinking"]), rng.choice(["", "", "", " ", "\t ", "\u00a0"]),
                     rng.choice([0, 0, 0, 1, 12]), rng.random() < 0.1)
    if r < 0.88:
        return rng.choice(RAW)
    if r < 0.94:
        return delta(random_text(rng), pad=rng.choice(["", " "]))[:-2] + rng.choice(TERMINATORS)
    if r < 0.97:
        ev = delta(random_text(rng))
        i = rng.randrange(len(ev))
        return ev[:i] + bytes([rng.randrange(256)]) + ev[i + 1 :]
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))


def random_stream(rng: random.Random) -> bytes:
    framed = rng.random() < 0.7
    s = (START if framed else b"") + b"".join(random_event(rng) for _ in range(rng.randint(0, 12))) + (END if framed else b"")
    return s[: rng.randrange(len(s))] if s and rng.random() < 0.2 else s  # cut off mid-stream


def random_reads(rng: random.Random, s: bytes) -> list[bytes]:
    n, r = len(s), rng.random()
    if r < 0.3:
        cuts = sorted(rng.randrange(n + 1) for _ in range(rng.randint(0, 12)))
    elif r < 0.55:
        size = rng.choice([1, 2, 3, 7, 64, 1000, 4096, 16384] if n < 4000 else [97, 1000, 4096, 16384, 65536])
        cuts = list(range(0, n, size))
    elif r < 0.75:
        cuts, i = [], 0
        while i < n:
            i += rng.choice([1, 2, 5, 50, 300, 2000, 16384] if n < 4000 else [1, 5, 300, 2000, 16384])
            cuts.append(min(i, n))
    else:  # around line ends and quotes
        places = [i for i in range(n) if s[i] in b'\n"\r']
        cuts = sorted({min(n, max(0, c + rng.randint(-2, 2))) for c in rng.sample(places, min(len(places), 10))})
    if rng.random() < 0.2:  # repeated cuts: empty reads
        cuts = sorted(cuts + [rng.randrange(n + 1) for _ in range(3)])
    reads, last = [], 0
    for c in cuts:
        if c >= last:
            reads.append(s[last:c])
            last = c
    return [*reads, s[last:]]


def run(parser, reads: list, cap: int = 0) -> list:
    if cap:
        parser._sse.max_event_bytes = cap
    seen = []
    for r in reads:
        parser.feed(r)
        seen.append(parser.result())
    parser.close()
    return [*seen, parser.result()]


def cap_near_an_event(rng: random.Random, s: bytes) -> int:
    i = s.find(EV)
    j = s.find(b"\n\n", i) if i >= 0 else -1
    return max(1, (j - i if j > 0 else 100) + rng.randint(-4, 2))


# -- the pieces the commit changed, against the parent's ------------------------------------------


def _variants() -> list[bytes]:
    out = {b""}
    for n in range(len(EV) + 12):
        base = (EV + b'data: {"t"')[:n]
        out.add(base)
        for i in range(len(base)):  # each byte changed
            for b in (0x0A, 0x0D, 0x65, base[i] ^ 1):
                out.add(base[:i] + bytes([b]) + base[i + 1 :])
    return sorted(out)


def test_event_line_prefix_check_equals_the_parents_for_every_length() -> None:
    """`data.startswith(_EVENT_LINE[: len(data) - pos], pos)` is the old
    `_EVENT_LINE.startswith(data[pos:][:_EVENT_LINE_LEN])` for every length and offset."""
    count = 0
    for v in _variants():
        for pre in (b"", b"x", b"\n\n", b"abc"):
            data = pre + v
            pos = len(pre)
            new = data.startswith(EV[: len(data) - pos], pos)
            old = EV.startswith(data[pos:][: anthropic._EVENT_LINE_LEN])
            assert new == old, (data, pos)
            count += 1
    assert count > 10_000


@needs_parent
def test_unfinished_with_an_offset_equals_the_parents() -> None:
    rng = random.Random(34)
    cases = [pre + v + tail for v in _variants()[::3] for pre in (b"", b"zz\n\n")
             for tail in (b"", b"\n", b"\n\n", b"abc", b"\r", b"abc\nx", b"x" * (anthropic._HOLD_MAX - 40))]
    cases += [rng.choice(cases)[: rng.randrange(200)] + bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
              for _ in range(3000)]
    for data in cases:
        for pos in {0, 1, 4, len(data) // 2, len(data)}:
            if pos <= len(data):
                assert anthropic._unfinished(data, pos) == _PARENT_MOD._unfinished(data[pos:]), (data[:80], pos)


@needs_parent
def test_plain_until_equals_the_parents_plain_deltas() -> None:
    """`_plain_until(data, pos)` counts what `_plain_deltas(data[pos:])` counted and stops where it left off."""
    rng = random.Random(3434)
    cases = 0
    for _ in range(300):
        s = random_stream(rng)
        starts = [i for i in range(len(s)) if s.startswith(b"event:", i)][:6] + [rng.randrange(len(s) + 1) for _ in range(2)]
        for pos in starts:
            new, old = AnthropicStreamParser(), _PARENT_MOD.AnthropicStreamParser()
            end = new._plain_until(s, pos)
            rest = old._plain_deltas(s[pos:])
            assert s[end:] == rest and (new.result().events, new.result().output_chars) == \
                (old.result().events, old.result().output_chars)
            cases += 1
    assert cases > 1000


# -- whole streams at random cuts ----------------------------------------------------------------


def test_random_streams_equal_the_full_path_and_the_parent() -> None:
    """Garbage, CRs, invalid UTF-8, control characters, escapes, texts of 0 B to 80 KB (past
    _SLICE_MAX and _HOLD_MAX), the SSE cap at an event's size, cut-off streams, empty reads."""
    rng = random.Random(20261204)
    streams = reads_total = 0
    for _ in range(1300):
        s = random_stream(rng)
        reads = random_reads(rng, s)
        cap = rng.choice([0, 0, 0, 150, 400, 1200, 5000, 70_000, -1])
        cap = cap_near_an_event(rng, s) if cap == -1 else cap
        got = run(AnthropicStreamParser(), reads, cap)
        assert got == run(SlowParser(), reads, cap), (reads[:3], cap)
        if _PARENT_MOD is not None:
            assert got == run(_PARENT_MOD.AnthropicStreamParser(), reads, cap)
        streams, reads_total = streams + 1, reads_total + len(reads)
    assert streams == 1300 and reads_total > 50_000


_MIXED = (START + delta("é日😀" * 130 + '"\\\n\t') + delta("x") + delta("y" * 1100)[:-2] + b"\r\n\r\n" + delta("z")
          + delta("a" * 1030, "thinking", " ") + _HEAD + b"\xff" + b"k" * 1100 + b'"}}\n\n' + delta("é" * 600)
          + b"event: content_block_delta\ndata: {\n\n" + END)


@pytest.mark.parametrize("cap", [0, 1040, 1120])
def test_every_single_cut_of_a_mixed_stream(cap: int) -> None:
    """Long texts (past _SLICE_MAX) with 2-4 byte characters, CRs, invalid UTF-8 in a long text,
    an unparsable delta; cut once at every byte; the cap around the long events' sizes."""
    for c in range(len(_MIXED) + 1):
        reads = [_MIXED[:c], _MIXED[c:]]
        assert run(AnthropicStreamParser(), reads, cap) == run(SlowParser(), reads, cap), c


@pytest.mark.parametrize("n", [1022, 1023, 1024, 1025, 1026, 2048, anthropic._HOLD_MAX - 200, anthropic._HOLD_MAX + 10])
def test_texts_around_slice_max_and_hold_max(n: int) -> None:
    """Texts either side of _SLICE_MAX (slice or memoryview) and of _HOLD_MAX (held or let go),
    with 1-4 byte characters whose bytes fall on every read boundary of several read sizes."""
    for unit in ("a", "é", "日", "😀", '\\"'):
        text = (unit * n)[:n]
        s = START + delta(text) + delta(text[:-1] + "\x01") + delta("tail") + END
        for size in (1000, 1023, 1024, 4093, 16_384):
            reads = [s[i : i + size] for i in range(0, len(s), size)]
            assert run(AnthropicStreamParser(), reads) == run(SlowParser(), reads), (unit, size)


def test_reads_as_bytearrays_equal_bytes() -> None:
    """No caller passes anything but bytes (mitmproxy's reads, zlib/brotli/zstd pieces), but a
    bytearray that is not changed afterwards reads the same."""
    rng = random.Random(7)
    for _ in range(200):
        s = random_stream(rng)
        reads = random_reads(rng, s)
        assert run(AnthropicStreamParser(), [bytearray(r) for r in reads]) == run(SlowParser(), reads)


def test_through_the_stream_tap_identity_and_gzip() -> None:
    """The callers as the proxy runs them: StreamTap (identity reads, or gzip decoded in pieces)
    and AfterForwarding (reads parsed in batches, after they were sent, or by a timer)."""
    rng = random.Random(11)
    for k in range(150):
        s = random_stream(rng)
        reads = random_reads(rng, s)
        enc = "gzip" if k % 2 else ""
        if enc:
            z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            reads = [z.compress(r) + z.flush(zlib.Z_SYNC_FLUSH) for r in reads[:-1]] + [z.compress(reads[-1]) + z.flush()]
        pending: list = []
        tap = StreamTap(AfterForwarding(AnthropicStreamParser(), lambda delay, drain: pending.append(drain)), enc)
        for r in reads:
            if r:
                out = tap(r)
                assert (out if isinstance(out, bytes) else b"".join(out)) == r
            if pending and rng.random() < 0.5:
                pending.pop(0)()
        got = tap.finish()
        assert tap.broken is None and got == run(SlowParser(), [s])[-1]


def test_bedrock_invoke_stream_never_feeds_the_embedded_parser() -> None:
    """Bedrock's InvokeStreamParser hands decoded Anthropic events to `on_event`: the held reads
    and the fast path are not in its way, long texts included."""
    texts = ["hi", "é" * 700, "x" * 70_000, '"quoted"\n']
    inner = [{"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}}]
    inner += [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}} for t in texts]
    inner += [{"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
              {"type": "message_stop"}]
    body = b"".join(encode({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
                           json.dumps({"bytes": base64.b64encode(json.dumps(e).encode()).decode()}).encode())
                    for e in inner)
    for size in (1, 100, 16_384, len(body)):
        p = bedrock.InvokeStreamParser()
        for i in range(0, len(body), size):
            p.feed(body[i : i + size])
            assert p._anthropic._held == [] and p._anthropic._held_bytes == 0
        p.close()
        r = p.result()
        assert r.output_chars == sum(map(len, texts)) and r.complete and r.usage.output_tokens == 9 and not r.garbled


# -- memory -------------------------------------------------------------------------------------


def kept_alive(p: AnthropicStreamParser) -> int:
    """Bytes of the objects the held list keeps alive (a memoryview keeps its whole buffer)."""
    return sys.getsizeof(p._held) + sum(sys.getsizeof(x.obj if isinstance(x, memoryview) else x) for x in p._held)


def test_what_is_held_stays_under_hold_max_plus_one_read() -> None:
    """After every read: `_held_bytes` is what the list holds, at most _HOLD_MAX plus the read;
    what the list keeps alive is at most _HOLD_MAX plus the largest read (a memoryview keeps the
    read it came from whole: a 1 MiB read whose last 100 bytes are held keeps 1 MiB alive until
    the next read, where the parent held 100 bytes; reads are at most streams.PIECE)."""
    long = delta("v" * 100_000)
    d = delta("w" * 100)
    one_mib = d * ((1 << 20) // len(d)) + long[:100]
    for reads in ([one_mib, *[long[100 + i : 100 + i + 16_384] for i in range(0, 200_000, 16_384)]],
                  [long[i : i + 700] for i in range(0, 70_000, 700)],
                  [long[i : i + 4096] for i in range(0, len(long), 4096)]):
        p, largest = AnthropicStreamParser(), 0
        p.feed(START)
        for r in reads:
            p.feed(r)
            largest = max(largest, len(r))
            assert p._held_bytes == sum(len(x) for x in p._held) <= anthropic._HOLD_MAX + len(r)
            assert sum(len(x) for x in p._held if not isinstance(x, memoryview)) <= anthropic._HOLD_MAX + len(r)
            assert kept_alive(p) <= anthropic._HOLD_MAX + largest + 64 * 1024  # + list and object headers
    p = AnthropicStreamParser()
    p.feed(START)
    p.feed(one_mib)
    # a remainder smaller than half its read is copied (Low 3 of the review): what is kept alive is at
    # most twice what is held, not the 1 MiB read
    assert p._held_bytes == 100 and kept_alive(p) <= 2 * 100 + 1024


def test_empty_reads_while_holding_do_not_grow_the_list() -> None:
    p = AnthropicStreamParser()
    p.feed(START)
    p.feed(delta("t" * 500)[:100])
    assert p._held
    for _ in range(10_000):
        p.feed(b"")
    assert len(p._held) <= 2


def test_tiny_reads_while_holding_cost_about_their_bytes() -> None:
    p = AnthropicStreamParser()
    p.feed(START)
    long = delta("v" * 70_000)
    for i in range(0, 65_000, 2):
        p.feed(long[i : i + 2])
    assert p._held and kept_alive(p) <= 4 * anthropic._HOLD_MAX
