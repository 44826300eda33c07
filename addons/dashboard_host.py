"""The dashboard on a virtual host through the proxy: http://spendgate.local/ (like mitm.it).

An engineer whose client already uses the gateway as its proxy opens the dashboard without a
token: the request is identified like their provider traffic, but from authenticating sources
only (proxy credentials, API key mapping, client IP map, the local user of a laptop gateway;
never a header a client sets, not even from a trusted proxy), and they see their own spend.
Approvers decide with their proxy credentials (spendgate tokens). Admins log in with a token.
The app runs on its own few threads: DuckDB work never touches the event loop, and a flood of
slow dashboard queries never holds the threads admission runs on (asyncio.to_thread's pool).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from mitmproxy import ctx, http

from spendgate.policy.model import UNATTRIBUTED
from spendgate.web.app import ANONYMOUS_BODY_BYTES, WebRequest
from spendgate.web.caller import Caller

log = logging.getLogger("spendgate")

META = "spendgate.web.app"
WEB_THREADS = 4  # dashboard requests answered at once; the others wait their turn
MAX_WAITING = 64  # beyond this many in hand (running or waiting), 503 at once: bounded memory


class DashboardHost:
    def __init__(self, gate) -> None:
        self.gate = gate  # the SpendGate addon, which owns the Gateway
        self._pool = ThreadPoolExecutor(WEB_THREADS, thread_name_prefix="spendgate-web")
        self._in_hand = 0  # touched on the event loop only

    def load(self, loader) -> None:
        loader.add_option(
            "spendgate_dashboard_host", str, "spendgate.local",
            "host name that serves the dashboard through the proxy (plain http; empty: off)",
        )  # fmt: skip

    @staticmethod
    def _ours(flow: http.HTTPFlow) -> bool:
        host = ctx.options.spendgate_dashboard_host
        # the request line's host (absolute-form), never the Host header: decisions follow the real target
        return bool(host) and not flow.response and flow.request.host.lower() == host.lower()

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Refuse a body over the bound from its headers, as the admin port does (WebApp.body_limit:
        64 KiB unless a credential checks out now, the route's own limit otherwise), so the app
        never parses it (eighth review, E3; ninth, N2). mitmproxy still reads a refused body
        before its answer goes out (a killed connection's socket stays open while body bytes are
        pending, measured on mitmproxy 12): what it reads is bounded by `body_size_limit` on a
        central gateway (as for provider traffic), and only local clients reach a laptop's proxy."""
        if not self._ours(flow):
            return
        req, gw = flow.request, self.gate.gateway
        limit = ANONYMOUS_BODY_BYTES
        if gw is not None and ("cookie" in req.headers or "authorization" in req.headers):
            # checking a credential may read the admin token file: on the dashboard's threads
            limit = await asyncio.get_running_loop().run_in_executor(self._pool, gw.web.body_limit, req.path,
                                                                     req.headers.copy())
        close = {"Content-Type": "text/plain", "Connection": "close"}
        length = req.headers.get("content-length", "0").strip()
        if "transfer-encoding" in req.headers:  # no length to check before reading: the app's clients send one
            flow.response = http.Response.make(411, b"spendgate.local needs a Content-Length", close)
        elif not length.isdigit() or int(length) > limit:
            flow.response = http.Response.make(413, f"spendgate.local reads at most {limit} bytes here".encode(), close)
        if flow.response:
            flow.metadata[META] = True

    async def request(self, flow: http.HTTPFlow) -> None:
        gw = self.gate.gateway
        if not self._ours(flow):
            return
        flow.metadata[META] = True
        if gw is None:
            flow.response = http.Response.make(503, b"spendgate is starting", {"Content-Type": "text/plain"})
            return
        req = flow.request
        headers = {k.lower(): v for k, v in req.headers.items()}
        auth = flow.metadata.get("proxyauth")
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
        ident = gw.identify(headers, req.path.partition("?")[2], proxy_user=auth[0] if auth else None, client_ip=peer,
                            authenticating_only=True)
        ambient = Caller(ident.user, admin=False, source=ident.source) if ident.user != UNATTRIBUTED else None
        headers.pop("proxy-authorization", None)
        web_req = WebRequest(req.method, req.path, headers, req.raw_content or b"", ambient)
        if self._in_hand >= MAX_WAITING:
            flow.response = http.Response.make(503, b"spendgate.local is busy; try again shortly",
                                               {"Content-Type": "text/plain", "Retry-After": "5"})
            return
        self._in_hand += 1
        try:
            # an export's streamed body is read whole in the worker thread (mitmproxy's Response wants bytes)
            resp = await asyncio.get_running_loop().run_in_executor(self._pool, lambda: gw.web.handle(web_req).buffered())
        finally:
            self._in_hand -= 1
        flow.response = http.Response.make(resp.status, resp.body, resp.headers)

    def done(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
