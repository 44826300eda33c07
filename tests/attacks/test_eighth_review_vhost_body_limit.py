"""Eighth review: the dashboard's virtual host reads and parses request bodies of any size.

The second review bounded what the admin API reads before it knows who is asking
(`web.server.body_limit`: 64 KiB without credentials, the route's own limit, at most 64 MiB) on
the loopback admin port. The same app is served through the proxy on `http://spendgate.local/`
(addons/dashboard_host.py), where no bound applies: mitmproxy buffers the whole body (no
`body_size_limit` in laptop mode; 4 x spendgate_max_request_bytes = 128 MiB on a providers-only
central gateway), then `WebApp._login` parses it (`json.loads` / `parse_qsl` of the decoded
text) before checking any token. Anyone who can reach the proxy (every allowed client network;
with proxy tokens, any engineer) can make the company's gateway hold several times each body in
memory, on the worker threads that also run admission (asyncio.to_thread).

Real mitmdump with the addon (laptop mode, loopback), a plain HTTP client through its proxy port.
"""

from __future__ import annotations

import httpx2
import pytest

from tests.support.gateway import providerless

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PROXY_PORT, ADMIN_PORT = 19171, 19172
ANONYMOUS_LIMIT = 64 * 1024  # what the admin port reads from a caller without credentials


@pytest.fixture
def gw(tmp_path):
    # the virtual host is answered by the proxy itself: no upstream provider is needed
    yield from providerless(tmp_path / "gw", PROXY_PORT, ADMIN_PORT, log_tail=4000)


def test_the_virtual_host_refuses_a_large_anonymous_body_like_the_admin_port(gw):
    big = b"token=" + b"A" * (2 * 1024 * 1024)  # 2 MiB, no credentials
    # the loopback admin port: refused before the body is read
    with httpx2.Client(trust_env=False, timeout=30) as c:
        r = c.post(f"http://127.0.0.1:{ADMIN_PORT}/login", content=big,
                   headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
    # the same app through the proxy: read whole and parsed, then "wrong admin token"
    with httpx2.Client(proxy=gw.proxy_url, trust_env=False, timeout=60) as c:
        r = c.post("http://spendgate.local/login", content=big,
                   headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413, f"spendgate.local read and parsed a {len(big)}-byte anonymous body: " \
                                     f"{r.status_code} {r.text[:120]}"


def test_the_virtual_host_refuses_a_chunked_body_it_cannot_bound_before_reading(gw):
    def chunks():
        for _ in range(64):
            yield b"A" * 65536  # 4 MiB, no Content-Length

    with httpx2.Client(proxy=gw.proxy_url, trust_env=False, timeout=60) as c:
        r = c.post("http://spendgate.local/login", content=chunks(),
                   headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 411, (r.status_code, r.text[:120])
        small = c.post("http://spendgate.local/login", content=b"token=wrong",
                       headers={"content-type": "application/x-www-form-urlencoded"})
        assert small.status_code == 401  # a small body is still read and answered by the app
