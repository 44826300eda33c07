"""Thirteenth review (transparency) helpers: the same raw request through plain mitmdump and through
the spendgate gateway, both in upstream mode in front of one recording upstream, so what the
provider receives and what the client gets back can be compared byte for byte.

    rec = Recorder(tmp)                         # upstream proxy + TLS "provider"; records raw bytes
    rec.script = lambda req: [b"HTTP/1.1 200 OK\\r\\n..."]   # what to answer (bytes; floats: sleep)
    with Plain(tmp / "plain", rec) as plain, Gateway(tmp / "gw", rec) as gw:
        got = exchange(plain.port, plain.ca_file, "api.openai.com", raw_request)

Only 127.0.0.1 is used. The "provider" terminates TLS with a leaf signed by the recorder's test CA
(mitmproxy trusts it through ssl_verify_upstream_trusted_ca) and records each request exactly as
it arrived: head bytes and body bytes with their framing (chunked stays chunked).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.support.certs import TestCA
from tests.support.gateway import BIN, Gateway, _clean_env, free_port  # noqa: F401  (Gateway re-exported)

MAX_HEAD = 1 << 20


@dataclass
class Raw:
    host: str
    head: bytes  # request line + headers + blank line, as received
    body: bytes  # framed as received (chunked framing kept)
    decoded_body: bytes  # chunked framing removed

    @property
    def headers(self) -> list[tuple[str, str]]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        return [(k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines if ln)]

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(vals) if vals else None

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")


def default_script(req: Raw) -> list:
    body = b'{"ok":true}'
    return [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)]


class Recorder:
    """An upstream HTTP proxy that is also the provider: CONNECT, TLS, then HTTP/1.1 keep-alive."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = TestCA(self.dir / "ca")
        self.ca_file = str(self.ca.ca_file)
        self.requests: list[Raw] = []
        self.connects: list[str] = []
        self.errors: list[str] = []
        self.script: Callable[[Raw], list] = default_script
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=MAX_HEAD))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def reset(self) -> None:
        self.requests.clear()
        self.connects.clear()
        self.script = default_script

    async def _read(self, reader: asyncio.StreamReader):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        hdrs: dict[str, str] = {}
        for ln in lines[1:]:
            if ln:
                k, _, v = ln.partition(":")
                hdrs[k.strip().lower()] = v.strip()
        method = lines[0].split(" ", 1)[0]
        body = b""
        decoded = b""
        if "chunked" in hdrs.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                body += size_line
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = await reader.readuntil(b"\r\n")
                        body += t
                        if t == b"\r\n":
                            break
                    break
                data = await reader.readexactly(size + 2)
                body += data
                parts.append(data[:-2])
            decoded = b"".join(parts)
        elif "content-length" in hdrs and method != "CONNECT":
            body = decoded = await reader.readexactly(int(hdrs["content-length"]))
        return method, lines[0], head, body, decoded

    def server_context(self, host: str) -> ssl.SSLContext:
        """The provider's TLS for `host` (a subclass may offer other protocols)."""
        return self.ca.server_context(host)

    async def after_tls(self, host: str, reader, writer) -> bool:
        """A subclass's turn once TLS is up: True when it served the connection itself."""
        return False

    async def _handle(self, reader, writer) -> None:
        host = None
        try:
            while True:
                got = await self._read(reader)
                if got is None:
                    break
                method, line, head, body, decoded = got
                if method == "CONNECT":
                    target = line.split(" ")[1]
                    self.connects.append(target)
                    host = target.rsplit(":", 1)[0]
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await writer.start_tls(self.server_context(host))
                    if await self.after_tls(host, reader, writer):
                        return
                    continue
                req = Raw(host or "", head, body, decoded)
                self.requests.append(req)
                close = False
                for part in self.script(req):
                    if isinstance(part, (int, float)):
                        await asyncio.sleep(part)
                    elif part is None:
                        close = True
                    else:
                        writer.write(part)
                        await writer.drain()
                if close:
                    break
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            pass
        except Exception as e:  # pragma: no cover
            self.errors.append(repr(e))
        finally:
            try:
                writer.close()
            except Exception:
                pass


