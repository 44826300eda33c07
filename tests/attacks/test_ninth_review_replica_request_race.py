"""Ninth review: the request bounds hold per replica only; two replicas of one store race past them.

`Approvals.request` checks, then inserts, under `self._lock`, a `threading.Lock` of one process.
With a shared PostgreSQL store every replica reads and writes the same `increase_requests` and
`request_decisions` (spendgate.workflow.sharing: `SharedCursor`, one autocommit statement per
call), but each has its own lock, and nothing in the store (no constraint, no advisory lock, no
transaction around check and insert) makes the check and the insert one step across replicas.
An engineer who sends the same request to two replicas at once (a load balancer spreads
`spendgate.local`, or two CLI calls against two replica URLs) gets:

* `auto_approve_up_to` once per replica: both read the budget's auto-approved sum as 0 before
  either records its decision, so each auto-approves the full cap (more budget, no person asked);
* two open requests on one budget (the eighth review's "one per budget", `_check_open`), and
  more than `MAX_OPEN_REQUESTS` per person.

Real PostgreSQL (tests/support/postgres.py), two Workflows wired as two replicas by the real
`sharing.share`, each with its own DuckDB file; two threads file at the same moment.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from spendgate.budgets.book import BudgetBook
from spendgate.budgets.shared import SharedCounters
from spendgate.policy.model import parse
from spendgate.store.ledger import DuckDBLedger
from spendgate.store.postgres import PostgresStore
from spendgate.workflow import sharing
from spendgate.workflow.approvals import ApprovalError
from spendgate.workflow.service import Workflow

POLICY = """\
version: 1
timezone: UTC
organization: {name: acme, owners: [cfo@acme.com], budgets: {month: 10000}}
defaults:
  user: {hour: 10, day: 10, week: 10, month: 10}
workspaces:
  core: {members: ["*@core.acme.com"], owners: [lead@core.acme.com], budgets: {day: 1000}}
approvals:
  organization: {approvers: [cfo@acme.com]}
  workspaces:
    core: {approvers: [lead@core.acme.com], auto_approve_up_to: 20}
sinks:
  log: {type: log, events: [alert]}
"""
POLICY_NO_AUTO = POLICY.replace(", auto_approve_up_to: 20", "")
BOB = "bob@core.acme.com"
USERS = (BOB, "carol@core.acme.com", "dave@core.acme.com")
WINDOWS = ("hour", "day", "week", "month")


class Replica:
    def __init__(self, url: str, path, name: str, policy: str) -> None:
        self.pg = PostgresStore(url, replica=name).open()
        self.led = DuckDBLedger(path)
        self.book = BudgetBook(parse(policy), SharedCounters(self.pg))
        self.wf = Workflow(self.book.policy, self.book, self.led.cursor, housekeeping_interval=0)
        sharing.share(self.wf, self.pg)

    def close(self) -> None:
        self.wf.close(grace=0)
        self.led.close()
        self.pg.close()


@pytest.fixture
def replicas(pg_url, tmp_path):
    s = PostgresStore(pg_url).open()
    s.migrate()
    s.close()
    made: list[Replica] = []

    def make(policy: str) -> tuple[Replica, Replica]:
        a = Replica(pg_url, tmp_path / f"a{len(made)}.duckdb", f"a{len(made)}", policy)
        b = Replica(pg_url, tmp_path / f"b{len(made)}.duckdb", f"b{len(made)}", policy)
        made.extend((a, b))
        return a, b

    yield make
    for r in made:
        r.close()


def at_once(*calls) -> list:
    """Run the calls in threads released together; each result or the ApprovalError it raised."""
    gate = threading.Barrier(len(calls))
    out: list = [None] * len(calls)

    def run(i, fn):
        gate.wait()
        try:
            out[i] = fn()
        except ApprovalError as e:
            out[i] = e

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_auto_approve_up_to_is_one_cap_for_all_replicas(replicas):
    a, b = replicas(POLICY)
    over = []
    for user in USERS:
        for window in WINDOWS:  # a budget per try
            got = at_once(lambda: a.wf.approvals.request(user, f"user:{user}", window, "20", "crunch"),
                          lambda: b.wf.approvals.request(user, f"user:{user}", window, "20", "crunch"))
            auto = [r for r in got if isinstance(r, dict) and r["status"] == "auto_approved"]
            if len(auto) > 1:
                over.append(f"user:{user} {window}")
    a.wf.book.refresh_grants()  # what the replicas' lease keepers pull: every replica's grants
    now = datetime.now(UTC)
    total = a.wf.grants.total(f"user:{BOB}", "day", now)
    assert not over, (f"auto_approve_up_to 20 granted once per replica on {len(over)} of "
                      f"{len(USERS) * len(WINDOWS)} budgets ({over[:3]}); bob's daily budget now has +{total}")


def test_one_open_request_per_budget_across_replicas(replicas):
    a, b = replicas(POLICY_NO_AUTO)
    doubled = []
    for user in USERS:
        for window in WINDOWS:
            got = at_once(lambda: a.wf.approvals.request(user, f"user:{user}", window, "5", "crunch"),
                          lambda: b.wf.approvals.request(user, f"user:{user}", window, "5", "crunch"))
            if all(isinstance(r, dict) for r in got):
                doubled.append(f"user:{user} {window}")
    assert not doubled, (f"two open requests on one budget when filed on two replicas at once: {len(doubled)} "
                         f"of {len(USERS) * len(WINDOWS)} budgets ({doubled[:3]})")
