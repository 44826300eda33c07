"""mitmproxy addon: keep the gateway from being an open relay, and answer the identity echo.

Loaded through addons/gateway.py (listed before the metering addon). Options:
  spendgate_allow_clients  comma-separated client networks; others are disconnected on connect
  spendgate_providers_only refuse to tunnel anything but provider hosts (central gateways)

Every decision uses the connection's real target (CONNECT authority, absolute-form host, server
address; the TLS SNI when the client connected by IP), never the Host header. A request whose
Host header or SNI names another host than its target, where a provider is involved, is refused
(421, in the provider's error shape). The target is left in flow.metadata["spendgate.target"]
for the metering addon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import connection, ctx, exceptions, http

from mitmproxy.proxy.mode_specs import ReverseMode

from spendgate import access
from spendgate.budgets import refusal
from spendgate.gateway import Gateway
from spendgate.metering.providers import route

log = logging.getLogger("spendgate.access")

TARGET = "spendgate.target"  # flow.metadata key: the access.Target of a request


def target_of(flow: http.HTTPFlow) -> access.Target:
    """Where this request really goes (see spendgate.access.real_target); cached per flow."""
    t = flow.metadata.get(TARGET)
    if t is None:
        req = flow.request
        reverse = isinstance(getattr(flow.client_conn, "proxy_mode", None), ReverseMode)
        sni = None if reverse or req.method == "CONNECT" or not flow.client_conn.tls else flow.client_conn.sni
        t = access.real_target(req.host, sni, req.host_header)
        flow.metadata[TARGET] = t
    return t


def _provider_of(flow: http.HTTPFlow, t: access.Target) -> str:
    """The provider whose error shape a refusal uses (target first, else the claimed Host)."""
    claimed = access.real_target(flow.request.host_header or "").host
    found = route(t.host, flow.request.path) or route(claimed, flow.request.path)
    return found.dialect if found else "openai"


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

    def client_connected(self, client: connection.Client) -> None:  # noqa: D102
        ip = client.peername[0] if client.peername else ""
        if not access.client_allowed(ip, self.nets):
            log.warning("spendgate: refused a connection from %s (not in spendgate_allow_clients)", ip)
            client.error = "spendgate: client network not allowed"

    def _refuse_host(self, flow: http.HTTPFlow) -> bool:
        t = target_of(flow)
        if t.misdirected:
            log.warning("spendgate: refused a misdirected request from %s: %s", _peer(flow), t.misdirected)
            if flow.request.method == "CONNECT":
                flow.response = http.Response.make(421, f"spendgate: {t.misdirected}\n".encode(),
                                                   {"content-type": "text/plain"})
            else:
                a = refusal.refused(_provider_of(flow, t), 421, f"spendgate: {t.misdirected}", "misdirected_request")
                flow.response = http.Response.make(a.status, a.body, a.headers)
            return True
        if not ctx.options.spendgate_providers_only or access.is_whoami(t.host):
            return False
        if not access.is_ip_literal(t.host) and route(t.host, "/") is not None:
            return False
        flow.response = http.Response.make(403, b"spendgate: this gateway only carries AI provider traffic\n",
                                           {"content-type": "text/plain"})
        return True

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._refuse_host(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # before the body is read: a refused request is not worth buffering
        if not flow.response:
            self._refuse_host(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or self._refuse_host(flow) or not access.is_whoami(target_of(flow).host):
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


def _peer(flow: http.HTTPFlow) -> str:
    return flow.client_conn.peername[0] if flow.client_conn.peername else "?"
