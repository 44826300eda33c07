"""Billing basis: recognising subscription traffic, the policy's subscription_usage, plans, budgets,
re-pricing and explain for subscription rows."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D

import pytest

from spendgate.budgets import refusal
from spendgate.budgets.book import BudgetBook, ledger_row_scopes
from spendgate.budgets.plans import PlanIndex
from spendgate.budgets.recovery import rebuild_counters
from spendgate.cli.budget_cmds import subscription_summary
from spendgate.cli.prices import explain_lines
from spendgate.identity import Identity
from spendgate.metering import billing
from spendgate.policy.model import PolicyError, parse
from spendgate.pricing import reprice
from spendgate.pricing.rates import Pricer
from spendgate.store.ledger import LedgerRow, connect, migrate, write_rows
from spendgate.usage import Usage

# --- recognising the basis ------------------------------------------------------------------------


@pytest.mark.parametrize("host,path,headers,basis,kind", [
    ("api.anthropic.com", "/v1/messages", {"authorization": "Bearer sk-ant-oat01-abc"}, "subscription", "claude_oauth"),
    ("api.anthropic.com", "/v1/messages?beta=true",
     {"authorization": "Bearer opaque-token", "anthropic-beta": "claude-code-20250219,oauth-2025-04-20"},
     "subscription", "claude_oauth"),
    # an API key is invoiced whatever else the request says
    ("api.anthropic.com", "/v1/messages",
     {"x-api-key": "sk-ant-api03-x", "authorization": "Bearer sk-ant-oat01-abc"}, "api", "api_key"),
    ("api.anthropic.com", "/v1/messages",
     {"authorization": "Bearer sk-ant-api03-x", "anthropic-beta": "oauth-2025-04-20"}, "api", "api_key"),
    ("api.anthropic.com", "/v1/messages", {"x-api-key": "sk-ant-api03-x"}, "api", "api_key"),
    ("chatgpt.com", "/backend-api/codex/responses", {"authorization": "Bearer eyJ..."}, "subscription",
     "chatgpt_login"),
    ("api.openai.com", "/v1/responses", {"authorization": "Bearer sk-proj-x"}, "api", "api_key"),
    ("api.individual.githubcopilot.com", "/chat/completions", {"authorization": "Bearer tid=x"}, "subscription",
     "copilot_seat"),
    ("cloudcode-pa.googleapis.com", "/v1internal:streamGenerateContent", {"authorization": "Bearer ya29.x"},
     "subscription", "google_login"),
    ("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent",
     {"x-goog-api-key": "AIza"}, "api", "api_key"),
    ("api.anthropic.com", "/v1/messages", {}, "api", "none"),
])  # fmt: skip
def test_classify(host, path, headers, basis, kind):
    b = billing.classify(host, path, headers)
    assert (b.basis, b.credential) == (basis, kind)
    assert "sk-ant" not in repr(b) and "eyJ" not in repr(b)  # only the kind, never the token


def test_explain_sentence_per_kind():
    assert "Claude sign-in OAuth token" in billing.explain("subscription", "claude_oauth")
    assert billing.explain("api", "api_key") == "API key: invoiced per token"


# --- the policy ---------------------------------------------------------------------------------

PLANS = """\
plans:
  claude-max: {vendor: anthropic, price_usd: 200, holders: [alice, {user: bob, from: 2026-03-10}]}
  claude-team: {vendor: claude, price_usd: 30, holders: [carol]}
  chatgpt-pro: {vendor: chatgpt, price_usd: 200, holders: [alice]}
