"""mitmproxy addon: spendgate tokens as proxy credentials, through mitmproxy's own proxyauth.

With `--set spendgate_proxy_tokens=true` every client must send `Proxy-Authorization: Basic
USER:TOKEN`, where TOKEN is a live token `spendgate tokens issue USER` made (stored hashed in
`<db>.tokens`). We do not reimplement the protocol: mitmproxy's proxyauth addon keeps parsing the
header, answering 407, remembering authenticated CONNECT tunnels and stripping the header; we only
give it a validator. A credential source set with mitmproxy's `proxyauth` option (an htpasswd
file, LDAP, user:pass) keeps working beside the tokens; `proxyauth=any` does not (it accepts any
password, so it would let any name through).

Without tokens, `proxyauth=any` names are client-chosen: the gateway then treats `proxy_auth` as
asserted (believed only from `trusted_proxies`) and says so in the log.

A token revoked or expired while a connection is open is refused on the next request (mitmproxy
only checks credentials once per CONNECT tunnel).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import ctx, http
from mitmproxy.addons import proxyauth

log = logging.getLogger("spendgate")

_UNSET = object()


class TokenValidator(proxyauth.Validator):
    """spendgate tokens first, then the operator's own mitmproxy credential source (if any)."""

    def __init__(self, verify: Callable[[str, str], bool], base: proxyauth.Validator | None) -> None:
        self.verify = verify
        self.base = base

    def __call__(self, username: str, password: str) -> bool:
        if self.verify(username, password):
            return True
        return bool(self.base and self.base(username, password))


class ProxyTokens:
    def __init__(self, gate) -> None:
        self.gate = gate  # the SpendGate addon, which owns the Gateway (and its TokenStore)
        self._base: object = _UNSET  # the validator mitmproxy's proxyauth made from its option

    def load(self, loader) -> None:
        loader.add_option(
            "spendgate_proxy_tokens", bool, False,
            "require proxy credentials: user = a user, password = their spendgate token "
            "(spendgate tokens issue USER); mitmproxy's own proxyauth source is accepted too",
        )  # fmt: skip

    def _verify(self, username: str, password: str) -> bool:
        gw = self.gate.gateway
        return gw is not None and gw.tokens.verify(password, username) is not None

    def configure(self, updated: set[str]) -> None:
        pa = ctx.master.addons.get("proxyauth")
        if pa is None:
            return
        if "proxyauth" in updated or self._base is _UNSET:
            self._base = pa.validator  # mitmproxy's configure ran first (built-in addons load before scripts)
        base = self._base if isinstance(self._base, proxyauth.Validator) else None
        accept_all = isinstance(base, proxyauth.AcceptAll)
        if ctx.options.spendgate_proxy_tokens:
            pa.validator = TokenValidator(self._verify, None if accept_all else base)
            verified = True
        else:
            pa.validator = base
            verified = not accept_all
            if accept_all:
                log.warning("spendgate: proxyauth=any accepts every password, so proxy user names are chosen by "
                            "clients: proxy_auth is believed only from trusted_proxies (use spendgate_proxy_tokens)")
        self.gate.proxy_verified = verified
        if self.gate.gateway is not None:
            self.gate.gateway.proxy_verified = verified

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A spendgate token that stopped being valid mid-connection: refuse, 407 like at CONNECT."""
        auth = flow.metadata.get("proxyauth")
        gw = self.gate.gateway
        if not auth or gw is None or flow.response:
            return
        rec = gw.tokens.lookup(auth[1])
        if rec is not None and gw.tokens.verify(auth[1], auth[0]) is None:
            flow.response = http.Response.make(
                407, b"spendgate: this proxy token was revoked or has expired; ask for a new one\n",
                {"Proxy-Authenticate": f'Basic realm="{proxyauth.REALM}"', "content-type": "text/plain"})
