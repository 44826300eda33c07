"""Runway rules: parsing with positions, which rules cover whom, model rules, token buckets, step-downs."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendgate.budgets.book import BudgetBook
from spendgate.budgets.runway import (
    Limited,
    RateLimiter,
    Ticket,
    cannot_serve,
    check_targets,
    covering,
    model_denial,
    step_down,
)
from spendgate.cli import main
from spendgate.identity import Identity
from spendgate.policy.model import PolicyError, parse, positioned
from spendgate.pricing.rates import Pricer

HEAD = "version: 1\ntimezone: UTC\norganization: {name: acme}\nworkspaces: {interns: {members: ['*@interns.acme.com']}}\n"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def pol(body: str):
    return parse(HEAD + body, "p.yaml", today=NOW.date())


ALICE = Identity(user="alice@acme.com", source="proxy_auth")
INTERN = Identity(user="ivy@interns.acme.com", source="proxy_auth", workspaces=("interns",))


def test_sections_parse_and_bad_rules_are_positioned():
    with pytest.raises(PolicyError) as err:  # shape first (the schema) ...
        pol("""step_down:
  - {scope: defaults, at: 180, models: {x: y}}
rate_limits:
  - {scope: defaults}
""")
    text = str(err.value)
    assert "p.yaml:6:27: step_down[0].at must be a percent (0 < at <= 100, e.g. 80 or \"80%\") or cap, not 180" in text
    assert "p.yaml:8:5: rate_limits[0] needs requests_per_minute, requests_per_day or tokens_per_minute" in text
    with pytest.raises(PolicyError) as err:  # ... then what a schema cannot say
        pol("""step_down:
  - {scope: workspace:nope, at: 80, models: {a: b}}
  - {scope: defaults, at: "180%", models: {x: x}}
rate_limits:
  - {scope: team:x, requests_per_minute: 5}
""")
    text = str(err.value)
    assert "p.yaml:6:13: scope 'workspace:nope': workspace 'nope' is not defined" in text
    assert "p.yaml:7:27: at must be a percent between 0 and 100 (e.g. 80) or cap, not '180%'" in text
    assert "steps down to itself" in text
    assert "unknown scope 'team:x'" in text


def test_a_user_rule_replaces_defaults_and_workspace_rules_add():
    p = pol("""models:
  - {scope: defaults, deny: ["claude-opus-*"]}
  - {scope: "user:Alice@acme.com", allow: ["claude-*"]}
  - {scope: workspace:interns, deny: ["gpt-5-pro*"], contact: lead@acme.com}
  - {scope: organization, deny: ["o1-pro*"]}
""")
    assert [r.index for r in covering(p.runway.models, ALICE)] == [1, 3]  # names compare case-insensitively
    assert [r.index for r in covering(p.runway.models, INTERN)] == [0, 2, 3]
    assert model_denial(p, ALICE, "claude-opus-4-1") is None  # her own rule allows claude-*
    assert "not in the allow list of models[1]" in model_denial(p, ALICE, "gpt-5").message
    d = model_denial(p, INTERN, "gpt-5-pro-2026")
    assert "denied by models[2] for workspace:interns (deny 'gpt-5-pro*')" in d.message
    assert "ask lead@acme.com" in d.message
    assert model_denial(p, INTERN, "o1-pro").rule.scope == "organization"
    assert model_denial(p, INTERN, None) is None


def test_token_buckets_refuse_then_refill_and_settle_corrects_tokens():
    p = pol("""rate_limits:
  - {scope: defaults, requests_per_minute: 2, tokens_per_minute: 1000}
  - {scope: workspace:interns, requests_per_day: 3}
""")
    t = [0.0]
    lim = RateLimiter(clock=lambda: t[0])
    a, b = lim.admit(p, ALICE, 100), lim.admit(p, ALICE, 100)
    assert isinstance(a, Ticket) and isinstance(b, Ticket)
    refused = lim.admit(p, ALICE, 100)
    assert isinstance(refused, Limited)
    assert (refused.scope, refused.kind, refused.retry_after) == ("user:alice@acme.com", "requests_per_minute", 30)
    t[0] = 30.0  # one request refilled
    assert isinstance(lim.admit(p, ALICE, 100), Ticket)
    # a large actual usage puts the token bucket in debt: refused until it refills
    t[0] = 120.0
    big = lim.admit(p, ALICE, 10)
    lim.settle(big, 5000)
    again = lim.admit(p, ALICE, 10)
    assert isinstance(again, Limited) and again.kind == "tokens_per_minute"
    # the workspace bucket is shared by its members; the day limit refills slowly
    for i in range(3):
        t[0] = 200.0 + 60 * i  # past the per-minute limit each time
        assert isinstance(lim.admit(p, INTERN, 1), Ticket)
    t[0] = 400.0
    day = lim.admit(p, INTERN, 1)
    assert isinstance(day, Limited) and (day.scope, day.kind) == ("workspace:interns", "requests_per_day")
    assert day.retry_after > 20_000  # 3 a day: one more every 8 hours
    left = {(s["scope"], s["kind"]): s["remaining"] for s in lim.state()}
    assert left[("workspace:interns", "requests_per_day")] == 0


def test_step_down_triggers_past_the_threshold_of_the_rule_scope():
    p = pol("""defaults: {user: {day: 10}}
