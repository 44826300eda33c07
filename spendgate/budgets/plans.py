"""Fixed-cost plans (seats): a monthly Claude plan per engineer, a Cursor or Copilot seat.

Declared in the policy's `plans:` section. A seat costs its plan's price spread evenly over the
days of each calendar month (or year), so a full month costs exactly the price and a seat held
across a month boundary pays each month's share at that month's daily rate. Plans count against
budgets only when the plan says `counts_against_budgets: true` (default: no).

    plans:
      claude-max:
        vendor: anthropic
        price_usd: 200
        per: month            # month | year
        counts_against_budgets: false
        holders:
          - alice@example.com
          - {user: bob@example.com, from: 2026-01-20, until: 2026-02-10}
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.policy.model import Policy

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Seat:
    user: str
    start: date | None = None  # first day held (inclusive)
    end: date | None = None  # last day held (inclusive)


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    price: Decimal
    per: str  # "month" | "year"
    vendor: str | None
    seats: tuple[Seat, ...]
    counts_against_budgets: bool = False
    start: date | None = None
    end: date | None = None


def _d(v: Any) -> date | None:
    return date.fromisoformat(str(v)) if v else None


def parse_plans(raw: dict[str, Any] | None) -> dict[str, Plan]:
    """The policy's `plans:` mapping -> Plans (shape already checked by the JSON Schema)."""
    out = {}
    for name, p in (raw or {}).items():
        seats = []
        for h in p.get("holders") or []:
            if isinstance(h, str):
                seats.append(Seat(h))
            else:
                seats.append(Seat(h["user"], _d(h.get("from")), _d(h.get("until"))))
        out[name] = Plan(
            name, Decimal(str(p["price_usd"])), p.get("per", "month"), p.get("vendor"), tuple(seats),
            bool(p.get("counts_against_budgets", False)), _d(p.get("from")), _d(p.get("until")),
        )  # fmt: skip
    return out


def plans_of(policy: Policy) -> dict[str, Plan]:
    return parse_plans(policy.raw.get("plans"))


def daily_rate(plan: Plan, day: date) -> Decimal:
    """One seat-day: the price over the days of the month (or year) that day falls in."""
    if plan.per == "year":
        return plan.price / (366 if calendar.isleap(day.year) else 365)
    return plan.price / calendar.monthrange(day.year, day.month)[1]


def _held(plan: Plan, seat: Seat, day: date) -> bool:
    for lo in (plan.start, seat.start):
        if lo and day < lo:
            return False
    for hi in (plan.end, seat.end):
        if hi and day > hi:
            return False
    return True


def seat_days(plan: Plan, first: date, last: date) -> Iterator[tuple[Seat, date, Decimal]]:
    """Every (seat, day, prorated cost) from `first` to `last`, both inclusive."""
    day = first
    while day <= last:
        rate = daily_rate(plan, day)
        for seat in plan.seats:
            if _held(plan, seat, day):
                yield seat, day, rate
        day += timedelta(days=1)


def plan_spend(policy: Policy, first: date, last: date, by: str = "user") -> list[dict[str, Any]]:
    """Prorated plan cost per user (or workspace, or plan) over [first, last]."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for plan in plans_of(policy).values():
        for seat, _day, amount in seat_days(plan, first, last):
            if by == "plan":
                groups = [plan.name]
            elif by == "workspace":
                groups = list(policy.workspaces_of(seat.user)) or ["(none)"]
            else:
                groups = [seat.user]
            for g in groups:
                s = acc.setdefault((g, plan.name), {"group": g, "plan": plan.name, "vendor": plan.vendor,
                                                    "seat_days": 0, "cost_usd": ZERO,
                                                    "counts_against_budgets": plan.counts_against_budgets})
                s["seat_days"] += 1
                s["cost_usd"] += amount
    rows = sorted(acc.values(), key=lambda r: (-r["cost_usd"], r["group"], r["plan"]))
    for r in rows:
        r["cost_usd"] = float(round(r["cost_usd"], 6))
    return rows


# --- budgets -------------------------------------------------------------------------------------

CounterKey = tuple[str, str, datetime]


def budget_charges(policy: Policy, now: datetime) -> dict[CounterKey, Decimal]:
    """What counting plans add to each current day/week/month counter (hours: not prorated)."""
    tz = policy.timezone
    today = now.astimezone(tz).date()
    out: dict[CounterKey, Decimal] = defaultdict(lambda: ZERO)
    counting = [p for p in plans_of(policy).values() if p.counts_against_budgets]
    if not counting:
        return {}
    for window in WINDOWS:
        if window == "hour":
            continue
        start, _end = bounds(window, now, tz)
        first = start.astimezone(tz).date()
        for plan in counting:
            for seat, _day, amount in seat_days(plan, first, today):
                scopes = [f"organization:{policy.org_name}", f"user:{seat.user}"]
                scopes += [f"workspace:{w}" for w in policy.workspaces_of(seat.user)]
                for scope in scopes:
                    out[(scope, window, start)] += amount
    return dict(out)


class PlanCharger:
    """Keeps budget counters in step with counting plans: adds only what changed since last time.

    Called at start-up and then periodically (a new day adds that day's seat cost; a plan edited
    to stop counting takes its charge back).
    """

    def __init__(self) -> None:
        self.applied: dict[CounterKey, Decimal] = {}

    def apply(self, policy: Policy, store: Any, now: datetime) -> int:
        wanted = budget_charges(policy, now)
        current = {(w, bounds(w, now, policy.timezone)[0]) for w in WINDOWS}
        changed = 0
        for key in set(wanted) | {k for k in self.applied if (k[1], k[2]) in current}:
            delta = wanted.get(key, ZERO) - self.applied.get(key, ZERO)
            if delta:
                store.add(key, delta)
                changed += 1
        self.applied = {k: v for k, v in wanted.items() if v}
        return changed
