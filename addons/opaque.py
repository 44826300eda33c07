"""Count connections to opaque AI hosts (Cursor's *.cursor.sh, the policy's `opaque_hosts`).

Loaded from addons/gateway.py. Hosts outside `allow_hosts` become raw TLS tunnels that mitmproxy
relays without a flow object, so no hook would see them. Script addons see `next_layer` before
mitmproxy's own NextLayer addon, so for opaque hosts only we choose the same relay ourselves, with
a TCP flow kept: still never decrypted (the client sees the origin's certificate), but
`tcp_message` now counts bytes and `tcp_end` reports the connection. Message contents are dropped
once counted, so memory stays flat on long connections. The recording itself is `spendgate.metering.opaque.OpaqueRecorder` (queue + writer thread).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mitmproxy import ctx as mitmctx
from mitmproxy import http, tcp
from mitmproxy.proxy import layer as _layer
from mitmproxy.proxy.layers import TCPLayer
from mitmproxy.proxy.layers.tls import parse_client_hello

from spendgate.metering import opaque

log = logging.getLogger("spendgate.metering.opaque")

META = "spendgate.metering.opaque"


@dataclass
class _Stats:
    host: str
    port: int
    user: str
    identity_source: str
    workspace: str | None
    started: float = field(default_factory=time.time)
    up: int = 0
    down: int = 0


def _sni(data: bytes) -> str | None:
    try:
        hello = parse_client_hello(data)
    except (ValueError, Exception):  # not TLS, or a partial hello: the CONNECT host will do
        return None
    return hello.sni if hello else None


def _allowed(host: str, port: int) -> bool:
    """Does the operator's allow_hosts ask to decrypt this host?"""
    return any(re.search(rex, f"{host}:{port}", re.IGNORECASE) for rex in mitmctx.options.allow_hosts)


class OpaqueCounter:
    def __init__(self, gateway: Callable[[], object | None]) -> None:
        self._gateway = gateway  # the running spendgate.gateway.Gateway, or None
        self._auth: dict[str, str] = {}  # client connection id -> proxy-auth user from its CONNECT
        self._live: dict[str, _Stats] = {}  # flow id -> stats of connections still open

    def http_connect(self, flow: http.HTTPFlow) -> None:
        auth = flow.metadata.get("proxyauth")
        if auth:
            self._auth[flow.client_conn.id] = auth[0]

    def client_disconnected(self, client) -> None:
        self._auth.pop(client.id, None)

    def next_layer(self, nextlayer: _layer.NextLayer) -> None:
        """An ignored (tunnelled) connection to an opaque host: relay it with a flow we can count."""
        gw = self._gateway()
        lay = nextlayer.layer
        if gw is None or (lay is not None and not (isinstance(lay, TCPLayer) and lay.flow is None)):
            return  # another layer was chosen (or a flow exists already): not ours
        context = nextlayer.context
        address = context.server.address
        if not address or context.client.tls_established:
            return  # the proxy's own hop (the CONNECT request), or already inside decrypted TLS
        host = _sni(nextlayer.data_client()) or context.client.sni or str(address[0])
        pats = opaque.patterns(gw.policy.raw)
        if not (opaque.is_opaque(host, pats) or opaque.is_opaque(str(address[0]), pats)):
            return
        if _allowed(host, int(address[1])):
            return  # the operator chose to decrypt this host (allow_hosts): it is metered, not opaque
        counted = TCPLayer(context, ignore=False)
        ident = gw.identify({}, "", self._auth.get(context.client.id),
                            context.client.peername[0] if context.client.peername else None)  # fmt: skip
        counted.flow.metadata[META] = _Stats(host.lower(), int(address[1]), ident.user, ident.source,
                                             ",".join(ident.workspaces) or None)  # fmt: skip
        self._live[counted.flow.id] = counted.flow.metadata[META]
        nextlayer.layer = counted

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        st: _Stats | None = flow.metadata.get(META)
        if st is None or not flow.messages:
            return
        m = flow.messages[-1]  # hooks run once per message: count the newest
        if m.from_client:
            st.up += len(m.content)
        else:
            st.down += len(m.content)
        # keep memory flat: drop what was counted, but leave the newest for addons after us (dumper)
        del flow.messages[:-1]

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self._finish(flow, "closed")

    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self._finish(flow, f"error: {flow.error.msg if flow.error else 'unknown'}"[:200])

    def _finish(self, flow: tcp.TCPFlow, outcome: str) -> None:
        st: _Stats | None = flow.metadata.pop(META, None)
        self._live.pop(flow.id, None)
        if st is not None:
            self._record(st, outcome)

    def done(self) -> None:
        """Shutting down (this addon's done runs before the gateway closes): record open tunnels too."""
        for st in list(self._live.values()):
            self._record(st, "open at shutdown")
        self._live.clear()

    def _record(self, st: _Stats, outcome: str) -> None:
        gw = self._gateway()
        if gw is None:
            return
        now = time.time()
        gw.opaque.record(opaque.OpaqueConnection(
            ts=datetime.fromtimestamp(st.started, UTC), ended_at=datetime.fromtimestamp(now, UTC), host=st.host,
            port=st.port, user=st.user, identity_source=st.identity_source, workspace=st.workspace,
            client=opaque.client_of(st.host), bytes_up=st.up, bytes_down=st.down,
            duration_ms=round((now - st.started) * 1000, 3), outcome=outcome,
        ))  # fmt: skip
