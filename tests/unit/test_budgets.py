import threading
from datetime import UTC, datetime
from decimal import Decimal

from spendgate.budgets.book import BudgetBook
from spendgate.identity import Identity
from spendgate.policy.model import parse

POLICY = """\
version: 1
timezone: America/New_York
organization: {name: acme, budgets: {month: 1000}}
defaults:
  user: {hour: 2, day: 3, week: 10, month: 20}
  key: {day: 100}
workspaces:
  core: {members: ["*@core.acme.com"], budgets: {day: 4}}
"""


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def book_at(t: datetime) -> tuple[BudgetBook, Clock]:
    clock = Clock(t)
    return BudgetBook(parse(POLICY, "p.yaml"), now=clock), clock


ALICE = Identity(user="alice@core.acme.com", source="test", key_fingerprint="sha256:aaaaaaaaaaaa", workspaces=("core",))
BOB = Identity(user="bob@core.acme.com", source="test", workspaces=("core",))


def spend(book, who, amount):
    d = book.admit(who, Decimal(amount))
    assert d.admitted, d
    book.settle(d.reservation, Decimal(amount))
    return d


def test_covering_budgets_all_scopes_most_restrictive_wins():
    book, _ = book_at(datetime(2026, 11, 29, 15, tzinfo=UTC))
    scopes = {(b.scope, b.window) for b in book.covering(ALICE)}
    assert scopes == {
        ("organization:acme", "month"),
        ("workspace:core", "day"),
        ("user:alice@core.acme.com", "hour"),
        ("user:alice@core.acme.com", "day"),
        ("user:alice@core.acme.com", "week"),
        ("user:alice@core.acme.com", "month"),
        ("key:sha256:aaaaaaaaaaaa", "day"),
    }
    spend(book, ALICE, "1.9")
    d = book.admit(ALICE, Decimal("0.2"))  # hourly $2 is the tightest
    assert not d.admitted and d.exhausted.scope == "user:alice@core.acme.com" and d.exhausted.window == "hour"
    assert d.spent == Decimal("1.9")


def test_workspace_budget_is_shared_by_members():
    book, clock = book_at(datetime(2026, 11, 29, 15, tzinfo=UTC))
    for h in range(3):
        clock.t = datetime(2026, 11, 29, 14 + h, tzinfo=UTC)
        spend(book, ALICE, "0.9")
    clock.t = datetime(2026, 11, 29, 17, tzinfo=UTC)
    spend(book, BOB, "0.9")  # workspace day: 3.6 of 4
    d = book.admit(BOB, Decimal("0.5"))
    assert not d.admitted and d.exhausted.scope == "workspace:core"


def test_hour_rollover_resets_exactly_at_the_boundary():
    book, clock = book_at(datetime(2026, 11, 29, 15, 59, 59, 999000, tzinfo=UTC))
    spend(book, BOB, "2")
    assert not book.admit(BOB, Decimal("0.01")).admitted
    clock.t = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)
    assert book.admit(BOB, Decimal("0.01")).admitted


def test_day_rollover_uses_policy_time_zone():
    # New York midnight is 05:00 UTC in winter: 04:59 UTC still belongs to the old day.
    book, clock = book_at(datetime(2026, 11, 30, 2, 0, tzinfo=UTC))
    for hour in (2, 3, 4):
        clock.t = datetime(2026, 11, 30, hour, 0, tzinfo=UTC)
        spend(book, BOB, "1")
    clock.t = datetime(2026, 11, 30, 4, 59, tzinfo=UTC)
    d = book.admit(BOB, Decimal("0.1"))
    assert not d.admitted and d.exhausted.window == "day"
    assert d.resets_at == datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
    clock.t = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
    assert book.admit(BOB, Decimal("0.1")).admitted


def test_week_and_month_rollover():
    # Sunday 2026-11-29 in New York; the week resets Monday 05:00 UTC, the month Dec 1 05:00 UTC.
    book, clock = book_at(datetime(2026, 11, 29, 12, tzinfo=UTC))
    for day in range(23, 30):  # Mon..Sun, $1.4 a day: week 9.8 of 10
        clock.t = datetime(2026, 11, day, 12, tzinfo=UTC)
        spend(book, BOB, "1.4")
    clock.t = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)  # still Sunday in New York
    d = book.admit(BOB, Decimal("0.5"))
    assert not d.admitted and d.exhausted.window == "week"
    clock.t = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)  # Monday in New York: a new week
    assert book.admit(BOB, Decimal("0.5")).admitted

    def month_spent(t):
        clock.t = t
        month = next(b for b in book.covering(BOB) if b.window == "month" and b.scope.startswith("user"))
        return book.store.get(month.key).spent, month.end

    # November (local) still holds the week's spend until 05:00 UTC on December 1st
    assert month_spent(datetime(2026, 12, 1, 4, 59, tzinfo=UTC)) == (Decimal("9.8"), datetime(2026, 12, 1, 5, tzinfo=UTC))
    assert month_spent(datetime(2026, 12, 1, 5, 0, tzinfo=UTC))[0] == 0


