"""The dashboard app's authentication and scoping, in-process and over the loopback admin server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from spendgate.web.app import (
    COOKIE,
    Sessions,
    WebApp,
    WebRequest,
    admin_tokens,
    approvers,
    cookie_value,
)
from spendgate.web.caller import Caller
from spendgate.web.server import AdminServer

TOKEN = "admin-token-123"
seen: list[tuple[str, dict, Caller]] = []


def _route(name):
    def handler(params, caller):
        seen.append((name, dict(params), caller))
        return {"route": name, "user": params.get("user")}

    return handler


def make_app(**kw) -> WebApp:
    seen.clear()
    routes = {"/api/overview": _route("overview"), "/api/ledger": _route("ledger"), "/api/secret": _route("secret"),
              "/api/requests": lambda p, c: [{"id": "a", "requester": "alice"}, {"id": "b", "requester": "bob"}]}
    return WebApp(routes=routes, post_routes={"/api/approve": _route("approve"), "/api/reprice": _route("reprice")},
                  tokens=lambda: [TOKEN, "second-token"], is_approver=lambda c: c.admin or c.name == "olivia", **kw)


def req(method="GET", target="/api/overview", headers=None, body=b"", ambient=None) -> WebRequest:
    return WebRequest(method, target, {k.lower(): v for k, v in (headers or {}).items()}, body, ambient)


def bearer(t=TOKEN):
    return {"Authorization": f"Bearer {t}"}


def body(resp):
    return json.loads(resp.body)


def test_no_token_is_401_everywhere_but_static_assets():
    app = make_app()
    assert app.handle(req()).status == 401
    assert app.handle(req(target="/api/whoami")).status == 401
    page = app.handle(req(target="/"))
    assert page.status == 401 and b"Sign in" in page.body  # the shell shows the login form
    assert app.handle(req(target="/static/app.js")).status == 200
    assert seen == []


def test_wrong_token_is_401_even_with_a_proxy_identity():
    app = make_app()
    r = app.handle(req(headers=bearer("nope"), ambient=Caller("alice", admin=False)))
    assert r.status == 401 and "wrong" in body(r)["error"]
    assert app.handle(req(headers={"Authorization": "Basic abc"})).status == 401
    assert seen == []


def test_admin_token_sees_the_organization():
    app = make_app()
    for t in (TOKEN, "second-token"):
        r = app.handle(req(target="/api/overview?window=day", headers=bearer(t)))
        assert r.status == 200 and body(r) == {"route": "overview", "user": None}
    assert seen[-1][1] == {"window": "day"} and seen[-1][2].admin
    assert app.handle(req(target="/api/secret", headers=bearer())).status == 200


def test_engineer_sees_only_their_own_rows():
    app = make_app()
    alice = Caller("alice", admin=False)
    r = app.handle(req(target="/api/overview?user=bob", ambient=alice))
    assert r.status == 200 and body(r)["user"] == "alice"  # forced, whatever they asked for
    assert app.handle(req(target="/api/secret", ambient=alice)).status == 403
    assert [x["id"] for x in body(app.handle(req(target="/api/requests", ambient=alice)))] == ["a"]
    olivia = Caller("olivia", admin=False)  # an approver sees what she may decide on
    assert [x["id"] for x in body(app.handle(req(target="/api/requests", ambient=olivia)))] == ["a", "b"]
    me = body(app.handle(req(target="/api/whoami", ambient=alice)))
    assert me["name"] == "alice" and not me["admin"] and not me["approver"] and "/api/secret" not in me["routes"]


def test_read_only_unless_approver_and_csrf_header_for_browsers():
    app = make_app()
    post = dict(method="POST", target="/api/approve", body=b'{"id": "a"}')
    r = app.handle(req(**post, headers={"X-Spendgate": "1"}, ambient=Caller("alice", admin=False)))
    assert r.status == 403 and "approver" in body(r)["error"]
    r = app.handle(req(**post, ambient=Caller("olivia", admin=False)))
    assert r.status == 403 and "X-Spendgate" in body(r)["error"]  # a cross-site form cannot add it
    r = app.handle(req(**post, headers={"X-Spendgate": "1"}, ambient=Caller("olivia", admin=False)))
    assert r.status == 200 and seen[-1][1] == {"id": "a"} and seen[-1][2].name == "olivia"
    assert app.handle(req(**post, headers=bearer())).status == 200  # scripts with the token need no header
    r = app.handle(req("POST", "/api/reprice", {"X-Spendgate": "1"}, b"{}", Caller("olivia", admin=False)))
    assert r.status == 403  # approving is all an approver may do without the token
    assert body(app.handle(req(target="/api/whoami", ambient=Caller("olivia", admin=False))))["post_routes"] == [
        "/api/approve"]


def test_login_exchanges_token_for_httponly_cookie():
    app = make_app()
    bad = app.handle(req("POST", "/login", {"Content-Type": "application/json"}, b'{"token": "nope"}'))
    assert bad.status == 401 and "Set-Cookie" not in bad.headers
    login = json.dumps({"token": TOKEN, "name": "dana"}).encode()
    ok = app.handle(req("POST", "/login", {"Content-Type": "application/json"}, login))
    assert ok.status == 200
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    sid = cookie_value(cookie.split(";")[0])
    r = app.handle(req(headers={"Cookie": f"other=1; {COOKIE}={sid}"}))
    assert r.status == 200 and body(r)["user"] is None and seen[-1][2] == Caller("dana", admin=True)
    assert app.handle(req(target="/", headers={"Cookie": f"{COOKIE}={sid}"})).status == 200
    assert app.handle(req(headers={"Cookie": f"{COOKIE}=forged"})).status == 401
    form = app.handle(req("POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"},
                          f"token={TOKEN}".encode()))
    assert form.status == 303 and form.headers["Location"] == "/"
    app.handle(req("POST", "/logout", {"Cookie": f"{COOKIE}={sid}"}))
    assert app.handle(req(headers={"Cookie": f"{COOKIE}={sid}"})).status == 401


def test_login_from_another_origin_is_refused():
    """Login CSRF (eighth review): a page elsewhere cannot sign a browser into its session."""
    app = make_app()
    form = {"Content-Type": "application/x-www-form-urlencoded", "Host": "spendgate.local"}
    cross = app.handle(req("POST", "/login", {**form, "Origin": "https://evil.example"}, f"token={TOKEN}".encode()))
    assert cross.status == 403 and "Set-Cookie" not in cross.headers
    assert app.handle(req("POST", "/login", {**form, "Origin": "null"}, f"token={TOKEN}".encode())).status == 403
    same = app.handle(req("POST", "/login", {**form, "Origin": "http://spendgate.local"}, f"token={TOKEN}".encode()))
    assert same.status == 303 and "Set-Cookie" in same.headers
    assert app.handle(req("POST", "/login", form, f"token={TOKEN}".encode())).status == 303  # a CLI: no Origin


def test_sessions_expire():
    clock = [0.0]
    s = Sessions(ttl=10, clock=lambda: clock[0])
    sid = s.create(Caller("admin", admin=True), "tok")
    caller, credential = s.get(sid)
    assert caller.admin and credential == "tok"
    clock[0] = 11
    assert s.get(sid) is None


def test_unknown_paths_and_bad_input():
    app = make_app()
    assert app.handle(req(target="/api/nothing", headers=bearer())).status == 404
    assert app.handle(req(target="/etc/passwd", headers=bearer())).status == 404
    r = app.handle(req("POST", "/api/approve", bearer(), b"[1, 2]"))
    assert r.status == 400


def test_admin_tokens_from_env_and_policy_file(tmp_path):
    (tmp_path / "admin.token").write_text("from-file\n")
    policy = SimpleNamespace(raw={"admin": {"token_file": "admin.token"}}, path=str(tmp_path / "policy.yaml"))
    assert admin_tokens(policy, "disc", {"SPENDGATE_ADMIN_TOKEN": " from-env "}) == ["disc", "from-env", "from-file"]
    policy.raw["admin"]["token_file"] = "missing.token"
    assert admin_tokens(policy, "disc", {}) == ["disc"]


def test_policy_names_the_token_file(tmp_path):
    from spendgate.policy.model import load

    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "admin.token").write_text("rotated-token\n")
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nadmin: {token_file: secrets/admin.token}\n")
    assert admin_tokens(load(path), None, {}) == ["rotated-token"]


def test_approvers_from_policy():
    from spendgate.policy.model import parse

    policy = parse("version: 1\norganization: {owners: [owen]}\nworkspaces: {platform: {owners: [wendy]}}\n"
                   "approvals: {organization: {approvers: [olivia]}, workspaces: {platform: {approvers: [pat]}}}\n")
    # owen owns the organization but approvals.organization names olivia: the documented rule
    # (docs/alerts-and-approvals.md) that approvals.approvers_for applies everywhere now
    assert approvers(policy) == {"olivia", "pat", "wendy"}


def test_served_by_the_loopback_admin_server():
    app = make_app()
    server = AdminServer({}, token=TOKEN).start()
    server.app = app
    try:
        def get(path, headers=None):
            r = urllib.request.Request(server.url + path, headers=headers or {})
            try:
                with urllib.request.urlopen(r, timeout=10) as resp:
                    return resp.status, resp.read(), dict(resp.headers)
            except urllib.error.HTTPError as e:
                return e.code, e.read(), dict(e.headers)

        assert get("/api/overview")[0] == 401
        assert get("/api/overview", bearer("wrong"))[0] == 401
        status, data, headers = get("/api/overview", bearer())
        assert status == 200 and json.loads(data)["route"] == "overview"
        status, data, headers = get("/static/style.css")
        assert status == 200 and headers["Content-Type"].startswith("text/css")
        assert "default-src 'self'" in headers["Content-Security-Policy"]
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["index.html", "app.js", "charts.js", "style.css"])
def test_assets_are_local(name):
    from spendgate.web.app import asset

    text = asset(name).decode()
    assert "http://" not in text.replace("http://spendgate.local", "").replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text and "cdn" not in text.lower()


def test_the_admin_server_decides_how_much_body_to_read_before_reading_any():
    """Found by the attacker review: 60 MiB bodies were read (and held) before a 401. Now a request
    with no credentials gets at most 64 KiB read, and a route's own limit applies before reading."""
    import socket

    from spendgate.web.app import WebApp
    from spendgate.web.server import AdminServer

    server = AdminServer({})
    server.app = WebApp(routes={}, post_routes={}, tokens=lambda: [], person=lambda t: "bob" if t == "sgt_live" else None)
    server.start()
    host, port = server.httpd.server_address[:2]

    def head_only(path: str, length: int, extra: str = "") -> bytes:
        with socket.create_connection((host, port), timeout=10) as s:  # the body is never sent
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{extra}\r\n".encode())
            return s.makefile("rb").read()  # the server answers and hangs up

    try:
        assert head_only("/api/ingest", 60 << 20).startswith(b"HTTP/1.1 413")
        assert b"over 65536 bytes" in head_only("/login", 1 << 20)
        auth = "Authorization: Bearer sgt_live\r\n"  # a credential that checks out
        assert b"over 4194304 bytes" in head_only("/api/ingest", 5 << 20, auth)  # the route's own limit
        assert b"over 67108864 bytes" in head_only("/api/reconcile/import", 65 << 20, auth)
        # a header that proves nothing (ninth review, N2), and /login whatever it carries: anonymous
        for junk in ("Authorization: Bearer sgt_x\r\n", "Cookie: spendgate_session=forged\r\n"):
            assert b"over 65536 bytes" in head_only("/api/ingest", 1 << 20, junk)
        assert b"over 65536 bytes" in head_only("/login", 1 << 20, auth)
    finally:
        server.stop()
