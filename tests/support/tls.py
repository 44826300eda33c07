"""TLS for clients that read in one thread while they write in another (websockets' sync client).

OpenSSL's SSL object is not safe for SSL_read and SSL_write at the same time, and CPython's `ssl`
does not serialize them (python/cpython#143756, #151508; 3.13.6 added a lock that deadlocked,
#137583, and 3.13.7 took it out again). websockets' sync client does exactly that: a background
thread sits in `recv` while the caller's thread `sendall`s. Through the gateway, the TLS 1.3
session tickets mitmproxy sends right after the handshake meet the client's first write; about
one handshake in fifteen here then either failed with ``[SSL] internal error`` or lost the
upgrade request, so the client waited for a response that was never asked for.

`serialized(ctx)` is passed where such a client takes an `ssl.SSLContext` (`ssl=`); every OpenSSL
call then runs under one lock per socket, and a reader waits for bytes outside it, so a writer
is never held up by a reader that has nothing to read.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from typing import Any


class SerializedSocket:
    """An `ssl.SSLSocket` whose reads and writes never overlap (the methods websockets uses)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._timeout: float | None = sock.gettimeout()

    def settimeout(self, value: float | None) -> None:
        self._timeout = value
        with self._lock:
            self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._timeout

    def _wait(self, for_write: bool, deadline: float | None) -> None:
        """Until the socket is ready (outside the lock); TimeoutError past the deadline."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError("timed out")
        r, w = ([], [self._sock]) if for_write else ([self._sock], [])
        select.select(r, w, [], 0.05 if left is None else min(left, 0.05))

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def recv(self, size: int) -> bytes:
        deadline = self._deadline()
        while True:
            with self._lock:
                pending = self._sock.pending()
            if not pending:
                self._wait(False, deadline)
            with self._lock:
                self._sock.setblocking(False)
                try:
                    return self._sock.recv(size)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                finally:
                    self._sock.settimeout(self._timeout)
            self._wait(False, deadline)

    def sendall(self, data: bytes) -> None:
        view, deadline = memoryview(data), self._deadline()
        while view:
            with self._lock:
                self._sock.setblocking(False)
                try:
                    view = view[self._sock.send(view):]
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                    pass
                finally:
                    self._sock.settimeout(self._timeout)
            if view:
                self._wait(True, deadline)

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def shutdown(self, how: int) -> None:
        with self._lock:
            self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()

    def __getattr__(self, name: str) -> Any:  # fileno, getpeername, getsockname, setsockopt, ...
        return getattr(self._sock, name)


class SerializedContext:
    """Stands in for an `ssl.SSLContext` where a client calls `wrap_socket` on it."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx

    def wrap_socket(self, sock: socket.socket, **kw: Any) -> SerializedSocket:
        return SerializedSocket(self.ctx.wrap_socket(sock, **kw))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ctx, name)


def serialized(ctx: ssl.SSLContext) -> Any:
    """`ctx` for websockets' sync client (its `ssl=` argument): see the module docstring."""
    return SerializedContext(ctx)
