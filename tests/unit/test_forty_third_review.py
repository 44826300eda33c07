"""Forty-third review, the new user's findings fixed here (the attacker's are in
tests/attacks/test_forty_third_review.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from spendgate.budgets.book import Budget
from spendgate.policy.model import parse


def test_a_model_glob_that_matches_no_model_is_warned_about():
    """A mistyped deny rule (`claude-opuss-*`) denied nothing and `policy check` said ok."""
    from spendgate.budgets.runway import unmatched_globs
    from spendgate.pricing.rates import Pricer

    policy = parse("""version: 1
timezone: UTC
workspaces: {data: {members: [bob]}}
models:
  - {scope: workspace:data, deny: ["claude-opuss-*", "claude-opus-*", "models/gemini-2.5-pro"], allow: ["gpt-9-*"]}
typical_output_tokens: {"claude-sonet-*": 2000, "claude-sonnet-*": 3000, "*": 4096}
""")
    found = unmatched_globs(policy, Pricer())
    assert [path for path, _ in found] == [("models", 0, "allow", 0), ("models", 0, "deny", 0),
                                           ("typical_output_tokens", "claude-sonet-*")]
    assert "'claude-opuss-*' matches no model in the price catalogue" in found[1][1]


def test_policy_check_prints_the_warning_at_its_place_and_still_passes(tmp_path, capsys):
    from spendgate.cli import main

    p = tmp_path / "p.yaml"
    p.write_text("version: 1\ntimezone: UTC\nmodels:\n  - {scope: organization, deny: [claude-opuss-*]}\n")
    assert main(["policy", "check", str(p)]) == 0
    out = capsys.readouterr().out
    assert f"{p}:4:34: warning: models[0].deny: 'claude-opuss-*' matches no model" in out


def test_an_alert_well_past_its_threshold_says_where_spend_stands():
    """"reached 80% of the daily budget ($0.307 of $0.200)" read as 80%; it was 153%."""
    from spendgate.workflow.alerts import Crossing, message

    now = datetime(2026, 12, 5, 12, tzinfo=UTC)
    b = Budget("user:bob", "day", Decimal("0.200"), now.replace(hour=0), now.replace(hour=0) + timedelta(days=1))
    step = message(Crossing(b, "step_down", Decimal(80), Decimal("0.307"), detail="a -> b"), now)
    assert "reached 80% of the daily budget, now 154% (" in step
    assert ", now" not in message(Crossing(b, "threshold", Decimal(80), Decimal("0.161")), now)  # 81%: said already


def test_the_example_policy_is_never_used_silently(capsys, monkeypatch):
    """`spendgate budgets --store URL` without --policy showed the example's limits as if they were
    the company's, and `spendgate request` judged a request by them."""
    from spendgate.cli import source

    monkeypatch.delenv("SPENDGATE_POLICY", raising=False)
    monkeypatch.setattr(source, "_told", False)
    assert source.default_policy().name == "example.yaml"
    source.default_policy()
    err = capsys.readouterr().err
    assert err.count("using the example policy") == 1 and "pass --policy FILE" in err
    monkeypatch.setenv("SPENDGATE_POLICY", "/etc/spendgate/policy.yaml")
    monkeypatch.setattr(source, "_told", False)
    assert str(source.default_policy()) == "/etc/spendgate/policy.yaml" and capsys.readouterr().err == ""


def test_an_unknown_route_is_404_for_an_engineer_too():
    """`spendgate.local/api/doesnotexist` answered "is for administrators; you can see your own spend"."""
    from spendgate.web.caller import Caller
    from tests.unit.test_dashboard_web import make_app, req

    app = make_app()
    alice = Caller("alice", admin=False)
    assert app.handle(req(target="/api/doesnotexist", ambient=alice)).status == 404
    assert app.handle(req(target="/api/secret", ambient=alice)).status == 403  # a real admin route


def test_store_status_on_an_unmigrated_store_says_what_to_run(pg_url, capsys):
    from spendgate.cli import main

    assert main(["store", "status", "--store", pg_url]) == 1
    err = capsys.readouterr().err
    assert "run `spendgate store migrate --store URL`" in err


def test_a_value_the_loader_cannot_read_is_reported_once():
    """An impossible date was reported twice at one place: unreadable, then "not a date"."""
    import pytest

    from spendgate.policy.model import PolicyError

    with pytest.raises(PolicyError) as e:
        parse("version: 1\ntimezone: UTC\nusers:\n  bob: {budgets: {day: 5}, until: 2027-13-01}\n"
              "defaults:\n  user: {weak: 5}\n")
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and "month must be in 1..12" in lines[0] and "unknown key 'weak'" in lines[1], lines


def test_the_counters_decide_as_the_rule_says_whatever_the_numbers():
    """MemoryCounters.try_reserve takes a shortcut when every worst case fits; it must decide as
    book.in_flight_refusal (the rule PostgreSQL's spendgate_admit runs too) in every case."""
    import random

    from spendgate.budgets.book import Counter, MemoryCounters, in_flight_refusal

    rnd = random.Random(43)
    now = datetime(2026, 12, 5, 12, tzinfo=UTC)
    cents = [Decimal(0), Decimal("0.01"), Decimal("0.5"), Decimal(1), Decimal("1.5"), Decimal(2)]
    for _ in range(3000):
        spent, reserved, exposure, amount, extra, limit = (rnd.choice(cents) for _ in range(6))
        counters = MemoryCounters()
        b = Budget("user:a", "day", limit, now.replace(hour=0), now.replace(hour=0) + timedelta(days=1))
        if rnd.random() < 0.8:  # else: no counter yet
            counters._c[b.key] = Counter(spent, reserved, exposure)
        else:
            spent = reserved = exposure = Decimal(0)
        got = counters.try_reserve([b], amount, None, extra)
        want = in_flight_refusal(spent, reserved, exposure, amount, extra, limit)
        assert (got.refused is None) == (want is None) and (got.refused is None or got.waiting == want), \
            (spent, reserved, exposure, amount, extra, limit, got, want)
