"""Ninth review: any engineer with a spendgate token signs every approver and admin out.

`Sessions.create` keeps at most `MAX_SESSIONS` (1000) browser sessions for the whole gateway and,
when full, drops the one closest to expiry: the oldest. Every engineer on a proxy-auth site holds a
spendgate token (it is their proxy password), and POST /login trades it for a new session as
often as they like: nothing bounds sessions per person. So 1000 logins (a second's work, a few
KB each) push out every other session, the approvers' and the admins' first, and keep doing it:
whoever is deciding a request is answered 401 and sent back to the sign-in form. The eighth
review (E1) made every session re-check its token on each use, which this leaves untouched:
nothing was revoked, the session was simply evicted by someone else.

Real WebApp with its real Sessions and a real TokenStore (the `<db>.tokens` file); the login
posts are what the CLI sends (JSON, no Origin).
"""

from __future__ import annotations

import json

from spendgate.tokens import TokenStore
from spendgate.web.app import COOKIE, MAX_SESSIONS, WebApp, WebRequest, cookie_value

ADMIN = "admin-token-for-the-ninth-review"


def login(app: WebApp, token: str) -> str | None:
    r = app.handle(WebRequest("POST", "/login", {"content-type": "application/json", "host": "spendgate.local"},
                              json.dumps({"token": token}).encode()))
    return cookie_value(r.headers.get("Set-Cookie", "").split(";")[0]) if r.status == 200 else None


def whoami(app: WebApp, sid: str) -> int:
    return app.handle(WebRequest("GET", "/api/whoami", {"cookie": f"{COOKIE}={sid}"})).status


def test_one_engineer_logging_in_in_a_loop_does_not_sign_the_approvers_out(tmp_path):
    tokens = TokenStore(tmp_path / "ledger.duckdb.tokens")
    olivia, _ = tokens.issue("olivia@acme.com")  # an approver
    mallory, _ = tokens.issue("mallory@acme.com")  # any engineer: her proxy password
    app = WebApp(routes={}, post_routes={}, tokens=lambda: [ADMIN], person=tokens.verify,
                 is_approver=lambda c: c.name == "olivia@acme.com")
    admin_sid, olivia_sid = login(app, ADMIN), login(app, olivia)
    assert admin_sid and olivia_sid and whoami(app, admin_sid) == 200 and whoami(app, olivia_sid) == 200
    for _ in range(MAX_SESSIONS):
        assert login(app, mallory)
    assert whoami(app, olivia_sid) == 200, "mallory's logins signed the approver out"
    assert whoami(app, admin_sid) == 200, "mallory's logins signed the admin out"
