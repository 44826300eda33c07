"""A centre of two replicas on one PostgreSQL store (spendgate.store.pg_central): the offline
allowance of a past window is one for both replicas, a laptop seen on one is not silent on the
other, and a silence is alerted once across replicas and restarts. Real PostgreSQL, real DuckDB
ledgers (one per replica), real BudgetBooks on the shared counters; no network."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spendgate.budgets.book import BudgetBook
from spendgate.budgets.shared import SharedCounters
from spendgate.central.ingest import Ingest
from spendgate.central.roster import SILENT_AFTER
from spendgate.policy.model import parse
from spendgate.store.ledger import DuckDBLedger
from spendgate.store.postgres import PostgresStore
from tests.unit.test_central import _row, wire

D = Decimal
POLICY = """version: 1
timezone: UTC
organization: {name: acme, owners: [it@acme]}
defaults: {user: {day: 5}}
offline_allowance: {day: 0.05}
"""


class Replica:
    """One centre replica: its own store pool (replica name), DuckDB ledger, book and Ingest."""

    def __init__(self, url: str, path, name: str) -> None:
        self.pg = PostgresStore(url, replica=name).open()
        self.led = DuckDBLedger(path)
        self.notices: list = []
        self.book = BudgetBook(parse(POLICY), SharedCounters(self.pg))
        self.ingest = Ingest(self.led.cursor, self.book, notify=self.notices.append)

    def close(self) -> None:
        self.led.close()
        self.pg.close()


@pytest.fixture
def replicas(pg_url, tmp_path):
    s = PostgresStore(pg_url).open()
    s.migrate()
    s.close()
    made: list[Replica] = []

    def make(name: str) -> Replica:
        r = Replica(pg_url, tmp_path / f"{name}.duckdb", name)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def offline_rows(prefix: str, user: str, ts: datetime, n: int, usd: str = "0.02") -> list[dict]:
    return [wire(_row(f"{prefix}{i:05d}", user=user, charged=usd, ts=ts + timedelta(minutes=i), offline=True))
            for i in range(n)]


def test_the_offline_allowance_of_a_past_window_is_counted_once_across_replicas(replicas):
    a, b = replicas("a"), replicas("b")
    now = datetime.now(UTC)
    past = (now - timedelta(days=2)).replace(hour=10, minute=0, second=0, microsecond=0)
    # $0.06 offline two days back through A: $0.04 fits the $0.05 allowance, the third row counts now
    got = a.ingest.ingest("alice", "alice@mac", offline_rows("a-off", "alice", past, 3), now=now)
    assert (len(got.accepted), got.late) == (3, 1), got.as_json()
    # her other laptop reaches B: A's $0.04 is in the store, so neither $0.02 row fits any more
    # (per replica, B would have counted both in the past day: two allowances)
    got = b.ingest.ingest("alice", "alice@linux", offline_rows("b-off", "alice", past + timedelta(hours=1), 2), now=now)
    assert (len(got.accepted), got.late) == (2, 2), got.as_json()
    rows = {r["request_id"].split("~")[0]: r for r in a.pg.ledger_rows()}
    assert [rid for rid, r in sorted(rows.items()) if r["charged_at"] is None] == ["a-off00000", "a-off00001"]
    assert all(r["shared"] for r in rows.values())
    past_day = [k for k in a.pg.counters_since(past - timedelta(days=1))
                if k[0] == ("user:alice", "day", past.replace(hour=0))]
    assert past_day[0][1] == D("0.04")  # the past day holds one allowance's worth, not two


def test_concurrent_batches_on_two_replicas_share_one_allowance(replicas):
    a, b = replicas("a"), replicas("b")
    now = datetime.now(UTC)
    past = (now - timedelta(days=3)).replace(hour=9, minute=0, second=0, microsecond=0)
    results = {}

    def push(rep: Replica, name: str) -> None:
        results[name] = rep.ingest.ingest("bob", f"bob@{name}", offline_rows(f"{name}-bob", "bob", past, 3), now=now)

    threads = [threading.Thread(target=push, args=(a, "a")), threading.Thread(target=push, args=(b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {n: len(r.accepted) for n, r in results.items()} == {"a": 3, "b": 3}
    # six $0.02 rows in one past day, $0.05 allowance: two count there in all, four at the receipt
    assert results["a"].late + results["b"].late == 4, {n: r.as_json() for n, r in results.items()}


def test_a_laptop_seen_on_one_replica_is_not_silent_on_the_other_and_a_silence_is_alerted_once(replicas, capsys):
    a, b = replicas("a"), replicas("b")
    t0 = datetime.now(UTC) - timedelta(days=20)
    b.ingest.roster.touch("alice", "alice@mac", t0)  # it called B once, long ago
    a.ingest.roster.touch("alice", "alice@mac", t0 + timedelta(days=10))  # then only A
    a.ingest.roster.touch("alice", "alice@mac", t0 + timedelta(days=10, minutes=1))  # not written yet (5 min)
    a.ingest.check_silent(t0 + timedelta(days=10, minutes=10), every=timedelta(0))  # housekeeping writes it
    b.ingest.roster.touch("bob", "bob@thinkpad", t0 + timedelta(days=1))

    seen = t0 + timedelta(days=10, minutes=1)
    at = seen + SILENT_AFTER - timedelta(seconds=30)  # alice: just under 72 h since her last call (to A)
    assert b.ingest.check_silent(at, every=timedelta(0))[0].origin == "bob@thinkpad"  # bob: silent since day 1
    assert [n.payload["laptops"][0]["origin"] for n in b.notices] == ["bob@thinkpad"]
    assert a.ingest.check_silent(at, every=timedelta(0)) == []  # bob's silence was B's to tell
    assert a.ingest.roster.counts(at) == b.ingest.roster.counts(at) == (1, 1, pytest.approx(
        (at - t0 - timedelta(days=1)).total_seconds()))

    later = seen + SILENT_AFTER + timedelta(minutes=2)  # now alice is silent: both replicas look
    told = a.ingest.check_silent(later, every=timedelta(0)) + b.ingest.check_silent(later, every=timedelta(0))
    assert [(c.user, c.last_seen) for c in told] == [("alice", seen)]  # one alert, from one replica
    assert len(a.notices) + len(b.notices) == 2
    c = replicas("c")  # a restart (or a third replica): the silences were told already
    assert c.ingest.check_silent(later + timedelta(hours=1), every=timedelta(0)) == [] and c.notices == []
    assert c.ingest.roster.counts(later) == (0, 2, pytest.approx((later - t0 - timedelta(days=1)).total_seconds()))

    back = later + timedelta(hours=5)  # alice calls in on C, then goes silent again: one new alert
    c.ingest.roster.touch("alice", "alice@mac", back)
    again = back + SILENT_AFTER + timedelta(minutes=1)
    told = [x for r in (a, b, c) for x in r.ingest.check_silent(again, every=timedelta(0))]
    assert [(x.origin, x.last_seen) for x in told] == [("alice@mac", back)]

    from spendgate.cli import main

    assert main(["laptops", "--store", a.pg.url, "--json"]) == 0  # the shared roster, from the store
    listed = {r["origin"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"alice@mac", "bob@thinkpad"}
    assert datetime.fromisoformat(listed["alice@mac"]["last_seen"]) == back
    assert datetime.fromisoformat(listed["alice@mac"]["first_seen"]) == t0


def test_a_replica_is_told_of_laptops_another_replica_met(replicas):
    a, b = replicas("a"), replicas("b")
    now = datetime.now(UTC)
    a.ingest.roster.touch("carol", "carol@mac", now)
    assert b.ingest.roster.counts(now)[:2] == (0, 0)  # B has not looked yet
    b.ingest.check_silent(now + timedelta(minutes=1), every=timedelta(0))
    assert b.ingest.roster.counts(now + timedelta(minutes=1))[:2] == (1, 0)


def test_a_full_users_new_laptop_takes_a_silent_slot_and_the_silence_is_told_once_across_replicas(replicas):
    from spendgate.central.roster import MAX_PER_USER
    a, b = replicas("a"), replicas("b")
    t0 = datetime.now(UTC) - timedelta(days=30)
    for i in range(MAX_PER_USER):  # made-up ids (or 50 reinstalls), long silent
        a.ingest.roster.touch("alice", f"junk-{i}", t0 + timedelta(minutes=i))
    now = datetime.now(UTC)
    a.ingest.roster.touch("alice", "alice@new", now)  # junk-0's slot
    told = a.ingest.check_silent(now, every=timedelta(0))  # writes and reads back the retired junk-0
    assert {c.origin for c in told} == {f"junk-{i}" for i in range(MAX_PER_USER)}
    assert a.ingest.roster.counts(now)[:2] == (1, MAX_PER_USER - 1)  # junk-0 was not tracked again
    assert b.ingest.check_silent(now, every=timedelta(0)) == []  # told once, by A
    later = now + SILENT_AFTER + timedelta(minutes=1)
    assert [c.origin for c in a.ingest.check_silent(later, every=timedelta(0))] == ["alice@new"]
