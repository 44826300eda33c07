"""mitmproxy addon: keep the gateway from being an open relay, and answer the identity echo.

Loaded through addons/gateway.py (listed before the metering addon). Options:
  spendgate_allow_clients  comma-separated client networks; others are disconnected on connect
  spendgate_providers_only refuse to tunnel anything but provider hosts (central gateways)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import connection, ctx, exceptions, http

from spendgate import access
from spendgate.gateway import Gateway
from spendgate.metering.providers import normalize_host, route

log = logging.getLogger("spendgate.access")


class Access:
    def __init__(self, gateway: Callable[[], Gateway | None]) -> None:
        self._gateway = gateway
        self.nets: tuple[access.Network, ...] = ()

    def load(self, loader) -> None:
        loader.add_option("spendgate_allow_clients", str, "",
                          "client networks allowed to connect, comma-separated CIDRs (empty: anyone mitmproxy admits)")
        loader.add_option("spendgate_providers_only", bool, False,
                          "refuse CONNECT and requests to hosts other than AI providers")

    def configure(self, updated: set[str]) -> None:
        if "spendgate_allow_clients" in updated:
            try:
                self.nets = access.parse_networks(ctx.options.spendgate_allow_clients)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None

    def client_connected(self, client: connection.Client) -> None:
        ip = client.peername[0] if client.peername else ""
        if not access.client_allowed(ip, self.nets):
            log.warning("spendgate: refused a connection from %s (not in spendgate_allow_clients)", ip)
            client.error = "spendgate: client network not allowed"

    def _refuse_host(self, flow: http.HTTPFlow) -> bool:
        host = normalize_host(flow.request.pretty_host)
        if not ctx.options.spendgate_providers_only or access.is_whoami(host) or route(host, "/") is not None:
            return False
        flow.response = http.Response.make(403, b"spendgate: this gateway only carries AI provider traffic\n",
                                           {"content-type": "text/plain"})
        return True

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._refuse_host(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or self._refuse_host(flow) or not access.is_whoami(flow.request.pretty_host):
            return
        gw = self._gateway()
        if gw is None:
            flow.response = http.Response.make(503, b'{"error": "gateway not ready"}', {"content-type": "application/json"})
            return
        auth = flow.metadata.get("proxyauth")
        ip = flow.client_conn.peername[0] if flow.client_conn.peername else None
        headers = {k.lower(): v for k, v in flow.request.headers.items()}
        identity = gw.identify(headers, flow.request.url.partition("?")[2], auth[0] if auth else None, ip)
        flow.response = http.Response.make(200, access.whoami_body(identity, ip),
                                           {"content-type": "application/json", "cache-control": "no-store"})