step_down:
  - {scope: defaults, at: 80%, window: day, models: {"claude-opus-*": claude-sonnet-4-5}}
  - {scope: defaults, at: cap, models: {"claude-sonnet-*": claude-3-5-haiku-latest}}
""")
    book = BudgetBook(p, now=lambda: NOW)
    budgets = book.covering(ALICE, NOW)
    assert step_down(p, book, ALICE, "claude-opus-4-1", budgets) is None
    day = next(b for b in budgets if b.window == "day" and b.scope == "user:alice@acme.com")
    book.store.add(day.key, Decimal("8"))
    choice = step_down(p, book, ALICE, "claude-opus-4-1", book.covering(ALICE, NOW))
    assert (choice.target, choice.rule.index, choice.budget.window) == ("claude-sonnet-4-5", 0, "day")
    assert "past 80%" in choice.reason
    # a cap rule only answers a refusal by its budget
    assert step_down(p, book, ALICE, "claude-sonnet-4-5", budgets) is None
    cap = step_down(p, book, ALICE, "claude-sonnet-4-5", budgets, refused_by=day)
    assert cap.target == "claude-3-5-haiku-latest" and "at its cap" in cap.reason


def test_targets_are_priced_cheaper_and_same_provider(tmp_path):
    pricer = Pricer()
    p = pol("""step_down:
  - {scope: defaults, at: 80, models: {"claude-opus-*": claude-sonnet-4-5}}
  - {scope: defaults, at: 80, models: {"claude-3-5-haiku*": claude-opus-4-1}}
  - {scope: defaults, at: 80, models: {"gpt-5": claude-3-5-haiku-latest}}
  - {scope: defaults, at: 80, models: {"gpt-5": gpt-imaginary}}
""")
    found = dict((path[1], msg) for path, msg in check_targets(p, pricer, NOW))
    assert 0 not in found
    assert "'claude-opus-4-1' is not cheaper than 'claude-3-5-haiku" in found[1]
    assert "crosses providers" in found[2]
    assert "'gpt-imaginary' is not in the price catalogue" in found[3]
    assert cannot_serve(pricer, "openai", "gpt-4o-mini", 150_000, 1000).startswith("the request (~150000 input")
    assert cannot_serve(pricer, "openai", "gpt-4o-mini", 1000, 1000) is None
    # `spendgate policy check` places them at the rule's position
    f = tmp_path / "p.yaml"
    f.write_text(HEAD + "step_down:\n  - {scope: defaults, at: 80, models: {\"gpt-5\": gpt-imaginary}}\n")
    probs = positioned(parse(f.read_text(), str(f)), check_targets(parse(f.read_text(), str(f)), pricer, NOW))
    line = f.read_text().splitlines()[5]
    assert (probs[0].line, probs[0].col) == (6, line.index('"gpt-5"') + 1)


def test_policy_check_reports_runway_targets(tmp_path, capsys):
    f = tmp_path / "p.yaml"
    f.write_text(HEAD + "step_down:\n  - {scope: defaults, at: 80, models: {\"claude-3-5-haiku*\": claude-opus-4-1}}\n")
    assert main(["policy", "check", str(f)]) == 1
    out = capsys.readouterr().out
    assert f"{f}:6:" in out and "is not cheaper than" in out


def test_explain_and_in_force_say_when_a_model_was_substituted():
    from spendgate.budgets.runway import step_downs_in_force
    from spendgate.cli.prices import explain_lines

    row = {"request_id": "r-1", "ts": "2026-11-30T12:00:00Z", "user": "alice", "client": "claude-code",
           "provider": "anthropic", "endpoint": "messages", "model": "claude-sonnet-4-5", "outcome": "ok",
           "requested_model": "claude-opus-4-1", "price_source": "x", "cost_usd": 0.01, "charged_usd": 0.01}
    text = "\n".join(explain_lines(row))
    assert "the client asked for claude-opus-4-1; a step-down rule ran claude-sonnet-4-5 instead" in text
    p = pol("""defaults: {user: {day: 10}}
step_down:
  - {scope: defaults, at: 80, window: day, models: {"claude-opus-*": claude-sonnet-4-5}}
""")
    rows = [{"scope": "user:alice", "window": "day", "limit_usd": 10.0, "granted_usd": 0.0, "spent_usd": 8.5,
             "reserved_usd": 0.0, "resets_at": "2026-12-01T00:00:00Z"},
            {"scope": "user:bob", "window": "day", "limit_usd": 10.0, "granted_usd": 0.0, "spent_usd": 1.0,
             "reserved_usd": 0.0, "resets_at": "2026-12-01T00:00:00Z"}]
    (only,) = step_downs_in_force(p, rows)
    assert only["scope"] == "user:alice" and only["message"] == (
        "claude-opus-* -> claude-sonnet-4-5 until 00:00 UTC because the day budget of user:alice is past 80% "
        "(85% used)")
