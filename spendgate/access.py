"""Who may use the gateway, and the identity echo `spendgate doctor` asks for.

A central gateway must not be an open relay: connections from outside the configured client
networks are dropped before any byte is read (addons/access.py calls `client_allowed` from
mitmproxy's client_connected hook). Pure functions; no mitmproxy here.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence

from spendgate.deploy.pac import WHOAMI_HOST
from spendgate.identity import Identity

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
