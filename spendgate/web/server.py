"""The gateway's admin JSON API: a small authenticated HTTP server on loopback.

DuckDB lets one process hold the ledger file, so while a gateway runs, the CLI (and later the
dashboard) asks the gateway instead of opening the file. Requests are served on their own
threads with their own DuckDB cursors, never on the proxy's event loop. Every call needs the
bearer token written, readable only by its owner, next to the ledger.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from spendgate import fsutil
from spendgate.fsutil import discovery_path  # noqa: F401  (re-exported: gateway, scripts)
from spendgate.web.app import StreamBody, WebRequest
from spendgate.web.caller import ApiError, Caller

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, str], "Caller"], Any]
IDLE_SECONDS = 10  # a connection silent this long (idle keep-alive, half a request) is closed
STOP_WAIT = 5.0  # seconds stop() knocks for the serving thread before it closes the socket anyway
MAX_CONNECTIONS = 512  # connections served at once (a thread each); more are answered 503 and closed
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 5\r\n\r\n"


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS of them: idle or half-sent connections must
    not pile up threads and descriptors until the proxy itself cannot accept (ninth review, N8)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class AdminServer:
    def __init__(
        self,
        routes: dict[str, Handler],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        post_routes: dict[str, Handler] | None = None,
    ) -> None:
        self.routes = routes
        self.post_routes = post_routes or {}
        self.app: Any = None  # a spendgate.web.app.WebApp: when set, it answers every request (dashboard + API)
        self.token = token or secrets.token_urlsafe(32)
        self.httpd = _BoundedHTTPServer((host, port), self._handler_class())
        # no poll interval: the thread sleeps until a connection comes (socketserver's default
        # woke it twice a second to look for a shutdown, ~0.25 ms of CPU a second at rest); stop() knocks
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": None},
                                       name="spendgate-admin", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> AdminServer:
        self.thread.start()
        return self

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Stop serving and close the socket. The serving thread looks for the shutdown only when a
        connection wakes it, so stop() connects until it has seen it (the first knock may come
        before `shutdown` has asked; a later one does not). Past `timeout` seconds (where neither a
        knock nor shutting the socket down wakes it) the socket is closed anyway and the thread, a
        daemon, left asleep."""
        if self.thread.is_alive():
            asking = threading.Thread(target=self.httpd.shutdown, daemon=True)  # asks, then waits for the loop
            asking.start()
            deadline = time.monotonic() + timeout
            while self.thread.is_alive() and time.monotonic() < deadline:
                try:
                    socket.create_connection(self.httpd.server_address[:2], timeout=1.0).close()
                except OSError:  # no descriptor left, a connect refused: wake it without one (Linux
                    try:  # wakes a select on a listening socket shut down; elsewhere, knock again)
                        self.httpd.socket.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self.thread.join(0.05)
            if self.thread.is_alive():
                log.warning("spendgate: the admin server did not stop within %.0f s; closing its socket", timeout)
            asking.join(0.1)
        self.httpd.server_close()

    def write_discovery(self, path: Path) -> None:
        """Tell local CLIs where we are and the token; owner-only permissions, atomically."""
        fsutil.write_atomic(path, json.dumps({"url": self.url, "token": self.token, "pid": os.getpid()}).encode())

    def authenticate(self, header: str) -> Caller | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode()):
            return Caller("admin", admin=True, source="admin-token")
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IDLE_SECONDS

            def log_message(self, fmt: str, *args: Any) -> None:  # keep tokens and paths out of stderr
                log.debug("admin api: " + fmt, *args)

            def do_GET(self) -> None:
                self._dispatch(server.routes)

            def do_POST(self) -> None:
                self._dispatch(server.post_routes)

            def _dispatch(self, routes: dict[str, Handler]) -> None:
                if server.app is not None:
                    self._web()
                    return
                url = urlsplit(self.path)
                params = dict(parse_qsl(url.query))
                caller = server.authenticate(self.headers.get("Authorization", ""))
                try:
                    if caller is None:
                        raise ApiError(401, "missing or wrong admin token")
                    handler = routes.get(url.path)
                    if handler is None:
                        raise ApiError(404, f"no such endpoint {url.path}")
                    length = int(self.headers.get("Content-Length") or 0)
                    if length:
                        body = json.loads(self.rfile.read(length) or b"{}")
                        params.update({k: v for k, v in body.items()})
                    self._send(200, handler(params, caller))
                except ApiError as e:
                    self._send(e.status, {"error": str(e)})
                except (ValueError, KeyError) as e:
                    self._send(400, {"error": str(e)})
                except Exception as e:
                    log.exception("admin api %s failed", url.path)
                    self._send(500, {"error": f"{type(e).__name__}: {e}"})

            def _web(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                limit = server.app.body_limit(self.path, self.headers)
                if length > limit:  # never read (or hold) a body this large: answer and hang up
                    self.close_connection = True
                    self._send(413, {"error": f"request body over {limit} bytes"})
                    return
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                resp = server.app.handle(WebRequest(self.command, self.path, headers, body))
                stream = resp.body if isinstance(resp.body, StreamBody) else None
                try:
                    self.send_response(resp.status)
                    for k, v in resp.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(stream.length if stream else len(resp.body)))
                    self.end_headers()
                    if stream is None:
                        self.wfile.write(resp.body)
                    else:  # an export: chunk by chunk from its temp file
                        for chunk in stream.chunks:
                            self.wfile.write(chunk)
                finally:
                    if stream is not None:
                        stream.close()

            def _send(self, status: int, payload: Any) -> None:
                body = json.dumps(payload, default=str).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return _Handler
