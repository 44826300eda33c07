"""The PostgreSQL store against a real server: schema checks, all-or-none admission under
concurrency, settlement exactly once, leases and the reaper."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendgate.budgets.book import BudgetBook
from spendgate.budgets.shared import LeaseKeeper, SharedCounters
from spendgate.identity import Identity
from spendgate.policy.model import parse
from spendgate.store.ledger import LedgerRow
from spendgate.store.ledger import COLUMNS
from spendgate.store.postgres import SCHEMA_VERSION, PostgresStore, StoreError, StoreUnavailable

D = Decimal
POLICY = """\
version: 1
timezone: Europe/Paris
organization: {name: acme, budgets: {month: 1000}}
defaults:
  user: {day: 1}
workspaces:
  core: {members: ["*@acme.com"], budgets: {day: 3}}
"""
ALICE = Identity(user="alice@acme.com", source="test", workspaces=("core",))
BOB = Identity(user="bob@acme.com", source="test", workspaces=("core",))


@pytest.fixture
def store(pg_url):
    s = PostgresStore(pg_url, lease_seconds=30).open()
    s.migrate()
    yield s
    s.close()


def book(store: PostgresStore) -> BudgetBook:
    return BudgetBook(parse(POLICY, "p.yaml"), SharedCounters(store))


def row(rid: str, user: str = "alice@acme.com", charged: str = "0.1", outcome: str = "ok") -> LedgerRow:
    return LedgerRow(
        ts=datetime.now(UTC), request_id=rid, provider="anthropic", endpoint="messages", model="m", user=user,
        key_fingerprint=None, client="test", session_id=None, stream=False, status=200, outcome=outcome,
        estimated=False, input_tokens=10, cache_read_tokens=0, cache_write_tokens=0, cache_write_1h_tokens=0,
        output_tokens=5, reasoning_tokens=0, web_search_requests=0, cost_usd=D(charged), price_source="test",
        latency_ms=1.0, ttft_ms=None, workspace="core", charged_usd=D(charged))


def counter(store: PostgresStore, b) -> tuple[Decimal, Decimal]:
    return store.counters([b.key])[b.key]


def test_unmigrated_and_newer_schemas_are_refused_with_what_to_do(pg_url):
    s = PostgresStore(pg_url).open()
    try:
        with pytest.raises(StoreError, match="schema version 0.*spendgate store migrate"):
            s.check_schema()
        assert s.migrate() == (0, SCHEMA_VERSION)
        assert s.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)  # idempotent
        assert s.check_schema() == SCHEMA_VERSION
        # the shared ledger holds every column of a ledger row (a new LedgerRow field needs a migration here)
        have = {r[0] for r in s._run("SELECT column_name FROM information_schema.columns WHERE table_name = 'requests'",
                                     [], fetch="all")}
        assert set(COLUMNS) <= have, sorted(set(COLUMNS) - have)
        s._run("INSERT INTO spendgate_schema_migrations (version, description) VALUES (%s, 'future')",
               [SCHEMA_VERSION + 1], fetch="count")
        with pytest.raises(StoreError, match="newer than this gateway"):
            s.check_schema()
    finally:
        s.close()


def test_unreachable_store_fails_fast_with_a_redacted_url(postgres):
    url = f"postgresql://postgres:hunter2@127.0.0.1:{postgres.port + 1}/nope"  # nothing listens there
    with pytest.raises(StoreUnavailable) as e:
        PostgresStore(url, timeout=1).open()
    assert "hunter2" not in str(e.value) and "***" in str(e.value)


def test_admission_reserves_on_every_budget_or_none(store):
    bk = book(store)
    d = bk.admit(ALICE, D("0.6"), request_id="r1")
    assert d.admitted and d.remaining == D("0.4")  # the user's day is the tightest
    user_day = next(b for b in d.budgets if b.scope == "user:alice@acme.com")
    ws_day = next(b for b in d.budgets if b.scope == "workspace:core")
    assert counter(store, user_day) == (0, D("0.6")) and counter(store, ws_day) == (0, D("0.6"))
    refused = bk.admit(ALICE, D("0.5"), request_id="r2")
    assert not refused.admitted and refused.exhausted.scope == "user:alice@acme.com"
    assert refused.spent == D("0.6")
    assert counter(store, ws_day) == (0, D("0.6"))  # nothing reserved on the others either
    again = bk.admit(ALICE, D("0.6"), request_id="r1")  # a replayed admission reserves nothing twice
    assert again.admitted and counter(store, ws_day) == (0, D("0.6"))


def test_concurrent_admissions_from_two_replicas_never_pass_the_cap(store, pg_url):
    other = PostgresStore(pg_url).open()
    books = [book(store), book(other)]
    go = threading.Barrier(24)
    results: list[bool] = []

    def one(i: int) -> None:
        who = ALICE if i % 2 else BOB  # two users: only the shared workspace cap (3) binds both
        go.wait()
        d = books[i % 2].admit(who, D("0.25"), request_id=f"c{i}")
        results.append(d.admitted)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    other.close()
    assert results.count(True) == 8  # 4 per user (day 1 each) = 2.0 <= 3; exact, not approximately
    ws = next(b for b in books[0].covering(ALICE) if b.scope == "workspace:core")
    assert counter(store, ws) == (0, D("2.00"))


def test_settlement_is_exactly_once_with_the_ledger_row(store):
    bk = book(store)
    d = bk.admit(ALICE, D("0.5"), request_id="s1")
    user_day = next(b for b in d.budgets if b.scope == "user:alice@acme.com")
    assert store.settle("s1", D("0.1"), row("s1")) == "settled"
    assert store.settle("s1", D("0.1"), row("s1")) == "duplicate"  # replayed: nothing changes
    assert counter(store, user_day) == (D("0.1"), 0)
    rows = store.ledger_rows()
    assert [r["request_id"] for r in rows] == ["s1"] and rows[0]["charged_usd"] == D("0.1")
    assert rows[0]["replica"] == store.replica
    assert store.settle("x1", D("0"), row("x1", charged="0", outcome="blocked")) == "recorded"
    assert store.settle("x1", D("0"), row("x1", charged="0", outcome="blocked")) == "duplicate"
    assert len(store.ledger_rows()) == 2


def test_expired_reservations_are_reaped_as_interrupted_and_corrected_if_they_settle_later(pg_url):
    dead = PostgresStore(pg_url, lease_seconds=0.2).open()
    dead.migrate()
    live = PostgresStore(pg_url, lease_seconds=30).open()
    bk = book(dead)
    record = {"ts": datetime.now(UTC).isoformat(), "provider": "anthropic", "endpoint": "messages", "model": "m",
              "user": "alice@acme.com", "client": "claude-code", "stream": True, "workspace": "core"}
    d = bk.admit(ALICE, D("0.4"), request_id="k1", record=record)
    bk.admit(ALICE, D("0.1"), request_id="k2", record=record)
    user_day = next(b for b in d.budgets if b.scope == "user:alice@acme.com")
    time.sleep(0.5)  # the lease (0.2 s) runs out: nobody renews it
    assert live.reap() in (["k1", "k2"], ["k2", "k1"])
    assert live.reap() == []  # once
    assert counter(live, user_day) == (D("0.5"), 0)
    rows = {r["request_id"]: r for r in live.ledger_rows()}
    assert rows["k1"]["outcome"] == "interrupted" and rows["k1"]["charged_usd"] == D("0.4")
    assert rows["k1"]["client"] == "claude-code" and rows["k1"]["replica"] == live.replica
    # the replica was only slow: its settlement replaces the interrupted charge
    assert dead.settle("k1", D("0.15"), row("k1", charged="0.15")) == "corrected"
    assert counter(live, user_day) == (D("0.25"), 0)
    rows = {r["request_id"]: r for r in live.ledger_rows()}
    assert rows["k1"]["outcome"] == "ok" and rows["k1"]["charged_usd"] == D("0.15")
    dead.close()
    live.close()


def test_a_live_replica_keeps_its_leases_and_retries_settlements_the_store_missed(pg_url, postgres):
    s = PostgresStore(pg_url, lease_seconds=5, timeout=1).open()
    s.migrate()
    counters = SharedCounters(s)
    bk = BudgetBook(parse(POLICY, "p.yaml"), counters)
    d = bk.admit(ALICE, D("0.3"), request_id="l1", record={"user": "alice@acme.com"})

    def lease() -> datetime:
        return s._run("SELECT lease_expires FROM reservations WHERE request_id = 'l1'", fetch="one")[0]

    first = lease()
    keeper = LeaseKeeper(counters, interval=0.1).start()
    deadline = time.monotonic() + 30
    while lease() <= first and time.monotonic() < deadline:  # the keeper pushes the lease forward
        time.sleep(0.1)
    assert lease() > first and s.reap() == []  # renewed, so never reaped
    keeper.stop()
    postgres.stop()
    try:
        bk.settle(d.reservation, D("0.2"), row("l1", charged="0.2"))  # kept, not lost
        assert counters.pending == 1
        with pytest.raises(StoreUnavailable):
            bk.admit(BOB, D("0.1"), request_id="l2")
    finally:
        postgres.start()
    deadline = time.monotonic() + 30  # the pool reconnects in the background
    while counters.retry_pending() == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counters.pending == 0
    user_day = next(b for b in d.budgets if b.scope == "user:alice@acme.com")
    assert counter(s, user_day) == (D("0.2"), 0)
    s.close()


def test_fail_open_bounded_admits_on_a_local_allowance_and_replays_exactly_once(pg_url, postgres):
    s = PostgresStore(pg_url, timeout=1).open()
    s.migrate()
    counters = SharedCounters(s)
    bk = BudgetBook(parse(POLICY, "p.yaml"), counters)
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable):
            bk.admit(ALICE, D("0.1"), request_id="d0")
        first = bk.admit_degraded(ALICE, D("0.1"), D("0.25"), request_id="d1")
        second = bk.admit_degraded(ALICE, D("0.1"), D("0.25"), request_id="d2")
        third = bk.admit_degraded(ALICE, D("0.1"), D("0.25"), request_id="d3")
        assert first.admitted and second.admitted and not third.admitted  # 0.3 > 0.25 on every scope
        assert third.exhausted.scope == "organization:acme" and third.spent == D("0.2")
        bk.settle(first.reservation, D("0.05"), row("d1", charged="0.05"))
        bk.settle(second.reservation, D("0.05"), row("d2", charged="0.05"))
        assert counters.pending == 2 and counters.degraded_in_use("user:alice@acme.com") == D("0.1")
        assert bk.admit_degraded(ALICE, D("0.1"), D("0.25"), request_id="d4").admitted  # the settle freed room
    finally:
        postgres.start()
    deadline = time.monotonic() + 30
    while counters.pending and time.monotonic() < deadline:
        counters.retry_pending()
        time.sleep(0.2)
    assert counters.pending == 0 and counters.degraded_in_use("user:alice@acme.com") == D("0.1")  # d4 still open
    user_day = next(b for b in first.budgets if b.scope == "user:alice@acme.com")
    assert counter(s, user_day) == (D("0.10"), 0)
    again = s.settle("d1", D("0.05"), row("d1", charged="0.05"), first.reservation.keys)  # replayed twice
    assert again == "duplicate" and counter(s, user_day) == (D("0.10"), 0)
    rows = {r["request_id"]: r for r in s.ledger_rows()}
    assert rows["d1"]["degraded"] is True and "degraded" in rows["d1"]["note"]
    s.close()


def test_the_gateway_refuses_a_store_that_is_not_postgresql(tmp_path):
    from spendgate import resources
    from spendgate.gateway import Gateway, GatewayError, Settings

    bad = Settings(db=tmp_path / "l.duckdb", policy=resources.example_policy(), store="mysql://u:pw@db/x")
    with pytest.raises(GatewayError, match="postgresql://") as e:
        Gateway.check(bad)
    assert "pw" not in str(e.value)


def test_settlements_the_store_missed_survive_a_restart_in_the_outbox(pg_url, postgres, tmp_path):
    outbox = tmp_path / "ledger.duckdb.store-outbox"
    s = PostgresStore(pg_url, timeout=1).open()
    s.migrate()
    counters = SharedCounters(s, outbox)
    bk = BudgetBook(parse(POLICY, "p.yaml"), counters)
    d = bk.admit(ALICE, D("0.3"), request_id="o1", record={"user": "alice@acme.com"})
    postgres.stop()
    try:
        bk.settle(d.reservation, D("0.2"), row("o1", charged="0.2"))
        degraded = bk.admit_degraded(BOB, D("0.1"), D("1"), request_id="o2")
        bk.settle(degraded.reservation, D("0.05"), row("o2", user="bob@acme.com", charged="0.05"))
        assert counters.pending == 2 and outbox.stat().st_mode & 0o777 == 0o600
    finally:
        postgres.start()
    s.close()  # the replica stops without settling (a crash: nothing flushed on purpose)

    s2 = PostgresStore(pg_url, timeout=1).open()
    again = SharedCounters(s2, outbox)
    assert again.pending == 2 and again.degraded_in_use("user:bob@acme.com") == D("0.05")
    deadline = time.monotonic() + 30
    while again.pending and time.monotonic() < deadline:
        again.retry_pending()
        time.sleep(0.2)
    assert again.pending == 0 and outbox.read_bytes() == b""
    user_day = next(b for b in d.budgets if b.scope == "user:alice@acme.com")
    bob_day = next(b for b in degraded.budgets if b.scope == "user:bob@acme.com")
    assert counter(s2, user_day) == (D("0.2"), 0) and counter(s2, bob_day) == (D("0.05"), 0)
    rows = {r["request_id"]: r for r in s2.ledger_rows()}
    assert rows["o1"]["charged_usd"] == D("0.2") and rows["o2"]["degraded"] is True
    s2.close()


def test_a_row_the_store_rejects_still_releases_its_reservation(store):
    bk = book(store)
    d = bk.admit(ALICE, D("0.5"), request_id="bad1")
    bad = row("bad1", charged="0.1")
    bad.provider = None  # violates NOT NULL in the shared ledger
    bk.settle(d.reservation, D("0.1"), bad)
    user_day = next(b for b in d.budgets if b.scope == "user:alice@acme.com")
    assert counter(store, user_day) == (D("0.1"), 0) and bk.store.pending == 0


@pytest.mark.parametrize("now", [datetime(2026, 10, 31, 22, 30, tzinfo=UTC),  # 23:30 in Paris: October's last hour
                                 datetime(2026, 10, 31, 21, 30, tzinfo=UTC)])
def test_every_budget_lists_its_spend_through_the_last_hour_of_a_745_hour_month(store, monkeypatch, now):
    """October in Paris has 31 days and a daylight-saving fall-back: 745 hours. The shared store's
    listing of current counters must still hold the month's (the review found it cut at 744)."""
    from spendgate.budgets import shared
    from spendgate.budgets.windows import bounds

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return now.astimezone(tz) if tz else now.astimezone().replace(tzinfo=None)

    monkeypatch.setattr(shared, "datetime", Clock)  # SharedCounters.items() reads the wall clock
    policy = parse("version: 1\ntimezone: Europe/Paris\norganization: {name: acme, budgets: {month: 1000}}\n"
                   "defaults:\n  user: {day: 10, month: 100}\n", "p.yaml")
    book = BudgetBook(policy, SharedCounters(store), now=lambda: now)
    for window in ("day", "month"):
        for scope in ("organization:acme", "user:alice"):
            book.store.add((scope, window, bounds(window, now, policy.timezone)[0]), Decimal("42"))
    listed = {(r["scope"], r["window"]): r["spent_usd"] for r in book.status()}
    assert listed == {("organization:acme", "month"): 42.0, ("user:alice", "day"): 42.0,
                      ("user:alice", "month"): 42.0}
