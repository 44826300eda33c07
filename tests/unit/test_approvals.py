"""Increase requests -> decisions -> grants, over a real DuckDB file and a controllable clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from workflow_env import Env

from spendgate.identity import Identity
from spendgate.workflow import audit
from spendgate.workflow.approvals import (
    ApprovalError,
    NotAllowed,
    approvers_for,
    auto_limit,
    list_requests,
)

POLICY = """\
version: 1
timezone: UTC
organization: {name: acme, owners: [cfo@acme.com], budgets: {month: 1000}}
defaults:
  user: {day: 10}
workspaces:
  core: {members: ["*@core.acme.com"], owners: [lead@core.acme.com], budgets: {day: 100}}
approvals:
  organization: {approvers: [cfo@acme.com]}
  workspaces:
    core: {approvers: [lead@core.acme.com, alice@core.acme.com], auto_approve_up_to: 5}
sinks:
  hook: {type: webhook, url: "http://127.0.0.1:9/never-called"}
"""

ALICE = Identity(user="alice@core.acme.com", source="test", workspaces=("core",))
BOB = Identity(user="bob@core.acme.com", source="test", workspaces=("core",))


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path / "l.duckdb", datetime(2026, 11, 30, 9, 0, tzinfo=UTC), POLICY)
    yield e
    e.close()


def test_request_approve_grant_unblocks_at_once_and_expires_at_window_end(env):
    assert env.spend(BOB, "9.50")
    assert not env.spend(BOB, "1")  # $10 a day: blocked
    req = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "20", "release crunch")
    assert req["status"] == "pending" and req["spent_usd"] == 9.5 and req["limit_usd"] == 10
    with pytest.raises(NotAllowed, match="not an approver"):
        env.wf.approvals.approve(req["id"], "mallory@core.acme.com")
    assert not env.spend(BOB, "1")  # a refused approval grants nothing, and is on record
    done = env.wf.approvals.approve(req["id"], "lead@core.acme.com")
    assert done["status"] == "approved" and done["granted_usd"] == 20
    assert done["until"] == "2026-12-01T00:00:00Z"  # default: the end of the current day
    assert env.spend(BOB, "1")  # no restart, no YAML edit
    row = next(r for r in env.book.status() if r["scope"] == "user:bob@core.acme.com" and r["window"] == "day")
    assert row["granted_usd"] == 20 and row["limit_usd"] == 30
    env.clock.t = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)
    assert env.wf.grants.total("user:bob@core.acme.com", "day", env.clock.t) == 20
    env.clock.t = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    assert env.wf.grants.total("user:bob@core.acme.com", "day", env.clock.t) == 0
    assert env.wf.expire_grants() == 1
    assert env.wf.expire_grants() == 0  # recorded once
    assert env.events()[-5:] == [("request", "bob@core.acme.com"), ("decision_refused", "mallory@core.acme.com"),
                                 ("approve", "lead@core.acme.com"), ("grant", "lead@core.acme.com"),
                                 ("grant_expired", "spendgate")]


def test_approvers_are_notified_and_requester_hears_the_decision(env):
    req = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "20", "demo")
    env.wf.approvals.deny(req["id"], "cfo@acme.com", "not this week")
    assert env.wf.dispatcher.flush(5)
    (s1, n1), (s2, n2) = env.sent
    assert (s1, n1.kind, n1.recipients) == ("hook", "request", ("lead@core.acme.com", "alice@core.acme.com",
                                                                "cfo@acme.com"))
    assert f"spendgate approve {req['id']}" in n1.text
    assert (n2.kind, n2.recipients, n2.payload["decision"]) == ("decision", ("bob@core.acme.com",), "denied")
    assert "not this week" in n2.text
    deliveries = [r for r in audit.rows(env.con.cursor()) if r["event"] == "delivery"]
    assert [(d["detail"]["kind"], d["detail"]["outcome"]) for d in deliveries] == [("request", "delivered"),
                                                                                  ("decision", "delivered")]
    with pytest.raises(ApprovalError, match="already denied"):
        env.wf.approvals.approve(req["id"], "cfo@acme.com")


def test_no_self_approval_and_org_approvers_cover_everything(env):
    req = env.wf.approvals.request("alice@core.acme.com", "user:alice@core.acme.com", "day", "50", "x")
    with pytest.raises(NotAllowed, match="own request; other approvers: lead@core.acme.com, cfo@acme.com"):
        env.wf.approvals.approve(req["id"], "alice@core.acme.com")
    org = env.wf.approvals.request("lead@core.acme.com", "organization:acme", "month", "500", "quarter end")
    with pytest.raises(NotAllowed):
        env.wf.approvals.approve(org["id"], "alice@core.acme.com")  # workspace approvers: not the org budget
    assert env.wf.approvals.approve(org["id"], "cfo@acme.com", amount="250")["granted_usd"] == 250
    assert approvers_for(env.policy, "organization:acme") == ("cfo@acme.com",)


def test_denying_your_own_request_says_deny_and_is_on_record(env):
    req = env.wf.approvals.request("alice@core.acme.com", "user:alice@core.acme.com", "day", "50", "x")
    with pytest.raises(NotAllowed, match="alice@core.acme.com cannot deny their own request; other approvers"):
        env.wf.approvals.deny(req["id"], "alice@core.acme.com", "never mind")
    assert env.events()[-1] == ("decision_refused", "alice@core.acme.com")
    assert env.wf.approvals.get(req["id"])["status"] == "pending"


def test_a_second_request_counts_the_active_grant_in_its_limit(env):
    """Not "spent $12 of $10": the limit in force is the policy's plus the grants still running."""
    assert env.spend(BOB, "9")
    first = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "4", "small")
    assert first["status"] == "auto_approved"  # +$4: the day's limit is $14 now
    assert env.spend(BOB, "3")  # $12 spent, past the policy's $10
    second = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "20", "more")
    assert (second["spent_usd"], second["limit_usd"]) == (12, 14)
    assert env.wf.dispatcher.flush(5)
    notice = next(n for _, n in env.sent if n.kind == "request" and n.ref == second["id"])
    assert "($12.00 spent of $14.00, including $4.00 granted)" in notice.text
    assert (notice.payload["spent_usd"], notice.payload["limit_usd"]) == (12, 14)
    assert (notice.payload["policy_limit_usd"], notice.payload["granted_usd"]) == (10, 4)
    assert next(r for r in audit.rows(env.con.cursor()) if r["ref"] == second["id"])["detail"]["limit_usd"] == 14


