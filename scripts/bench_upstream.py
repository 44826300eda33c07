"""A fast fake LLM provider for scripts/bench, run as its own process (its own core, its own GIL).

It plays mitmproxy's upstream proxy exactly like tests/support/fake_provider.py (``CONNECT
api.anthropic.com:443`` -> 200 -> TLS with a test-CA certificate -> HTTP/1.1 keep-alive), but
answers from pre-built bytes and never parses or keeps request bodies, so it costs next to
nothing next to the proxy being measured. Only 127.0.0.1 is bound.

What to answer is chosen by the request header ``x-bench``:

* absent            an Anthropic /v1/messages JSON answer (~0.7 KB, with usage)
* ``sse:N:GAP_US``  an Anthropic SSE stream of N text deltas, one every GAP_US microseconds;
                    each delta's text carries ``@<time.monotonic_ns() at send>@`` so the client
                    can tell the transit time of every event (CLOCK_MONOTONIC is system-wide)
* ``bulk:BYTES``    an Anthropic SSE stream of about BYTES bytes in 16 KB text deltas, written
                    as fast as the proxy reads them (the memory test)

Usage: ``python scripts/bench_upstream.py DIR`` prints one JSON line ``{"port": ..., "ca": ...}``
and serves until stdin closes or SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.certs import TestCA  # noqa: E402

HOSTS = ("api.anthropic.com", "api.openai.com", "generativelanguage.googleapis.com")
MODEL = "claude-sonnet-4-5"
USAGE = {
    "input_tokens": 24000, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
    "output_tokens": 450, "service_tier": "standard",
}  # fmt: skip

JSON_BODY = json.dumps({
    "model": MODEL, "id": "msg_01BenchQC4g3HwBThD4BaNtBc", "type": "message", "role": "assistant",
    "content": [{"type": "text", "text": "I'll read the file first, then make the change you asked for. " * 6}],
    "stop_reason": "end_turn", "stop_sequence": None, "usage": USAGE,
}).encode()  # fmt: skip


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


JSON_RESPONSE = _head("200 OK", [
    ("content-type", "application/json"), ("content-length", str(len(JSON_BODY))),
    ("request-id", "req_bench"), ("anthropic-organization-id", "00000000-bench"),
]) + JSON_BODY  # fmt: skip

SSE_HEAD = _head("200 OK", [
    ("content-type", "text/event-stream; charset=utf-8"), ("transfer-encoding", "chunked"),
    ("cache-control", "no-cache"), ("request-id", "req_bench"),
])  # fmt: skip


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


START = chunk(
    sse("message_start", {"type": "message_start", "message": {
        "model": MODEL, "id": "msg_01BenchQC4g3HwBThD4BaNtBc", "type": "message", "role": "assistant",
        "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**USAGE, "output_tokens": 1}}})
    + sse("content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}})
)  # fmt: skip
END = (
    chunk(sse("content_block_stop", {"type": "content_block_stop", "index": 0})
          + sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": 450}})
          + sse("message_stop", {"type": "message_stop"}))
    + b"0\r\n\r\n"
)  # fmt: skip
DELTA_PREFIX = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
DELTA_SUFFIX = b'"}}\n\n'


def timed_delta(pad: bytes) -> bytes:
    """One content_block_delta stamped with its send time."""
    return chunk(DELTA_PREFIX + b"@%d@" % time.monotonic_ns() + pad + DELTA_SUFFIX)


class Upstream:
    def __init__(self, directory: Path) -> None:
        self.ca = TestCA(directory)
        self.contexts: dict[str, ssl.SSLContext] = {h: self.ca.server_context(h) for h in HOSTS}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                first, _, rest = head.partition(b"\r\n")
                method, target, _ = first.split(b" ", 2)
                headers = self._headers(rest)
                if method == b"CONNECT":
                    host = target.decode().rsplit(":", 1)[0]
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await writer.start_tls(self.contexts.get(host) or self.ca.server_context(host))
                    continue
                length = int(headers.get(b"content-length", b"0"))
                if length:
                    await reader.readexactly(length)
                await self.answer(headers.get(b"x-bench", b"").decode(), writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _headers(raw: bytes) -> dict[bytes, bytes]:
        out = {}
        for line in raw.split(b"\r\n"):
            k, sep, v = line.partition(b":")
            if sep:
                out[k.strip().lower()] = v.strip()
        return out

    async def answer(self, mode: str, writer: asyncio.StreamWriter) -> None:
        if not mode:
            writer.write(JSON_RESPONSE)
            await writer.drain()
            return
        kind, _, args = mode.partition(":")
        writer.write(SSE_HEAD + START)
        if kind == "sse":
            count, gap_us = (int(x) for x in args.split(":"))
            pad = b" token" * 8
            for _ in range(count):
                if gap_us:
                    await asyncio.sleep(gap_us / 1e6)
                writer.write(timed_delta(pad))
                await writer.drain()
        elif kind == "bulk":
            delta = chunk(DELTA_PREFIX + b"x" * 16384 + DELTA_SUFFIX)
            for _ in range(max(1, -(-int(args) // len(delta)))):  # at least BYTES
                writer.write(delta)
                await writer.drain()
        writer.write(END)
        await writer.drain()


async def serve(directory: Path) -> None:
    up = Upstream(directory)
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0, limit=1 << 20)
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port, "ca": str(up.ca.dir / "ca.pem")}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(1) else None)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
