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
from spendgate.web.app import WebRequest
from spendgate.web.caller import Caller
from spendgate.web.server import body_limit

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

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Bound the body before mitmproxy buffers it, as the admin port does (web.server.body_limit:
        64 KiB without credentials, the route's own limit otherwise): an anonymous caller must not
        make the gateway hold and parse megabytes on the threads admission shares (eighth review, E3)."""
        if not self._ours(flow):
            return
        req = flow.request
        limit = body_limit(req.path, req.headers)
        if "transfer-encoding" in req.headers:  # no length to check before reading: the app's clients send one
            flow.response = http.Response.make(411, b"spendgate.local needs a Content-Length", {"Content-Type": "text/plain"})
        elif (length := req.headers.get("content-length", "0").strip()).isdigit() and int(length) > limit:
            flow.response = http.Response.make(413, f"spendgate.local reads at most {limit} bytes here".encode(),
                                               {"Content-Type": "text/plain", "Connection": "close"})
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
