"""Tiered alerts: thresholds fire once per budget, window and tier; across restarts and rollovers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from workflow_env import Env

from spendgate.budgets.book import Budget
from spendgate.identity import Identity
from spendgate.policy.model import PolicyError, parse
from spendgate.policy.sections import AlertsConfig
from spendgate.workflow import audit
from spendgate.workflow.alerts import (
    crossings,
    message,
    projected_exhaustion,
    recipients,
    warning_line,
)

POLICY = """\
version: 1
timezone: UTC
organization: {name: acme, owners: [cfo@acme.com], budgets: {month: 1000}}
defaults:
  user: {day: 10}
workspaces:
  core: {members: ["*@core.acme.com"], owners: [lead@core.acme.com], budgets: {day: 100}}
alerts: {thresholds: [50, 80, 95, 100], projection_min_percent: 25}
"""

ALICE = Identity(user="alice@core.acme.com", source="test", workspaces=("core",))
NOON = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def day_budget(limit: str = "10", start: datetime = datetime(2026, 11, 30, tzinfo=UTC)) -> Budget:
    return Budget("user:alice@acme.com", "day", Decimal(limit), start, start + timedelta(days=1))


def test_projection_uses_the_average_pace_since_the_window_started():
    # $3 in the first 12 hours of a $10 day: $7 more takes 28 hours, past midnight: no overrun
    assert projected_exhaustion(day_budget().start, NOON, Decimal(3), Decimal(10)) == NOON + timedelta(hours=28)
    # $8 by noon: $2 more at $8/12h takes 3 hours
    eta = projected_exhaustion(day_budget().start, NOON, Decimal(8), Decimal(10))
    assert eta == datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    assert projected_exhaustion(day_budget().start, NOON, Decimal(10), Decimal(10)) is None


def test_crossings_are_pure_and_skip_what_already_fired():
    b, cfg = day_budget(), AlertsConfig()
    got = crossings(b, Decimal("8.1"), cfg, set(), NOON)
    assert [(c.kind, c.threshold) for c in got] == [("threshold", 50), ("threshold", 80), ("projected", 0)]
    assert got[2].eta == NOON + timedelta(seconds=1.9 * 12 * 3600 / 8.1)
    fired = {c.key for c in got}
    assert crossings(b, Decimal("8.2"), cfg, fired, NOON) == []
    assert [c.threshold for c in crossings(b, Decimal("9.5"), cfg, fired, NOON)] == [95]
    assert crossings(day_budget("0"), Decimal(5), cfg, set(), NOON) == []  # a zero budget has no tiers


def test_messages_name_the_budget_the_eta_and_the_command():
    b = day_budget()
    c = crossings(b, Decimal(8), AlertsConfig(thresholds=(Decimal(200),)), set(), NOON)[0]
    text = message(c, NOON)
    assert text.startswith("spendgate: at this rate alice@acme.com reaches the daily cap at 15:00 UTC")
    assert "spendgate request --amount 5 --window day --scope user:alice@acme.com" in text  # half the limit
    line = warning_line([b], lambda _b: Decimal("8"), AlertsConfig(), NOON)
    assert line.startswith("80% of the daily budget of user:alice@acme.com used ($8.00 of $10.00)")
    assert "runs out at 15:00 UTC" in line and "spendgate request" in line and "\n" not in line
    assert warning_line([b], lambda _b: Decimal("4.99"), AlertsConfig(), NOON) is None
    # a small budget: enough digits to tell spent from the limit, and an increase in proportion
    small = day_budget("0.05")
    line = warning_line([small], lambda _b: Decimal("0.046"), AlertsConfig(), NOON)
    assert line.startswith("92% of the daily budget of user:alice@acme.com used ($0.0460 of $0.0500)")
    assert "spendgate request --amount 0.025 --window day" in line
    assert warning_line([b], lambda _b: Decimal("9"), AlertsConfig(in_band=False), NOON) is None


def test_recipients_owners_for_org_and_workspace_the_user_for_users():
    p = parse(POLICY, "p.yaml")
    assert recipients(p, "organization:acme") == ("cfo@acme.com",)
    assert recipients(p, "workspace:core") == ("lead@core.acme.com",)
    assert recipients(p, "user:alice@core.acme.com") == ("alice@core.acme.com",)


def fired_thresholds(env: Env, scope: str) -> list[tuple]:
    rows = env.con.execute('SELECT "window", window_start, kind, threshold FROM alerts_fired WHERE scope = ? '
                           "ORDER BY window_start, kind, threshold", [scope]).fetchall()
    return [(w, s.astimezone(UTC).date().isoformat(), k, float(t)) for w, s, k, t in rows]


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path / "l.duckdb", datetime(2026, 11, 30, 1, 0, tzinfo=UTC), POLICY)
    yield e
    e.close()


def rebuild(env: Env, amount: str) -> None:
    """What rebuild_counters does at start-up: spend that happened, counted in every window."""
    env.book.charge(["organization:acme", "workspace:core", "user:alice@core.acme.com"], env.clock.t,
                    Decimal(amount))


def pay(env: Env, amount: str) -> None:
    assert env.spend(ALICE, amount)
    env.wf.after_charge(ALICE)


def test_thresholds_fire_once_each_across_restarts_and_window_rollovers(env):
    user = "user:alice@core.acme.com"
    pay(env, "4")  # 40%: nothing (and too early to project)
    pay(env, "1.5")  # 55%: 50 fires; projection: $5.50 in 1h of the day -> cap long before midnight
    assert fired_thresholds(env, user) == [("day", "2026-11-30", "projected", 0), ("day", "2026-11-30", "threshold", 50)]
    pay(env, "0.1")  # nothing new
    before = fired_thresholds(env, user)
    env.restart()  # the gateway restarts and rebuilds its counters from the ledger
    rebuild(env, "5.6")
    env.wf.after_charge(ALICE)
    assert fired_thresholds(env, user) == before  # 50 and the projection stay fired
    rebuild(env, "5.6")  # 112% (e.g. a long stream settling past the cap)
    env.wf.after_charge(ALICE)
    env.restart()
    rebuild(env, "11.2")
    env.wf.after_charge(ALICE)
    assert [t for *_, k, t in fired_thresholds(env, user) if k == "threshold"] == [50, 80, 95, 100]
    env.clock.t = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)  # a new day: a clean slate
    pay(env, "6")
    assert fired_thresholds(env, user)[-2:] == [("day", "2026-12-01", "projected", 0),
                                                ("day", "2026-12-01", "threshold", 50)]
    assert len(fired_thresholds(env, user)) == 7
    alerts = [r for r in audit.rows(env.con.cursor()) if r["event"] == "alert" and r["scope"] == user]
    assert len(alerts) == 7
    assert env.wf.dispatcher.flush(5)
    user_notices = [n for _, n in env.sent if n.kind == "alert" and n.scope == user]
    assert len(user_notices) == 7 and all(n.recipients == ("alice@core.acme.com",) for n in user_notices)
    body = user_notices[0].body()
    assert {"scope", "window", "threshold", "spent_usd", "limit_usd", "resets_at", "top_models",
            "top_clients"} <= body.keys()


def test_the_workspace_budget_alerts_its_owners(env):
    pay(env, "9")  # 9% of the workspace's $100: nothing; 90% of alice's $10
    assert env.wf.dispatcher.flush(5)
    assert {n.scope for _, n in env.sent} == {"user:alice@core.acme.com"}


def test_policy_rejects_bad_alert_and_sink_sections():
    bad = POLICY.replace("alerts: {thresholds: [50, 80, 95, 100], projection_min_percent: 25}",
                         "alerts: {thresholds: [50, 0], sinks: [nowhere]}\n"
                         "sinks:\n  hook: {type: webhook}\n  mail: {type: email, host: smtp}\n"
                         "  odd: {type: pager}\n"
                         "approvals:\n  workspaces: {ghost: {approvers: [x]}}\n")
    with pytest.raises(PolicyError) as e:
        parse(bad, "p.yaml")
    text = str(e.value)
    assert "p.yaml:8:27: alerts.thresholds.1" in text  # FILE:LINE:COL of the bad threshold
    assert "p.yaml:12:15: sinks.odd.type: 'pager' is not one of" in text
    good = parse(POLICY.replace("projection_min_percent: 25}", "projection_min_percent: 25, sinks: [hook]}\n"
                                "sinks:\n  hook: {type: webhook, url: 'http://127.0.0.1:1/x', retries: 0}\n"
                                "approvals:\n  workspaces: {core: {approvers: [lead@core.acme.com], "
                                "auto_approve_up_to: 5}}\n"), "p.yaml")
    assert good.alerts.sinks == ("hook",) and good.sinks["hook"].retries == 0
    assert good.approvals.workspaces["core"].auto_approve_up_to == 5
    # cross-references the schema cannot see
    with pytest.raises(PolicyError, match="needs url or url_env"):
        parse(POLICY + "sinks:\n  hook: {type: slack}\n", "p.yaml")
    with pytest.raises(PolicyError, match="undefined sink 'nowhere'"):
        parse(POLICY.replace("projection_min_percent: 25}", "sinks: [nowhere]}"), "p.yaml")
    with pytest.raises(PolicyError, match="undefined workspace 'ghost'"):
        parse(POLICY + "approvals:\n  workspaces: {ghost: {approvers: [x]}}\n", "p.yaml")


def test_a_pace_too_slow_to_date_projects_nothing_instead_of_raising():
    """Fortieth review (8): a cap reached past year 9999 overflowed datetime and skipped the other
    budgets' alerts with a traceback per row."""
    start = datetime(2026, 11, 30, tzinfo=UTC)
    assert projected_exhaustion(start, start + timedelta(hours=1), Decimal("0.000001"), Decimal("1000000")) is None


def test_evaluate_looks_fired_keys_up_without_copying_them(env):
    """Fortieth review (2): the fired set holds 32 days of keys; copying it for every row past the
    lowest threshold cost ~1 ms a row at 60,000 keys, now on the event loop."""
    def no_copy():
        raise AssertionError("evaluate copied the fired set")

    env.wf.alerts.fired = no_copy
    pay(env, "6")  # 60%: 50 fires
    assert ("day", "2026-11-30", "threshold", 50) in fired_thresholds(env, "user:alice@core.acme.com")
