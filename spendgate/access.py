"""Who may use the gateway, and the identity echo `spendgate doctor` asks for.

A central gateway must not be an open relay: connections from outside the configured client
networks are dropped before any byte is read (addons/access.py calls `client_allowed` from
mitmproxy's client_connected hook). Pure functions; no mitmproxy here.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass

from spendgate.deploy.pac import WHOAMI_HOST
from spendgate.identity import Identity
from spendgate.metering.providers import hosts_generation, normalize_host, provider_of_host

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str) -> tuple[Network, ...]:
    """'10.0.0.0/8, 192.168.1.7' -> networks; empty means no restriction. Raises ValueError."""
    nets = []
    for part in (p.strip() for p in spec.split(",")):
        if part:
            try:
                nets.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"spendgate_allow_clients: {part!r} is not an IP network (e.g. 10.0.0.0/8)") from None
    return tuple(nets)


def client_allowed(peer_ip: str, nets: Sequence[Network]) -> bool:
    """True when no list is set or the peer is in it (IPv4-mapped IPv6 counts as IPv4)."""
    if not nets:
        return True
    try:
        addr = ipaddress.ip_address(peer_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def is_whoami(host: str) -> bool:
    return host.lower().rstrip(".") == WHOAMI_HOST


def whoami_body(identity: Identity, client_ip: str | None) -> bytes:
    """What the gateway would charge this caller to; no key, only its fingerprint."""
    return json.dumps({
        "user": identity.user, "source": identity.source, "client": identity.client,
        "key_fingerprint": identity.key_fingerprint, "workspaces": list(identity.workspaces),
        "client_ip": client_ip,
    }).encode()


# -- the real destination (docs/security.md "Network paths, bounds and files") --------------------
#
# Decisions (providers-only, routing, metering) use where the connection really goes: the CONNECT
# authority, the absolute-form target or the server address mitmproxy connects to, and for TLS
# the SNI the client asked for when it connected by IP (mitmproxy verifies the upstream
# certificate against that name). The Host header is the client's claim; it is only compared.


def is_ip_literal(host: str) -> bool:
    """True for 10.0.0.1, ::1, [::1]:443 and the like (what a providers-only gateway refuses)."""
    h = (host or "").strip()
    if h.startswith("["):
        h = h[1:].split("]", 1)[0]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    try:
        ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _name(host: str | None) -> str:
    h = (host or "").strip()
    if is_ip_literal(h):
        return h[1:].split("]", 1)[0] if h.startswith("[") else (h.split(":", 1)[0] if h.count(":") == 1 else h)
    return normalize_host(h)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request really goes, and why it must be refused if its names disagree."""

    host: str  # lower-case name or IP, no port: what routing and access rules see
    misdirected: str | None = None  # a sentence, when the Host header or SNI names another host


def real_target(authority: str, sni: str | None = None, host_header: str | None = None) -> Target:
    """The decision host for a request and whether its claims agree with it.

    `authority`: the connection's target (CONNECT authority, absolute-form host, server address);
    `sni`: the TLS server name of the client connection (None for plain HTTP or reverse mode);
    `host_header`: Host / :authority as sent. When a provider host is involved on any side, all
    names present must agree; otherwise the request is misdirected (refused, never forwarded).
    Asked per request for the same few names: answers for names of DNS length are cached (the
    cache follows changes of the provider host table).
    """
    if len(authority or "") <= _NAME_MAX and len(sni or "") <= _NAME_MAX and len(host_header or "") <= _NAME_MAX:
        return _cached_target(authority, sni, host_header, hosts_generation())
    return _real_target(authority, sni, host_header)


_NAME_MAX = 300  # longer claims (no real host name is) are computed each time, never kept


@functools.lru_cache(maxsize=4096)
def _cached_target(authority: str, sni: str | None, host_header: str | None, _generation: int) -> Target:
    return _real_target(authority, sni, host_header)


def _real_target(authority: str, sni: str | None, host_header: str | None) -> Target:
    auth = _name(authority)
    tls = _name(sni) if sni else ""
    host = tls if tls and (is_ip_literal(auth) or not auth) else auth
    claimed = _name(host_header) if host_header else ""
    names = {n for n in (auth if not is_ip_literal(auth) else "", tls, claimed) if n}
    if any(provider_of_host(n) for n in names | {host}):
        others = sorted(n for n in names if n != host)
        if others:
            return Target(host, f"the request names {', '.join(others)} but its connection goes to {host}")
    return Target(host)


def is_central(
    *,
    mode: str = "auto",
    listen_hosts: Sequence[str] = (),
    allow_clients: Sequence[Network] = (),
    providers_only: bool = False,
    proxyauth: str = "",
) -> bool:
    """Central (serves other people) or laptop (one engineer's machine) mode.

    `spendgate_mode` central/laptop says so explicitly. `auto`: laptop only when every way in is
    this machine: each proxy server listens on a loopback address, no proxyauth, not
    providers-only, and spendgate_allow_clients (if set) lists loopback networks only.
    """
    if mode in ("central", "laptop"):
        return mode == "central"
    if providers_only or proxyauth:
        return True
    for h in listen_hosts:
        try:
            if not ipaddress.ip_address(h.strip("[]") or "0.0.0.0").is_loopback:
                return True
        except ValueError:
            if h.lower() != "localhost":
                return True
    return any(not n.is_loopback for n in allow_clients)