def test_auto_approve_is_capped_per_budget_and_window(env):
    assert auto_limit(env.policy, "user:bob@core.acme.com") == 5
    a = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "3", "small")
    assert (a["status"], a["decided_by"]) == ("auto_approved", "policy:auto_approve_up_to")
    b = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "3", "again")
    assert b["status"] == "pending"  # 3 + 3 > 5 in this window
    env.clock.t += timedelta(days=1)
    c = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "3", "next day")
    assert c["status"] == "auto_approved"
    assert [e for e, _ in env.events()] == ["request", "auto_approve", "grant", "request", "request", "auto_approve",
                                           "grant"]


def test_bad_requests_are_refused_with_a_reason(env):
    r = env.wf.approvals.request
    with pytest.raises(ApprovalError, match="no hourly budget"):
        r("bob", "user:bob@core.acme.com", "hour", "5", "x")
    with pytest.raises(ApprovalError, match="positive"):
        r("bob", "user:bob@core.acme.com", "day", "-5", "x")
    with pytest.raises(ApprovalError, match="say why"):
        r("bob", "user:bob@core.acme.com", "day", "5", "  ")
    with pytest.raises(ApprovalError, match="unknown scope"):
        r("bob", "team:x", "day", "5", "x")
    req = r("bob@core.acme.com", "user:bob@core.acme.com", "day", "50", "x")
    with pytest.raises(ApprovalError, match="in the past"):
        env.wf.approvals.approve(req["id"], "cfo@acme.com", until="2026-11-29T00:00:00Z")
    with pytest.raises(ApprovalError, match="no request"):
        env.wf.approvals.approve("r-nope", "cfo@acme.com")


def test_grants_survive_a_restart_and_explicit_until_spans_windows(env):
    req = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "40", "offsite")
    env.wf.approvals.approve(req["id"], "cfo@acme.com", until="2026-12-02T12:00:00Z")
    env.restart()
    for t in (datetime(2026, 11, 30, 11, tzinfo=UTC), datetime(2026, 12, 1, 11, tzinfo=UTC),
              datetime(2026, 12, 2, 11, 59, tzinfo=UTC)):  # every day's budget until the grant ends
        env.clock.t = t
        assert env.wf.grants.total("user:bob@core.acme.com", "day", t) == 40
    env.clock.t = datetime(2026, 12, 2, 12, tzinfo=UTC)
    assert env.wf.grants.total("user:bob@core.acme.com", "day", env.clock.t) == 0
    assert list_requests(env.con.cursor(), "approved")[0]["id"] == req["id"]
    assert list_requests(env.con.cursor(), "pending") == []


