"""Which proxy our own HTTP clients use, decided in one place.

Every outbound call spendgate makes (the CLI to the gateway's admin API, alert sinks, the
provider cost-report fetch of `spendgate reconcile fetch`, `spendgate prices update`) opens its
connection through `opener_for(url)`:

* loopback targets (127.0.0.0/8, ::1, localhost) never go through a proxy. Managed machines set
  HTTP_PROXY/HTTPS_PROXY for everything, often pointing at this very gateway, and a proxy cannot
  reach our loopback admin API on the caller's behalf (it answered 404 in the field);
* every other host uses the environment's proxies (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY,
  as urllib reads them): corporate networks often reach Slack or a provider's admin API only
  through their proxy.

`proxy_for(url)` says which proxy a call uses, for logs and `spendgate doctor`-style output.
"""

from __future__ import annotations

import ipaddress
import urllib.request
from urllib.parse import urlsplit

DIRECT = "direct"


def is_loopback(host: str | None) -> bool:
    """True for localhost names and loopback addresses (IPv4 127/8, IPv6 ::1)."""
    host = (host or "").strip().strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_for(url: str) -> str:
    """The proxy URL a request to `url` goes through, or "direct"."""
    parts = urlsplit(url)
    if is_loopback(parts.hostname):
        return DIRECT
    proxies = urllib.request.getproxies()
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return DIRECT
    return proxies.get(parts.scheme) or proxies.get("all") or DIRECT


def opener_for(url: str) -> urllib.request.OpenerDirector:
    """A urllib opener for `url`: no proxy for loopback, the environment's proxies otherwise."""
    if is_loopback(urlsplit(url).hostname):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()  # the default ProxyHandler reads the environment


def open_url(req: urllib.request.Request | str, timeout: float):
    """`urlopen` with the proxy decision above (raises what urlopen raises)."""
    url = req.full_url if isinstance(req, urllib.request.Request) else req
    return opener_for(url).open(req, timeout=timeout)
