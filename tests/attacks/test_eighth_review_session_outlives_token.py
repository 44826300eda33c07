"""Eighth review: a dashboard session outlives the credential it was traded for.

POST /login trades a spendgate token (or an admin token) for a 12-hour `spendgate_session`
cookie. The session keeps only the Caller (name, admin, source), never which token made it, so:

* a person's token revoked with `spendgate tokens revoke` (docs/security.md: "a token revoked or
  expired while a connection is open is refused (407) on that connection's next request") still
  signs its browser session in for up to 12 hours; a revoked approver keeps approving;
* a token that expires in an hour gives a session of 12 hours;
* an admin token rotated out of `admin.token_file` ("re-read on every use so it can be rotated
  without a restart", docs/dashboard.md) keeps its organization-wide session for 12 hours.

Real components: the TokenStore file next to a ledger path, a policy file with
`admin.token_file`, and the WebApp with the wiring `web.app.for_gateway` uses (admin_tokens,
TokenStore.verify, the approver rule).
"""

from __future__ import annotations

import json
import textwrap
import time
from datetime import UTC, datetime, timedelta

from spendgate.policy.model import load
from spendgate.tokens import TokenStore, tokens_path
from spendgate.web.app import COOKIE, WebApp, WebRequest, admin_tokens, approvers, cookie_value
from spendgate.workflow.approvals import DECIDING_SOURCES

POLICY = """\
version: 1
timezone: UTC
organization: {name: acme, owners: [cfo@acme.com], budgets: {month: 1000}}
defaults:
  user: {day: 10}
approvals:
  organization: {approvers: [olivia@acme.com]}
admin:
  token_file: admin.token
"""


def _app(tmp_path):
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(POLICY))
    (tmp_path / "admin.token").write_text("admin-token-ONE\n")
    policy = load(tmp_path / "policy.yaml")
    store = TokenStore(tokens_path(tmp_path / "ledger.duckdb"))

    def whoami_route(params, caller):
        return {"name": caller.name}

    app = WebApp(
        routes={"/api/overview": whoami_route},
        post_routes={"/api/approve": lambda p, c: {"approved_by": c.name}},
        tokens=lambda: admin_tokens(policy, None, {}),  # as for_gateway: the token file re-read on each use
        is_approver=lambda c: c.source in DECIDING_SOURCES and c.name in approvers(policy),
        person=store.verify,
    )
    return app, store


def _login(app: WebApp, token: str) -> str:
    r = app.handle(WebRequest("POST", "/login", {"content-type": "application/json"},
                              json.dumps({"token": token}).encode()))
    assert r.status == 200, r.body
    sid = cookie_value(r.headers["Set-Cookie"].split(";")[0])
    assert sid
    return f"{COOKIE}={sid}"


def _get(app: WebApp, cookie: str, target: str = "/api/whoami"):
    return app.handle(WebRequest("GET", target, {"cookie": cookie}))


def test_a_revoked_approver_token_no_longer_signs_its_browser_session_in(tmp_path):
    app, store = _app(tmp_path)
    token, _ = store.issue("olivia@acme.com")
    cookie = _login(app, token)
    me = json.loads(_get(app, cookie).body)
    assert me["name"] == "olivia@acme.com" and me["approver"]

    assert store.revoke("olivia@acme.com")  # `spendgate tokens revoke olivia@acme.com`
    store.invalidate()
    assert store.verify(token) is None  # the token itself is dead at once (bearer, proxy: 401 / 407)
    r = app.handle(WebRequest("GET", "/api/whoami", {"authorization": f"Bearer {token}"}))
    assert r.status == 401

    # ... but the session it bought still acts as olivia, approvals included
    r = _get(app, cookie)
    assert r.status == 401, f"a revoked token's session still signs in: {r.status} {r.body[:200]!r}"
    post = app.handle(WebRequest("POST", "/api/approve", {"cookie": cookie, "x-spendgate": "1"}, b'{"id": "r-1"}'))
    assert post.status in (401, 403), post.body


def test_a_session_ends_when_its_token_expires(tmp_path):
    app, store = _app(tmp_path)
    token, _ = store.issue("olivia@acme.com", expires=datetime.now(UTC) + timedelta(seconds=2))
    cookie = _login(app, token)
    assert _get(app, cookie).status == 200
    time.sleep(2.5)
    assert store.verify(token) is None  # expired: refused as a bearer or proxy password
    r = _get(app, cookie)
    assert r.status == 401, f"a session outlives its token's expiry (12 h): {r.status} {r.body[:200]!r}"


def test_an_admin_token_rotated_out_of_the_token_file_ends_its_sessions(tmp_path):
    app, _ = _app(tmp_path)
    cookie = _login(app, "admin-token-ONE")
    assert json.loads(_get(app, cookie).body)["admin"]

    (tmp_path / "admin.token").write_text("admin-token-TWO\n")  # rotation: no restart needed, says the doc
    r = app.handle(WebRequest("GET", "/api/overview", {"authorization": "Bearer admin-token-ONE"}))
    assert r.status == 401  # the old token is refused as a bearer ...
    r = _get(app, cookie, "/api/overview")
    assert r.status == 401, f"a rotated-out admin token's session still sees the organization: {r.status}"