"""


def test_default_is_ignore_and_policy_check_says_so():
    p = parse("version: 1\n")
    assert (p.subscription_usage, p.subscription_usage_explicit) == ("ignore", False)
    line = subscription_summary(p)
    assert line.startswith("subscription_usage: ignore (the default; set subscription_usage to choose)")
    assert "never charged to or blocked by any budget" in line
    sep = parse("version: 1\nsubscription_usage: separate\nsubscription_budgets: {user: {hour: 5}, "
                "plans: {claude-max: {hour: 2}}}\n" + PLANS)
    assert "limits (notional USD): user {'hour': 5.0}; plan claude-max {'hour': 2.0}" in subscription_summary(sep)


@pytest.mark.parametrize("body,where,words", [
    ("subscription_usage: sometimes\n", "2:21", "must be count, ignore or separate"),
    ("subscription_usage: count\nsubscription_budgets: {user: {day: 1}}\n", "3:1", "only with `subscription_usage: separate`"),
    ("subscription_budgets: {user: {day: 1}}\n", "2:1", "the default"),
    ("subscription_usage: separate\nsubscription_budgets: {plans: {nope: {day: 1}}}\n", "3:32", "no plan 'nope'"),
    ("subscription_usage: separate\nsubscription_budgets: {user: {hour: -1}}\n", "3:37", "non-negative"),
])  # fmt: skip
def test_policy_problems(body, where, words):
    with pytest.raises(PolicyError) as err:
        parse("version: 1\n" + body + PLANS, "p.yaml")
    text = str(err.value)
    assert f"p.yaml:{where}:" in text and words in text, text


def test_separate_without_limits_warns():
    (w,) = parse("version: 1\nsubscription_usage: separate\n").warnings
    assert "never limited" in w.message


def test_plan_index_matches_vendor_aliases_holders_and_dates():
    idx = PlanIndex(parse("version: 1\n" + PLANS))
    assert idx.plan_for("anthropic", "alice", date(2026, 3, 1)) == "claude-max"
    assert idx.plan_for("openai", "alice", date(2026, 3, 1)) == "chatgpt-pro"
    assert idx.plan_for("anthropic", "carol", date(2026, 3, 1)) == "claude-team"  # vendor: claude
    assert idx.plan_for("anthropic", "bob", date(2026, 3, 9)) is None  # seat starts on the 10th
    assert idx.plan_for("anthropic", "bob", date(2026, 3, 10)) == "claude-max"
    assert idx.plan_for("github", "alice", date(2026, 3, 1)) is None


# --- budgets ------------------------------------------------------------------------------------

BUDGETS = "organization: {name: acme, budgets: {day: 100}}\ndefaults: {user: {day: 10}}\n"


def _scopes(mode: str, extra: str = "", plan: str | None = "claude-max") -> list[str]:
    p = parse(f"version: 1\nsubscription_usage: {mode}\n{extra}{BUDGETS}{PLANS}")
    ident = Identity(user="alice", source="t", basis="subscription", plan=plan)
    return sorted({b.scope for b in BudgetBook(p).covering(ident)})


def test_covering_budgets_per_mode():
    assert _scopes("count") == ["organization:acme", "user:alice"]
    assert _scopes("ignore") == []
    sep = "subscription_budgets: {organization: {day: 50}, user: {hour: 3}, plans: {claude-max: {hour: 2}}}\n"
    assert _scopes("separate", sep) == ["subscription:organization:acme", "subscription:plan:claude-max:alice",
                                        "subscription:user:alice"]
    assert "subscription:plan:claude-max:alice" not in _scopes("separate", sep, plan=None)


def test_separate_admission_refuses_on_the_plan_cap_with_its_own_message():
    p = parse("version: 1\nsubscription_usage: separate\nsubscription_budgets: {plans: {claude-max: {hour: 1}}}\n"
              + BUDGETS + PLANS)
    book = BudgetBook(p)
    ident = Identity(user="alice", source="t", basis="subscription", plan="claude-max")
    assert book.admit(ident, D("0.8")).admitted
    d = book.admit(ident, D("0.3"))
    assert not d.admitted and d.exhausted.scope == "subscription:plan:claude-max:alice"
    msg = refusal.budget_message(d.exhausted, d.spent, datetime.now(UTC))
    assert "hourly subscription budget of plan claude-max held by alice" in msg and "notional" in msg
    assert "spendgate request --amount 0.5 --window hour --scope subscription:plan:claude-max:alice" in msg  # half the $1 limit (issue 19)
    # API traffic of the same user is not held back by it
    assert book.admit(Identity(user="alice", source="t"), D(5)).admitted


def _row(rid, ts, *, basis="api", cost=D("0.5"), charged=D("0.5"), notional=None, plan=None,
         usage=Usage(input_tokens=100_000, output_tokens=10_000), model="claude-sonnet-4-5", detail=None):
    return LedgerRow(
        ts=ts, request_id=rid, provider="anthropic", endpoint="messages", model=model, user="alice",
        key_fingerprint="sha256:000000000001", client="claude-code", session_id=None, stream=True, status=200,
        outcome="ok", estimated=False, cost_usd=cost, price_source="old", latency_ms=1.0, ttft_ms=1.0,
        charged_usd=charged, billing_basis=basis, credential="claude_oauth" if basis == "subscription" else "api_key",
        notional_usd=notional, plan=plan, price_detail=json.dumps(detail) if detail else None, **usage.as_dict(),
    )  # fmt: skip


@pytest.fixture
def con(tmp_path):
    c = connect(tmp_path / "l.duckdb")
    migrate(c)
    yield c
    c.close()


def test_rebuild_routes_subscription_rows_per_mode(con):
    now = datetime.now(UTC)
    write_rows(con, [_row("a", now, cost=D(2), charged=D(2)),
                     _row("s", now, basis="subscription", cost=D(0), charged=D(3), notional=D(3), plan="claude-max")])
    sep = parse("version: 1\nsubscription_usage: separate\nsubscription_budgets: {plans: {claude-max: {day: 9}}}\n"
                + BUDGETS + PLANS)
    book = BudgetBook(sep)
    rebuild_counters(con, book, now)
    spent = {(r["scope"], r["window"]): r["spent_usd"] for r in book.status()}
    assert spent[("user:alice", "day")] == 2.0 and spent[("organization:acme", "day")] == 2.0
    assert spent[("subscription:plan:claude-max:alice", "day")] == 3.0
    count = BudgetBook(parse("version: 1\nsubscription_usage: count\n" + BUDGETS + PLANS))
    rebuild_counters(con, count, now)
    assert {(r["scope"], r["window"]): r["spent_usd"] for r in count.status()}[("user:alice", "day")] == 5.0
    assert ledger_row_scopes(parse("version: 1\n" + PLANS), "alice", None, None, "subscription", "claude-max", datetime.now(UTC)) == []


def test_reprice_moves_notional_and_keeps_invoice_at_zero(con):
    now = datetime.now(UTC).replace(microsecond=0)
    pricer = Pricer(None)
    right = pricer.price("anthropic", "claude-sonnet-4-5", Usage(input_tokens=100_000, output_tokens=10_000), now).cost
    write_rows(con, [
        _row("counted", now - timedelta(minutes=2), basis="subscription", cost=D(0), charged=D(9), notional=D(9)),
        _row("ignored", now - timedelta(minutes=1), basis="subscription", cost=D(0), charged=D(0), notional=D(9)),
    ])  # fmt: skip
    res = reprice.run(con, pricer, now - timedelta(hours=1), dry_run=False)
    assert res["changed"] == 2
    got = {r[0]: r[1:] for r in con.execute(
        "SELECT request_id, cost_usd, notional_usd, charged_usd FROM requests").fetchall()}
    assert got["counted"] == (D(0), right, right)
    assert got["ignored"] == (D(0), right, D(0))  # not counted by budgets before: still not counted
    audit = con.execute("SELECT request_id, old_notional_usd, new_notional_usd, old_cost_usd, new_cost_usd "
                        "FROM price_audit ORDER BY request_id").fetchall()
    assert audit == [("counted", D(9), right, D(0), D(0)), ("ignored", D(9), right, D(0), D(0))]
    assert reprice.run(con, pricer, now - timedelta(hours=1), dry_run=False)["changed"] == 0


def test_explain_says_why_subscription_and_its_notional_cost(con):
    now = datetime.now(UTC)
    pr = Pricer(None).price("anthropic", "claude-sonnet-4-5", Usage(input_tokens=100_000, output_tokens=10_000), now)
    write_rows(con, [_row("s1", now, basis="subscription", cost=D(0), charged=D(0), notional=pr.cost,
                          plan="claude-max", detail=pr.detail())])
    text = "\n".join(explain_lines(reprice.request_row(con, "s1")))
    assert "billing basis: subscription (Claude sign-in OAuth token" in text
    assert "plan: claude-max" in text
    assert f"notional cost at list price ${pr.cost:,.6f}" in text and "invoiced: $0" in text
    assert "WARNING" not in text  # the lines add up to the notional cost


def test_subscription_budget_alerts_go_to_the_user_and_engineers_see_their_own():
    from spendgate.reports.dashboard import own_scopes
    from spendgate.workflow.alerts import recipients, scope_filter

    p = parse("version: 1\norganization: {name: acme, owners: [cfo]}\nsubscription_usage: separate\n"
              "subscription_budgets: {plans: {claude-max: {hour: 1}}}\n" + PLANS)
    assert recipients(p, "subscription:plan:claude-max:alice") == ("alice",)
    assert recipients(p, "subscription:user:bob") == ("bob",)
    assert recipients(p, "subscription:organization:acme") == ("cfo",)
    assert scope_filter("subscription:user:bob") == ("billing_basis = 'subscription' AND \"user\" = ?", ["bob"])
    assert {"subscription:user:alice", "subscription:plan:claude-max:alice"} <= own_scopes(p, "alice")


def test_count_with_a_counting_plan_warns_of_double_charging():
    p = parse("version: 1\nsubscription_usage: count\nplans:\n  m: {vendor: anthropic, price_usd: 1, "
              "counts_against_budgets: true, holders: [a]}\n")
    (w,) = p.warnings
    assert "charged twice" in w.message and (w.line, w.warning) == (4, True)
    assert parse("version: 1\nplans:\n  m: {vendor: anthropic, price_usd: 1, counts_against_budgets: true, "
                 "holders: [a]}\n").warnings == ()


def test_increase_request_and_grant_on_a_subscription_plan_budget(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from workflow_env import Env

    text = ("version: 1\ntimezone: UTC\norganization: {name: acme, owners: [cfo]}\nsubscription_usage: separate\n"
            "subscription_budgets: {plans: {claude-max: {hour: 1}}}\n" + PLANS)
    env = Env(tmp_path / "l.duckdb", datetime(2026, 11, 30, 9, 0, tzinfo=UTC), text)
    try:
        alice = Identity(user="alice", source="t", basis="subscription", plan="claude-max")
        assert env.spend(alice, "0.9") and not env.spend(alice, "0.5")
        scope = "subscription:plan:claude-max:alice"
        req = env.wf.approvals.request("alice", scope, "hour", "2", "long refactor")
        assert (req["limit_usd"], req["spent_usd"]) == (1, 0.9)
        env.wf.approvals.approve(req["id"], "cfo")
        assert env.spend(alice, "0.5")  # the grant raises the notional cap at once
        with pytest.raises(Exception, match="unknown scope"):
            env.wf.approvals.request("alice", "subscription:plan:claude-max", "hour", "2", "x")
    finally:
        env.close()


def test_spend_by_basis_and_plan_and_the_subscriptions_query(con):
    from spendgate.reports import queries

    now = datetime.now(UTC)
    write_rows(con, [_row("a", now, cost=D(2), charged=D(2)),
                     _row("s", now, basis="subscription", cost=D(0), charged=D(0), notional=D(3), plan="claude-max"),
                     _row("t", now, basis="subscription", cost=D(0), charged=D(0), notional=D(1))])
    by_basis = {r["group"]: (r["cost_usd"], r["notional_usd"], r["requests"]) for r in queries.spend(con, "basis")}
    assert by_basis == {"api": (2.0, 0.0, 1), "subscription": (0.0, 4.0, 2)}
    by_plan = {r["group"]: r["notional_usd"] for r in queries.spend(con, "plan")}
    assert by_plan == {"(api)": 0.0, "claude-max": 3.0, "(no plan)": 1.0}
    subs = [(r["plan"], r["requests"], r["notional_usd"]) for r in queries.subscriptions(con)]
    assert subs == [("claude-max", 1, 3.0), ("(no plan)", 1, 1.0)]


def test_status_lists_each_holders_plan_cap_before_any_use():
    p = parse("version: 1\norganization: {name: acme}\nsubscription_usage: separate\n"
              "subscription_budgets: {organization: {day: 50}, plans: {claude-max: {hour: 2}}}\n" + PLANS)
    rows = {(r["scope"], r["window"]): r for r in BudgetBook(p).status()}
    assert rows[("subscription:plan:claude-max:alice", "hour")]["limit_usd"] == 2.0
    assert rows[("subscription:plan:claude-max:bob", "hour")]["spent_usd"] == 0.0
    assert rows[("subscription:organization:acme", "day")]["limit_usd"] == 50.0
    assert not any(s.startswith("subscription:plan:chatgpt-pro") for s, _ in rows)  # no cap on that plan


def test_query_string_key_is_an_api_key_but_other_params_are_not():
    gem = "/v1beta/models/gemini-2.5-flash:generateContent"
    assert billing.classify("generativelanguage.googleapis.com", gem + "?key=AIza", {}).credential == "api_key"
    assert billing.classify("generativelanguage.googleapis.com", gem + "?cache_key=x", {}).credential == "none"


def test_subscriptions_route_pages_the_list_and_totals_every_row(con):
    """/api/subscriptions answers one page (top by notional USD) plus totals over all rows; pages
    joined in order are the whole list `queries.subscriptions` gives, and bad paging is a 400."""
    import dataclasses

    from spendgate.reports import queries
    from spendgate.reports.registry import run_query

    now = datetime.now(UTC)
    write_rows(con, [dataclasses.replace(_row(f"s{i}", now, basis="subscription", cost=D(0), charged=D(0),
                                              notional=D(i + 1) / 4, plan="claude-max" if i % 2 else None),
                                         user=f"u{i % 7}") for i in range(30)]
               + [_row("a", now, cost=D(5), charged=D(5))])
    whole = queries.subscriptions(con)
    assert len(whole) == 14  # 7 users x (plan, no plan); the API row is not subscription usage
    first = run_query(con.cursor(), "subscriptions", {"limit": "5"})
    assert first["rows"] == whole[:5] and first["count"] == 14 and first["more"] == 9
    assert first["totals"]["requests"] == 30 and first["totals"]["users"] == 7 and first["totals"]["plans"] == 2
    assert first["totals"]["notional_usd"] == pytest.approx(sum(r["notional_usd"] for r in whole))
    assert first["totals"]["input_tokens"] == sum(r["input_tokens"] for r in whole)
    pages = [run_query(con.cursor(), "subscriptions", {"top": "4", "offset": str(o)}) for o in range(0, 20, 4)]
    assert [r for p in pages for r in p["rows"]] == whole
    assert pages[-1]["rows"] == [] and pages[-1]["more"] == 0 and pages[-1]["totals"] == first["totals"]
    assert len(run_query(con.cursor(), "subscriptions", {})["rows"]) == 14  # default page: 50
    assert run_query(con.cursor(), "subscriptions", {"user": "u3"})["count"] == 2
    for bad in ({"limit": "0"}, {"limit": "x"}, {"offset": "-1"}, {"limit": str(queries.SUBSCRIPTIONS_MAX + 1)}):
        with pytest.raises(ValueError):
            run_query(con.cursor(), "subscriptions", bad)
