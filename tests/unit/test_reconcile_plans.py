"""Seat plans: proration per day (across month boundaries), budgets only when the policy says so."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from spendgate.budgets.book import MemoryCounters
from spendgate.budgets.plans import (
    PlanCharger,
    budget_charges,
    parse_plans,
    plan_spend,
    seat_days,
)
from spendgate.budgets.windows import bounds
from spendgate.policy.model import PolicyError, parse

POLICY = """\
version: 1
workspaces:
  platform: {members: [alice, bob]}
plans:
  claude-max:
    vendor: anthropic
    price_usd: 200
    holders:
      - alice
      - {user: bob, from: 2026-01-20, until: 2026-02-10}
  copilot:
    vendor: github
    price_usd: 228
    per: year
    holders: [carol]
"""


def test_proration_across_a_month_boundary():
    policy = parse(POLICY)
    rows = {(r["group"], r["plan"]): r for r in plan_spend(policy, date(2026, 1, 1), date(2026, 2, 28))}
    bob = rows[("bob", "claude-max")]
    # 12 days of January at 200/31 a day, 10 days of February at 200/28 a day
    expected = Decimal(200) / 31 * 12 + Decimal(200) / 28 * 10
    assert bob["seat_days"] == 22
    assert bob["cost_usd"] == float(round(expected, 6)) == 148.847926
    alice = rows[("alice", "claude-max")]
    assert (alice["seat_days"], alice["cost_usd"]) == (59, 400.0)  # two full months: exactly twice the price
    carol = rows[("carol", "copilot")]
    assert carol["cost_usd"] == float(round(Decimal(228) / 365 * 59, 6))


def test_plans_per_workspace_and_per_plan():
    policy = parse(POLICY)
    ws = {r["group"]: r["cost_usd"] for r in plan_spend(policy, date(2026, 2, 1), date(2026, 2, 28), by="workspace")}
    assert ws == {"platform": round(200 + 200 / 28 * 10, 6), "(none)": round(228 / 365 * 28, 6)}
    per_plan = {r["group"] for r in plan_spend(policy, date(2026, 2, 1), date(2026, 2, 1), by="plan")}
    assert per_plan == {"claude-max", "copilot"}


def test_seat_days_respect_plan_dates():
    (plan,) = parse_plans({"p": {"price_usd": 30, "from": "2026-04-10", "until": "2026-04-11",
                                 "holders": ["x"]}}).values()  # fmt: skip
    days = [(s.user, d, a) for s, d, a in seat_days(plan, date(2026, 4, 1), date(2026, 4, 30))]
    assert days == [("x", date(2026, 4, 10), Decimal(1)), ("x", date(2026, 4, 11), Decimal(1))]


def test_plans_count_against_budgets_only_when_asked():
    now = datetime(2026, 3, 15, 9, tzinfo=UTC)
    policy = parse(POLICY)
    assert budget_charges(policy, now) == {}  # default: plans are reported, not charged
    counting = parse(POLICY.replace("    vendor: anthropic\n", "    vendor: anthropic\n    counts_against_budgets: true\n"))
    store, charger = MemoryCounters(), PlanCharger()
    charger.apply(counting, store, now)
    month = bounds("month", now, counting.timezone)[0]
    day = bounds("day", now, counting.timezone)[0]
    spent = lambda scope, window, start: round(store.get((scope, window, start)).spent, 9)  # noqa: E731
    assert spent("user:alice", "month", month) == round(Decimal(200) / 31 * 15, 9)
    assert spent("user:alice", "day", day) == round(Decimal(200) / 31, 9)
    assert spent("workspace:platform", "day", day) == round(Decimal(200) / 31, 9)  # bob's seat has ended
    charger.apply(counting, store, now)  # re-applying changes nothing
    assert spent("user:alice", "month", month) == round(Decimal(200) / 31 * 15, 9)
    charger.apply(policy, store, now)  # the policy stops counting plans: the charge is taken back
    assert spent("user:alice", "month", month) == 0


def test_plan_shape_errors_name_the_line():
    with pytest.raises(PolicyError) as e:
        parse("version: 1\nplans:\n  x:\n    holders: [a]\n    price: 3\n")
    text = str(e.value)
    assert "<policy>:3:" in text or "<policy>:4:" in text or "<policy>:5:" in text, text
    assert "price" in text