class Plain:
    """Plain mitmdump, no addon, same upstream mode and options as tests.support.gateway.Gateway."""

    def __init__(self, directory: str | Path, upstream, extra_args: list[str] | tuple[str, ...] = ()):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.upstream = upstream
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.confdir = self.dir / "mitm"
        self.proc = None

    @property
    def ca_file(self) -> str:
        return str(self.confdir / "mitmproxy-ca-cert.pem")

    def start(self) -> "Plain":
        self._log = open(self.dir / "plain.log", "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "-p", str(self.port),
             "--set", f"confdir={self.confdir}", "--mode", f"upstream:http://127.0.0.1:{self.upstream.port}",
             "--set", f"ssl_verify_upstream_trusted_ca={self.upstream.ca_file}", *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_clean_env(), cwd=str(self.dir))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if Path(self.ca_file).exists():
                try:
                    socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("plain mitmdump did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

    def __enter__(self) -> "Plain":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def open_tunnel(port: int, ca_file: str, host: str, alpn: list[str] | None = None, timeout: float = 10.0
                ) -> ssl.SSLSocket:
    """CONNECT host:443 through the proxy at `port`, then TLS trusting `ca_file`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("proxy closed during CONNECT")
        buf += chunk
    assert buf.startswith(b"HTTP/1.1 200"), buf
    ctx = ssl.create_default_context(cafile=ca_file)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(s, server_hostname=host)


def read_response(sock: ssl.SSLSocket, head_only_method: bool = False, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response: (head, body as framed on the wire). Reads by content-length, chunked, or to EOF."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    head += b"\r\n\r\n"
    status = int(head.split(b" ", 2)[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in
            (ln.partition(b":") for ln in head.split(b"\r\n")[1:] if ln)}
    if status < 200 and status != 101:
        more_head, body = read_response_from(sock, rest, head_only_method, timeout)
        return head + more_head, body
    if head_only_method or status in (204, 304):
        return head, rest
    if b"chunked" in hdrs.get(b"transfer-encoding", b"").lower():
        body = rest
        while _chunked_end(body) is None:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return head, body
    if b"content-length" in hdrs:
        n = int(hdrs[b"content-length"])
        body = rest
        while len(body) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(body)} of {n} body bytes")
            body += chunk
        return head, body
    body = rest
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        body += chunk
    return head, body


def _chunked_end(body: bytes) -> int | None:
    """Where a chunked body (framing included) ends, trailers included; None: not yet."""
    i = 0
    while True:
        j = body.find(b"\r\n", i)
        if j < 0:
            return None
        size = int(body[i:j].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            k = body.find(b"\r\n\r\n", j)
            if body[j:j + 4] == b"\r\n\r\n":
                return j + 4
            return None if k < 0 else k + 4
        i = j + 2 + size + 2
        if i > len(body):
            return None


def dechunk(body: bytes) -> list[bytes]:
    """The chunks of a chunked body, in order (the last, empty one included)."""
    out, i = [], 0
    while i < len(body):
        j = body.find(b"\r\n", i)
        if j < 0:
            break
        size = int(body[i:j].split(b";")[0].strip() or b"0", 16)
        out.append(body[j + 2:j + 2 + size])
        if size == 0:
            break
        i = j + 2 + size + 2
    return out


def read_response_from(sock, rest: bytes, head_only_method: bool, timeout: float) -> tuple[bytes, bytes]:
    class _Pre:
        def __init__(self, s, pre):
            self.s, self.pre = s, pre

        def settimeout(self, t):
            self.s.settimeout(t)

        def recv(self, n):
            if self.pre:
                out, self.pre = self.pre, b""
                return out
            return self.s.recv(n)

    return read_response(_Pre(sock, rest), head_only_method, timeout)  # type: ignore[arg-type]


def exchange(port: int, ca_file: str, host: str, raw: bytes | list, head_only: bool = False,
             timeout: float = 10.0) -> tuple[bytes, bytes]:
    """Send raw request bytes (or a list of parts; floats: sleep) on a fresh tunnel; one response."""
    s = open_tunnel(port, ca_file, host, timeout=timeout)
    try:
        for part in raw if isinstance(raw, list) else [raw]:
            if isinstance(part, (int, float)):
                time.sleep(part)
            else:
                s.sendall(part)
        return read_response(s, head_only, timeout)
    finally:
        s.close()


def strip_volatile(head: bytes) -> list[tuple[bytes, bytes]]:
    """Response or request headers minus the ones a proxy legitimately varies (date, via, ...)."""
    out = []
    for ln in head.split(b"\r\n")[1:]:
        if not ln:
            continue
        k, _, v = ln.partition(b":")
        if k.strip().lower() in (b"date",) or k.strip().lower().startswith(b"x-spendgate-"):
            continue
        out.append((k.strip().lower(), v.strip()))
    return out


def policy_file(tmp: Path, text: str) -> Path:
    p = tmp / "policy.yaml"
    p.write_text("version: 1\ntimezone: UTC\n" + text)
    return p


@contextlib.contextmanager
def side_by_side(tmp: Path, rec: Recorder, policy: str = "defaults: {user: {day: 1000}}\n"):
    """`rec` behind a plain mitmdump and behind the gateway: yields (rec, plain, gateway), then
    stops all three and prints the gateway's log tail (shown when a test fails)."""
    plain = Plain(tmp / "plain", rec).start()
    gw = Gateway(tmp / "gw", rec, policy=policy_file(tmp, policy)).start()
    try:
        yield rec, plain, gw
    finally:
        gw.stop()
        plain.stop()
        rec.stop()
        print(gw.log_text()[-4000:])
