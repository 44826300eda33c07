"""Fourteenth review helpers: an HTTP/2 "provider" beside thirteenth_review_support's HTTP/1 one,
and a raw HTTP/2 client, so plain mitmdump and the gateway can be compared over HTTP/2 end to end.

    rec = H2Recorder(tmp)                        # upstream proxy + TLS provider offering h2
    rec.h2_script = lambda req: [("headers", [(":status", "200"), ...]), ("data", b"...", False), 0.05, ...]
    with Plain(tmp / "plain", rec) as plain:
        head, frames = h2_exchange(plain.port, plain.ca_file, "api.openai.com", "POST", "/v1/...", body)

A script is a list of parts: ("headers", [(name, value), ...], end_stream), ("data", bytes,
end_stream) (an empty bytes is an empty DATA frame), a float (sleep). Only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h2.config
import h2.connection
import h2.events

from tests.attacks.thirteenth_review_support import Recorder, open_tunnel


@dataclass
class H2Raw:
    host: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(vals) if vals else None


class H2Recorder(Recorder):
    """Like Recorder, but the provider's TLS offers h2 first; an h2 connection is answered by
    `h2_script`, an HTTP/1.1 one as Recorder does."""

    def __init__(self, directory: str | Path):
        self.h2_requests: list[H2Raw] = []
        self.h2_script: Callable[[H2Raw], list] = lambda req: [
            ("headers", [(":status", "200"), ("content-type", "application/json")], False),
            ("data", b'{"ok":true}', True)]
        self._h2_contexts: dict[str, ssl.SSLContext] = {}
        super().__init__(directory)

    def _h2_context(self, host: str) -> ssl.SSLContext:
        ctx = self._h2_contexts.get(host)
        if ctx is None:
            cert, key = self.ca.leaf(host)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert), str(key))
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            self._h2_contexts[host] = ctx
        return ctx

    def server_context(self, host: str) -> ssl.SSLContext:
        return self._h2_context(host)

    async def after_tls(self, host: str, reader, writer) -> bool:
        if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
            return False
        await self._serve_h2(host, reader, writer)
        return True

    async def _serve_h2(self, host: str, reader, writer) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        await writer.drain()
        pending: dict[int, list] = {}
        tasks = []

        async def respond(sid: int, req: H2Raw) -> None:
            for part in self.h2_script(req):
                if isinstance(part, (int, float)):
                    await asyncio.sleep(part)
                    continue
                kind = part[0]
                if kind == "headers":
                    conn.send_headers(sid, part[1], end_stream=part[2])
                elif kind == "data":
                    conn.send_data(sid, part[1], end_stream=part[2])
                writer.write(conn.data_to_send())
                await writer.drain()

        while True:
            data = await reader.read(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    pending[ev.stream_id] = [list(ev.headers), b""]
                elif isinstance(ev, h2.events.DataReceived):
                    pending[ev.stream_id][1] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if isinstance(ev, (h2.events.RequestReceived, h2.events.DataReceived)) and ev.stream_ended:
                    hdrs, body = pending.pop(ev.stream_id)
                    req = H2Raw(host, hdrs, body)
                    self.h2_requests.append(req)
                    tasks.append(asyncio.ensure_future(respond(ev.stream_id, req)))
            writer.write(conn.data_to_send())
            await writer.drain()


def h2_exchange(port: int, ca_file: str, host: str, method: str, path: str, body: bytes = b"",
                headers: list[tuple[str, str]] = (), timeout: float = 10.0):
    """One request over HTTP/2 through the proxy at `port`: (ALPN, response headers, frames), frames
    being ("1xx", headers), ("DATA", bytes), ("END",), ("RST", code), ("EOF",), ("TIMEOUT",)."""
    s = open_tunnel(port, ca_file, host, alpn=["h2", "http/1.1"], timeout=timeout)
    proto = s.selected_alpn_protocol()
    if proto != "h2":
        s.close()
        return proto, None, []
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    hdrs = [(":method", method), (":path", path), (":scheme", "https"), (":authority", host), *headers]
    if body:
        hdrs.append(("content-length", str(len(body))))
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, hdrs, end_stream=not body)
    if body:
        c.send_data(sid, body, end_stream=True)
    s.sendall(c.data_to_send())
    frames: list[tuple] = []
    head = None
    ended = False
    s.settimeout(timeout)
    try:
        while not ended:
            try:
                d = s.recv(65536)
            except TimeoutError:
                frames.append(("TIMEOUT",))
                break
            if not d:
                frames.append(("EOF",))
                break
            for ev in c.receive_data(d):
                if isinstance(ev, h2.events.InformationalResponseReceived):
                    frames.append(("1xx", list(ev.headers)))
                elif isinstance(ev, h2.events.ResponseReceived):
                    head = list(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    frames.append(("DATA", ev.data))
                    if ev.flow_controlled_length:
                        c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if isinstance(ev, h2.events.StreamEnded):
                    frames.append(("END",))
                    ended = True
                elif isinstance(ev, h2.events.StreamReset):
                    frames.append(("RST", ev.error_code))
                    ended = True
            s.sendall(c.data_to_send())
    finally:
        s.close()
    return proto, head, frames


def data_of(frames: list[tuple]) -> bytes:
    return b"".join(f[1] for f in frames if f[0] == "DATA")


# -- OpenAI's chat stream and a chat request over HTTP/2 (the fourteenth and fifteenth reviews) ----

CHAT_HOST = "api.openai.com"
CHAT_HEADERS = [("authorization", "Bearer sk-test-SECRET456"), ("content-type", "application/json")]
CHAT_REQUEST = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def chat_events(asked: bool, eol: bytes = b"\n") -> list[bytes]:
    """OpenAI's chat chunks as SSE events, without [DONE]; with include_usage (`asked`) every chunk
    carries `"usage":null` and a last `choices: []` chunk the usage (5 in, 2 out)."""
    out = []
    for piece in ("Hel", "lo"):
        c = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        if asked:
            c["usage"] = None
        out.append(c)
    if asked:
        out.append({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                    "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
    return [b"data: " + json.dumps(o, separators=(",", ":")).encode() + eol + eol for o in out]


def asked_for_usage(req: H2Raw) -> bool:
    return (json.loads(req.body).get("stream_options") or {}).get("include_usage") is True


def post_chat(proxy, body: bytes = CHAT_REQUEST) -> bytes:
    """One streamed chat request over HTTP/2 through `proxy`: the data the client received."""
    proto, _head, frames = h2_exchange(proxy.port, proxy.ca_file, CHAT_HOST, "POST", "/v1/chat/completions", body,
                                       CHAT_HEADERS)
    assert proto == "h2", proto
    assert frames and frames[-1] == ("END",), frames
    return data_of(frames)