def test_concurrent_burst_never_overshoots():
    book, _ = book_at(datetime(2026, 11, 29, 15, tzinfo=UTC))
    admitted: list = []
    barrier = threading.Barrier(40)

    def worker():
        barrier.wait()
        d = book.admit(BOB, Decimal("0.2"))
        if d.admitted:
            admitted.append(d)

    threads = [threading.Thread(target=worker) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 10  # $2 hourly cap / $0.20 reservations
    for d in admitted:
        book.settle(d.reservation, Decimal("0.2"))
    hour = next(b for b in book.covering(BOB) if b.window == "hour" and b.scope.startswith("user"))
    c = book.store.get(hour.key)
    assert c.spent == Decimal("2.0") and c.reserved == 0


def test_settle_replaces_reservation_with_actual_and_is_idempotent():
    book, _ = book_at(datetime(2026, 11, 29, 15, tzinfo=UTC))
    d = book.admit(BOB, Decimal("0.5"))
    book.settle(d.reservation, Decimal("0.2"))
    book.settle(d.reservation, Decimal("0.2"))
    day = next(b for b in book.covering(BOB) if b.window == "day" and b.scope.startswith("user"))
    c = book.store.get(day.key)
    assert (c.spent, c.reserved) == (Decimal("0.2"), 0)


def test_grants_raise_the_limit():
    clock = Clock(datetime(2026, 11, 29, 15, tzinfo=UTC))
    def grants(scope, window, now):
        return Decimal(5) if (scope, window) == ("user:bob@core.acme.com", "hour") else Decimal(0)

    book = BudgetBook(parse(POLICY, "p.yaml"), grants=grants, now=clock)
    d = book.admit(BOB, Decimal("2.5"))  # over the $2 hourly default, within $2 + $5 granted (and the $3 day)
    assert d.admitted
    status = {(r["scope"], r["window"]): r for r in book.status()}
    assert status[("user:bob@core.acme.com", "hour")]["limit_usd"] == 7.0
    assert status[("user:bob@core.acme.com", "hour")]["granted_usd"] == 5.0


def test_prune_keeps_the_current_and_previous_windows_only():
    book, clock = book_at(datetime(2026, 11, 29, 10, tzinfo=UTC))
    for hour in range(10, 16):
        clock.t = datetime(2026, 11, 29, hour, tzinfo=UTC)
        spend(book, BOB, "0.1")
    clock.t = datetime(2026, 11, 29, 15, 30, tzinfo=UTC)
    before = {(k[0], k[1], k[2]) for k, _ in book.store.items()}
    assert book.prune() == 4  # the hourly counters of 10:00..13:00 UTC
    after = {k for k, _ in book.store.items()}
    hours = sorted(k[2].hour for k in after if k[1] == "hour" and k[0].startswith("user"))
    assert hours == [14, 15] and len(before) - len(after) == 4
    day = next(b for b in book.covering(BOB) if b.window == "day" and b.scope.startswith("user"))
    assert book.store.get(day.key).spent == Decimal("0.6")  # the day still holds everything


def test_copilot_cli_gets_a_402_it_stops_on_and_rate_limits_stay_429():
    import json as _json

    from spendgate.budgets import refusal as rf

    budget = refusal_budget_for_copilot_test()
    now = budget.start
    answer = rf.for_client(rf.over_budget("openai", budget, Decimal("0"), now, "copilot"), "openai", "copilot")
    assert answer.status == 402 and "retry-after" not in answer.headers
    err = _json.loads(answer.body)["error"]
    assert err["code"] == "budget_exceeded" and err["message"].startswith("spendgate: spend limit reached")
    limited = rf.rate_limited("openai", "slow down", 5, "user:x", "rpm")
    assert rf.for_client(limited, "openai", "copilot").status == 429  # to be waited out, as it does
    down = rf.for_client(rf.unavailable("openai", "ledger failing"), "openai", "copilot")
    assert down.status == 402 and _json.loads(down.body)["error"]["code"] == "gateway_unavailable"
    assert rf.for_client(rf.over_budget("openai", budget, Decimal("0"), now), "openai", "openai-sdk").status == 429


def refusal_budget_for_copilot_test():
    from spendgate.budgets.book import Budget

    start = datetime(2026, 11, 30, tzinfo=UTC)
    return Budget("user:tester", "day", Decimal("0.0001"), start, datetime(2026, 12, 1, tzinfo=UTC), None, Decimal(0))
