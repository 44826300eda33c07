"""BudgetBook.covering caches the policy part per identity: the answer is always the uncached one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from spendgate.budgets.book import BudgetBook
from spendgate.identity import Identity
from spendgate.policy.model import parse
from spendgate.workflow.approvals import Grant, GrantBook

POLICY = """\
version: 1
timezone: America/New_York
organization: {name: acme, budgets: {month: 1000}}
defaults:
  user: {hour: 2, day: 3, week: 10, month: 20}
  key: {day: 100}
users:
  bob@core.acme.com: {budgets: {day: 50}, until: 2026-11-29}
workspaces:
  core: {members: ["*@core.acme.com"], budgets: {day: 4}}
"""

BOB = Identity(user="bob@core.acme.com", source="test", key_fingerprint="sha256:aaaaaaaaaaaa", workspaces=("core",))


def fresh(book: BudgetBook, who: Identity, now: datetime) -> list:
    """What covering() gives without any cache (a new book over the same policy and grants)."""
    other = BudgetBook(book.policy, grants=book.grants)
    return other.covering(who, now)


def test_cached_answer_follows_windows_days_grants_and_policy() -> None:
    grants = GrantBook()
    book = BudgetBook(parse(POLICY, "p.yaml"), grants=grants.total)
    book.grant_index = grants.live_scopes
    t = datetime(2026, 11, 29, 15, 59, 59, tzinfo=UTC)
    for step in (0, 1, 3600, 6 * 3600, 86400, 7 * 86400, -86400):  # hour, day (the exception ends), week
        now = t + timedelta(seconds=step)
        assert book.covering(BOB, now) == fresh(book, BOB, now), step
        assert book.covering(BOB, now) == fresh(book, BOB, now), step  # the cached answer too
    now = t
    day = next(b for b in book.covering(BOB, now) if b.scope.startswith("user") and b.window == "day")
    assert day.limit == Decimal(50)  # the exception holds on its last day (New York time)
    grants.add(Grant("g1", "r1", "user:bob@core.acme.com", "day", Decimal(5), now - timedelta(hours=1),
                     now + timedelta(hours=1), "lead"))  # fmt: skip
    day = next(b for b in book.covering(BOB, now) if b.scope.startswith("user") and b.window == "day")
    assert (day.limit, day.granted) == (Decimal(55), Decimal(5))  # a new grant counts at once
    later = now + timedelta(hours=2)
    assert book.covering(BOB, later) == fresh(book, BOB, later)  # ... and stops when it ends
    book.policy = parse(POLICY.replace("day: 50", "day: 9"), "p.yaml")
    day = next(b for b in book.covering(BOB, later) if b.scope.startswith("user") and b.window == "day")
    assert day.limit == Decimal(9)  # a reloaded policy is read at once


def test_without_a_grant_index_every_budget_asks_for_grants() -> None:
    asked = []

    def grants(scope: str, window: str, now: datetime) -> Decimal:
        asked.append((scope, window))
        return Decimal(1)

    book = BudgetBook(parse(POLICY, "p.yaml"), grants=grants)
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    for _ in range(2):
        budgets = book.covering(BOB, now)
        assert all(b.granted == 1 for b in budgets)
    assert len(asked) == 2 * len(budgets)
