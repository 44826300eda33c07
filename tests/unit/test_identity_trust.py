"""Issue 13: which identity sources are believed from whom, user-name comparison, unknown users,
the one approval rule, and the token store."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from spendgate.identity import resolve
from spendgate.policy.model import UNATTRIBUTED, PolicyError, parse
from spendgate.tokens import TokenStore, tokens_path
from spendgate.workflow.approvals import approvers_for, decision_refusal, may_decide

CHAIN = 'identity: [proxy_auth, "header:x-user", local_user]\n'


def pol(extra: str = "", chain: str = CHAIN):
    return parse("version: 1\n" + chain + "trusted_proxies: [10.9.0.0/16]\n" + extra, "p.yaml")


def test_header_believed_only_from_trusted_proxies_and_never_for_the_dashboard():
    p = pol()
    h = {"x-user": "carol"}
    assert resolve(p, h, client_ip="10.9.1.1").user == "carol"
    assert resolve(p, h, client_ip="10.8.1.1").user == UNATTRIBUTED  # untrusted, not loopback: nobody
    assert resolve(p, h, client_ip="127.0.0.1", default_user="me").user == "me"  # the machine's own user
    assert resolve(p, h, client_ip="::ffff:10.9.1.1").user == "carol"  # IPv4-mapped peers
    assert resolve(p, h, client_ip="10.9.1.1", authenticating_only=True).user == UNATTRIBUTED


def test_proxy_auth_that_accepts_any_password_is_asserted():
    p = pol()
    assert resolve(p, {}, proxy_user="bob", client_ip="10.8.0.1").user == "bob"
    assert resolve(p, {}, proxy_user="bob", client_ip="10.8.0.1", proxy_verified=False).user == UNATTRIBUTED
    assert resolve(p, {}, proxy_user="bob", client_ip="10.9.0.1", proxy_verified=False).user == "bob"


def test_local_user_only_for_loopback_clients_and_never_in_central_mode():
    p = pol()
    assert resolve(p, {}, client_ip="192.0.2.1", default_user="me").user == UNATTRIBUTED
    assert resolve(p, {}, client_ip="::1", default_user="me").user == "me"
    with pytest.raises(PolicyError, match="local_user names the gateway's own OS account"):
        pol("mode: central\n")


def test_email_names_compare_case_insensitively_other_names_do_not():
    p = pol("users: {Alice@Acme.com: {budgets: {day: 5}}}\nworkspaces: {core: {members: ['*@Core.acme.com']}}\n")
    i = resolve(p, {"x-user": "ALICE@acme.COM"}, client_ip="10.9.0.1")
    assert i.user == "alice@acme.com" and p.users["alice@acme.com"].budgets["day"] == 5
    assert resolve(p, {"x-user": "Bob@CORE.acme.com"}, client_ip="10.9.0.1").workspaces == ("core",)
    assert resolve(p, {"x-user": "Dave"}, client_ip="10.9.0.1").user == "Dave"
    with pytest.raises(PolicyError, match="listed twice"):
        pol("users: {alice@acme.com: {}, ALICE@acme.com: {}}\n")


@pytest.mark.parametrize("mode, user, unknown", [("default", "zed", False), ("unattributed", UNATTRIBUTED, False),
                                                 ("block", "zed", True)])
def test_unknown_users(mode, user, unknown):
    p = pol(f"unknown_users: {mode}\nworkspaces: {{core: {{members: [carol]}}}}\n")
    i = resolve(p, {"x-user": "zed"}, client_ip="10.9.0.1")
    assert (i.user, i.unknown) == (user, unknown)
    assert resolve(p, {"x-user": "carol"}, client_ip="10.9.0.1").unknown is False


def test_policy_check_errors_are_positioned():
    with pytest.raises(PolicyError) as e:
        parse("version: 1\n" + CHAIN, "p.yaml")
    assert "p.yaml:2:24: header:x-user is asserted by the client" in str(e.value)
    with pytest.raises(PolicyError) as e:
        parse("version: 1\n" + CHAIN + "trusted_proxies: ['::/0', nope]\n", "p.yaml")
    assert "p.yaml:3:19: trusted_proxies '::/0' trusts every address" in str(e.value)
    assert "p.yaml:3:27: not a CIDR: 'nope'" in str(e.value)


APPROVALS = """\
organization: {name: acme, owners: [cfo]}
workspaces: {core: {members: [bob, alice], owners: [olga]}}
approvals:
  organization: {approvers: [dana]}
  workspaces: {core: {approvers: [alice]}}
