"""`spendgate_central*` options (and the MDM site config's `gateway:` keys) -> CentralSettings."""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
import socket
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spendgate.central.uplink import CentralSettings

_ID = re.compile(r"[^A-Za-z0-9._:@-]")
# Windows reports every readable file as 0o666 (its st_mode mirrors only the read-only flag): the
# group/other bits say nothing there, and checking them refused every token file, so a Windows
# laptop with `gateway.central` never started (third attacker review A7). There the file's ACL
# (set by the MDM) is what protects it.
_POSIX_MODES = os.name != "nt"


def default_gateway_id() -> str:
    """user@host: stable across restarts, readable in the centre's reports."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "user"
    return _ID.sub("-", f"{user}@{socket.gethostname()}")[:128]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def central_settings(opts: Any) -> CentralSettings | None:
    """None without `spendgate_central`; ValueError (the message says what to fix) on a bad value."""
    url = (opts.spendgate_central or "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"spendgate_central must be an http(s):// URL of the central gateway's API, not {url!r}")
    if parts.username or parts.password:
        raise ValueError("spendgate_central must not carry credentials; put the token in spendgate_central_token_file")
    proxy = (opts.spendgate_central_proxy or "").strip() or None
    if parts.scheme == "http" and (proxy or not _loopback(parts.hostname)):
        # the user's token would cross the network in clear text every few seconds (through a proxy too:
        # a plain-http request through a proxy is read by the proxy and everyone on the way to it)
        raise ValueError(f"spendgate_central {url!r}: use https:// (plain http only to a centre on this machine, "
                         "reached directly); through a proxy the uplink always tunnels (CONNECT) to an https centre")
    if proxy:
        p = urlsplit(proxy)
        if p.scheme != "http" or not p.hostname:
            raise ValueError(f"spendgate_central_proxy must be an http://host:port proxy, not {proxy!r}")
        if (p.username or p.password) and not _loopback(p.hostname):
            # a CONNECT request is plain text: its Proxy-Authorization would cross the network in clear
            raise ValueError("spendgate_central_proxy must not carry credentials (they would be sent in clear text "
                             "before the tunnel); use a proxy that lets the laptop CONNECT to the centre")
    if not opts.spendgate_central_token_file:
        raise ValueError("spendgate_central needs spendgate_central_token_file (the user's spendgate token, issued "
                         "on the centre with `spendgate tokens issue USER`)")
    token_file = Path(opts.spendgate_central_token_file).expanduser()
    try:
        st = token_file.stat()
    except OSError as e:
        raise ValueError(f"spendgate_central_token_file {token_file}: {e.strerror or e}") from None
    if _POSIX_MODES and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"spendgate_central_token_file {token_file} is readable by others; chmod 600 it")
    gid = (opts.spendgate_central_id or "").strip() or default_gateway_id()
    if _ID.search(gid) or len(gid) > 128:
        raise ValueError("spendgate_central_id: at most 128 letters, digits and ._:@-")
    try:  # mitmproxy options have no float type: numbers arrive as text
        interval, lease = float(opts.spendgate_central_interval), Decimal(str(opts.spendgate_central_lease))
    except (ValueError, ArithmeticError):
        interval, lease = -1.0, Decimal(-1)
    if not 0 < interval <= 3600 or not lease.is_finite() or lease < 0:
        raise ValueError("spendgate_central_interval must be seconds > 0 and spendgate_central_lease USD >= 0")
    return CentralSettings(url=url, token_file=token_file, gateway_id=gid,
                           proxy=proxy,
                           interval=interval, lease_usd=lease)