def test_audit_has_no_update_or_delete_path():
    import inspect

    src = inspect.getsource(audit)
    for verb in ("UPDATE ", "DELETE ", "TRUNCATE", "DROP "):
        assert verb not in src.upper().replace("UPDATES", "")


def test_a_gateway_refusing_a_bad_policy_at_start_leaves_an_audit_row(tmp_path):
    from spendgate.gateway import Gateway, GatewayError, Settings
    from spendgate.store.ledger import connect

    bad = tmp_path / "p.yaml"
    bad.write_text("version: 1\nalerts: {thresholds: [-5]}\n")
    db = tmp_path / "l.duckdb"
    with pytest.raises(GatewayError, match="invalid policy"):
        Gateway(Settings(db=db, policy=bad, admin_port=-1, reload_interval=0))
    con = connect(db, read_only=True)
    (row,) = audit.rows(con)
    con.close()
    assert row["event"] == "policy_rejected" and row["detail"]["trigger"] == "start"
    assert row["detail"]["file"] == str(bad) and "alerts.thresholds.0" in row["detail"]["problems"]
    assert "(pid " in row["actor"]


def test_one_open_request_per_budget_and_a_few_per_person(tmp_path):
    """Eighth review (E2): nobody can bury the approvers, or the alerts sharing their queue, in requests."""
    policy = POLICY.replace("user: {day: 10}", "user: {hour: 5, day: 10, week: 40, month: 100}").replace(
        "budgets: {day: 100}}", "budgets: {day: 100, month: 1000}}")
    env = Env(tmp_path / "l.duckdb", datetime(2026, 11, 30, 9, 0, tzinfo=UTC), policy)
    try:
        _one_open_request_per_budget(env)
    finally:
        env.close()


def _one_open_request_per_budget(env):
    first = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "20", "crunch")
    with pytest.raises(ApprovalError, match=f"{first['id']} .* still waiting"):
        env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "30", "more")
    for window in ("hour", "week", "month"):  # other budgets of his: each their own open request
        env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", window, "20", "crunch")
    env.wf.approvals.request("bob@core.acme.com", "workspace:core", "day", "20", "crunch")
    with pytest.raises(ApprovalError, match="already has 5 requests waiting"):
        env.wf.approvals.request("bob@core.acme.com", "workspace:core", "month", "20", "crunch")
    env.wf.approvals.deny(first["id"], "cfo@acme.com", "no")  # a decided request is no longer open
    again = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "25", "smaller")
    assert again["status"] == "pending"
    env.clock.t += timedelta(days=1)  # the day's window is over: its open request no longer counts
    env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "25", "next day")


def test_requests_are_at_least_a_cent_and_twenty_an_hour(env):
    """Ninth review (N4): auto-approved micro-requests never count as open, so they are bounded
    by size and by how many one person files in an hour."""
    with pytest.raises(ApprovalError, match="at least"):
        env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "0.00000000001", "x")
    for i in range(20):  # core auto-approves up to $5 per budget and window: these are decided at once
        req = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "0.01", f"n{i}")
        assert req["status"] == "auto_approved"
    with pytest.raises(ApprovalError, match="20 requests in the last hour"):
        env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "0.01", "one more")
    env.clock.t += timedelta(hours=1, seconds=1)
    assert env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "0.01", "later")


def test_a_decision_on_a_request_already_decided_is_refused_and_on_record(env):
    """Forty-third review (new user): `deny` of an approved request answered "already approved" and
    left no audit row; every refused decision is on record."""
    req = env.wf.approvals.request("bob@core.acme.com", "user:bob@core.acme.com", "day", "20", "crunch")
    env.wf.approvals.approve(req["id"], "lead@core.acme.com")
    with pytest.raises(ApprovalError, match=f"request {req['id']} is already approved"):
        env.wf.approvals.deny(req["id"], "cfo@acme.com", "too late")
    assert env.events()[-1] == ("decision_refused", "cfo@acme.com")