"""


def test_one_rule_for_who_decides():
    p = pol(APPROVALS)
    assert approvers_for(p, "user:bob") == ("alice", "olga", "dana")
    assert approvers_for(p, "organization:acme") == ("dana",)  # owners approve only without approvals.organization
    req = {"id": "r-1", "requester": "bob", "scope": "user:bob"}
    assert may_decide(p, "olga", req) and may_decide(p, "dana", req) and not may_decide(p, "cfo", req)
    # nobody decides their own request: as requester, or as the one whose budget it raises
    for_alice = {"id": "r-2", "requester": "bob", "scope": "user:alice"}
    assert decision_refusal(p, "alice", for_alice, "deny") == \
        "alice cannot deny their own request; other approvers: olga, dana"
    mine = {"id": "r-3", "requester": "dana", "scope": "workspace:core"}
    assert decision_refusal(p, "dana", mine) is not None and may_decide(p, "olga", mine)


def test_token_store(tmp_path):
    path = tokens_path(tmp_path / "ledger.duckdb")
    store = TokenStore(path)
    token, rec = store.issue("Alice@Acme.com", expires=datetime.now(UTC) + timedelta(days=1))
    assert rec.user == "alice@acme.com" and token.startswith("sgt_")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert token not in path.read_text() and json.loads(path.read_text())["tokens"][0]["sha256"]
    reader = TokenStore(path)  # the gateway's copy, another process in real life
    assert reader.verify(token) == "alice@acme.com"
    assert reader.verify(token, "ALICE@acme.com") == "alice@acme.com"
    assert reader.verify(token, "bob") is None and reader.verify("sgt_nope") is None and reader.verify("") is None
    assert reader.verify(token, now=datetime.now(UTC) + timedelta(days=2)) is None  # expired
    assert [r.id for r in store.revoke("alice@acme.com")] == [rec.id]
    reader.invalidate()
    assert reader.verify(token) is None and reader.lookup(token).revoked
    assert store.list()[0]["status"] == "revoked" and "sha256" not in store.list()[0]
    with pytest.raises(ValueError, match="not a user name"):
        store.issue("bad:name")


def test_web_app_takes_spendgate_tokens_and_never_decides_for_the_admin_token():
    from spendgate.web.app import WebApp, WebRequest

    seen = []

    def approve(params, caller):
        seen.append((dict(params), caller.name, caller.source))
        return {"ok": True}

    app = WebApp(routes={"/api/overview": lambda p, c: {"user": p.get("user")}},
                 post_routes={"/api/approve": approve}, tokens=lambda: ["ADMIN"],
                 is_approver=lambda c: c.source in ("token", "proxy_auth") and c.name == "dana",
                 person=lambda t: {"sgt_dana": "dana", "sgt_bob": "bob"}.get(t))

    def call(method, target, token, body=b""):
        return app.handle(WebRequest(method, target, {"authorization": f"Bearer {token}"}, body))

    r = call("GET", "/api/whoami", "sgt_dana")
    me = json.loads(r.body)
    assert (me["name"], me["admin"], me["approver"], me["source"]) == ("dana", False, True, "token")
    assert json.loads(call("GET", "/api/overview?user=bob", "sgt_dana").body) == {"user": "dana"}
    assert call("POST", "/api/approve", "sgt_dana", b'{"id": "r-1"}').status == 200
    assert seen[-1][1:] == ("dana", "token")
    admin_me = json.loads(call("GET", "/api/whoami", "ADMIN").body)
    assert admin_me["admin"] and not admin_me["approver"]  # sees everything, decides nothing
    assert call("GET", "/api/overview", "sgt_revoked").status == 401
    login = app.handle(WebRequest("POST", "/login", {"content-type": "application/json"}, b'{"token": "sgt_bob"}'))
    assert login.status == 200
    sid = login.headers["Set-Cookie"].split(";")[0]
    me = json.loads(app.handle(WebRequest("GET", "/api/whoami", {"cookie": sid})).body)
    assert (me["name"], me["admin"], me["source"]) == ("bob", False, "token")


def test_signed_header_is_believed_from_any_peer(tmp_path):
    import time as _time

    from spendgate.identity import sign_header

    (tmp_path / "header.key").write_text("0123456789abcdef-shared\n")
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\n" + CHAIN + "header_signature: {secret_file: header.key, max_age_seconds: 60}\n")
    from spendgate.policy.model import load

    p = load(path)
    key = b"0123456789abcdef-shared"
    now = int(_time.time())
    good = {"x-user": "carol", "x-spendgate-signature": sign_header(key, "x-user", "carol", now)}
    assert resolve(p, good, client_ip="192.0.2.7").user == "carol"
    forged = {**good, "x-user": "dana"}  # the signature covers the value
    assert resolve(p, forged, client_ip="192.0.2.7").user == UNATTRIBUTED
    stale = {"x-user": "carol", "x-spendgate-signature": sign_header(key, "x-user", "carol", now - 120)}
    assert resolve(p, stale, client_ip="192.0.2.7").user == UNATTRIBUTED
    other = {"x-user": "carol", "x-spendgate-signature": sign_header(b"another-secret-123", "x-user", "carol")}
    assert resolve(p, other, client_ip="192.0.2.7").user == UNATTRIBUTED
    assert resolve(p, {"x-user": "carol", "x-spendgate-signature": "t=x,v1=y"}, client_ip="192.0.2.7").user == UNATTRIBUTED
    assert resolve(p, good, client_ip="192.0.2.7", authenticating_only=True).user == UNATTRIBUTED
    # a missing secret file: the policy loads with a warning and refuses every signature (fails closed)
    path.write_text("version: 1\n" + CHAIN + "header_signature: {secret_file: nope.key}\n")
    p = load(path)
    assert any("signed headers will be refused" in w.message for w in p.warnings)
    assert resolve(p, good, client_ip="192.0.2.7").user == UNATTRIBUTED


def test_an_unreadable_or_malformed_token_file_accepts_no_token(tmp_path):
    path = tokens_path(tmp_path / "l.duckdb")
    store = TokenStore(path)
    token, _ = store.issue("bob")
    path.write_text('{"tokens": [{"unexpected": 1}]}')
    store.invalidate()
    assert store.verify(token) is None
    path.write_text("not json")
    store.invalidate()
    assert store.verify(token) is None and store.list() == []


def test_central_mode_default_chain_has_no_local_user():
    assert parse("version: 1\nmode: central\n").identity == ("proxy_auth", "api_key")
    assert parse("version: 1\n").identity == ("proxy_auth", "api_key", "local_user")
