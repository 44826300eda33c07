"""Ninth review: the login CSRF check refuses the dashboard's own sign-in form in real browsers.

`WebApp._login` (eighth review) refuses a POST whose `Origin` is present and is not the
dashboard's own host, and it counts `Origin: null` as foreign. But the page that holds the form
(`index.html`, `<form method="post" action="/login">`) is served with `Referrer-Policy:
no-referrer` (web.app.SECURITY_HEADERS), and for a form submission (a request whose mode is not
"cors") a browser serializes the origin under that policy as `null` (Fetch, "append a request
Origin header", step 3.1; Chrome and Firefox do so: rails/rails#28299, mdn/content#21932). So
the sign-in form answers every browser "sign in from the dashboard's own page", on
http://spendgate.local/ and on the loopback admin port alike: approvers and admins cannot sign
in by typing their token (only the `#token=` link works, because `fetch()` is a CORS-mode
request). The unit test passed because it posted `Origin: http://spendgate.local`, which no
browser sends from this page.

The fix must still refuse a foreign page: `Origin: https://evil.example`, and `Origin: null`
from a cross-site context (a sandboxed frame), which `Sec-Fetch-Site: cross-site` tells apart
from the same-origin form (`Sec-Fetch-Site: same-origin`), or a page referrer policy under which
the browser names its own origin.

Real mitmdump with the addon (laptop mode, loopback): the page and the form post as a browser
makes them, on the admin port and on spendgate.local through the proxy.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from tests.support.gateway import Gateway, providerless

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PROXY_PORT, ADMIN_PORT = 19240, 19241


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    yield from providerless(tmp_path_factory.mktemp("gw"), PROXY_PORT, ADMIN_PORT)


def admin_token(g: Gateway) -> str:
    return json.loads(Path(str(g.db) + ".gateway.json").read_text())["token"]


def form_origin(page_origin: str, referrer_policy: str, target_origin: str) -> str:
    """The `Origin` a browser sends with a form POST (mode "navigate", not "cors") from a page
    with this referrer policy (Fetch: append a request `Origin` header, step 3.1)."""
    policy = referrer_policy.split(",")[-1].strip().lower() or "strict-origin-when-cross-origin"
    if policy == "no-referrer":
        return "null"
    if policy in ("no-referrer-when-downgrade", "strict-origin", "strict-origin-when-cross-origin"):
        if page_origin.startswith("https:") and not target_origin.startswith("https:"):
            return "null"
    if policy == "same-origin" and page_origin != target_origin:
        return "null"
    return page_origin


def sign_in_as_a_browser(client: httpx2.Client, origin: str, token: str) -> httpx2.Response:
    page = client.get(f"{origin}/")
    assert b'action="/login"' in page.content  # the page holds the sign-in form
    return client.post(f"{origin}/login", content=f"name=&token={token}".encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Origin": form_origin(origin, page.headers.get("referrer-policy", ""), origin),
        "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document",
    })


def test_the_sign_in_form_works_on_the_admin_port(gw):
    origin = f"http://127.0.0.1:{ADMIN_PORT}"
    with httpx2.Client(trust_env=False, timeout=30) as c:
        r = sign_in_as_a_browser(c, origin, admin_token(gw))
        assert r.status_code == 303 and "spendgate_session=" in r.headers.get("set-cookie", ""), (
            f"a browser submitting the page's own form is refused: {r.status_code} {r.text[:100]}")
        # and login CSRF stays closed: a foreign page, or a sandboxed frame's null origin
        for origin_header, site in (("https://evil.example", "cross-site"), ("null", "cross-site")):
            x = c.post(f"{origin}/login", content=f"token={admin_token(gw)}".encode(), headers={
                "Content-Type": "application/x-www-form-urlencoded", "Origin": origin_header,
                "Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate"})
            assert x.status_code == 403, (origin_header, x.status_code)


def test_the_sign_in_form_works_on_spendgate_local(gw):
    with httpx2.Client(proxy=gw.proxy_url, trust_env=False, timeout=30) as c:
        r = sign_in_as_a_browser(c, "http://spendgate.local", admin_token(gw))
        assert r.status_code == 303 and "spendgate_session=" in r.headers.get("set-cookie", ""), (
            f"a browser submitting the page's own form is refused: {r.status_code} {r.text[:100]}")
