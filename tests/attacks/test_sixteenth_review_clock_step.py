"""Sixteenth review (time and windows): a wall-clock step forward and back (NTP correcting a bad
step, a VM resumed with a stale RTC then synced, `date -s` typo) makes the gateway forget budgets
and grants for good, although no window or grant actually ended.

Two housekeeping jobs act irreversibly on one reading of the wall clock:

* `Gateway._housekeep` -> `BudgetBook.prune()` (every 60 s) drops every counter older than the
  previous window *of the clock's current reading*. Read while the clock is 3 hours ahead, it
  drops this (real) hour's counters; when the clock comes back, the hourly budget reads $0 spent
  until a restart rebuilds it from the ledger.
* `Workflow.expire_grants()` (every second) takes grants whose `until` has passed out of the
  grant book and records `grant_expired` in the audit trail, which `GrantBook.load` then treats as
  gone for ever: a clock a day ahead for one second ends every approved increase, and a restart
  does not bring them back. The engineer who was granted +$1 for today is refused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.attacks.sixteenth_review_support import GRANT_POLICY, Clock, gateway, spend

T0 = datetime(2026, 12, 2, 10, 15, tzinfo=UTC)


def test_a_clock_ahead_for_a_minute_does_not_empty_this_hours_budget(tmp_path: Path, monkeypatch):
    clock = Clock(T0).install(monkeypatch)
    gw = gateway(tmp_path, "version: 1\ntimezone: UTC\ndefaults:\n  user: {hour: 0.05}\n")
    try:
        assert spend(gw)[1] is None  # $0.15 this hour: past the $0.05 hourly cap
        assert spend(gw)[1].status == 429
        clock.at = T0 + timedelta(hours=3)  # the clock steps 3 hours ahead ...
        gw._pruned_at = 0.0
        gw._housekeep()  # ... while housekeeping runs (it does every minute)
        clock.at = T0 + timedelta(minutes=2)  # NTP steps it back: still 10:17, the same hour
        refused = spend(gw)[1]
        assert refused is not None and refused.status == 429, (
            "the hour's $0.15 is in the ledger, but the counter was pruned while the clock was ahead: "
            "the hourly cap admits again until a restart")
    finally:
        gw.close()




def test_a_clock_ahead_for_a_second_does_not_end_todays_grants(tmp_path: Path, monkeypatch):
    clock = Clock(T0).install(monkeypatch)
    gw = gateway(tmp_path, GRANT_POLICY)
    try:
        assert spend(gw)[1] is None  # $0.15 today, the cap is $0.05
        assert spend(gw)[1].status == 429
        got = gw.workflow.approvals.request("mallory", "user:mallory", "day", "1", "release")
        assert got["status"] == "auto_approved" and got["until"] == "2026-12-03T00:00:00Z"
        assert spend(gw)[1] is None  # +$1 until midnight: admitted
        clock.at = T0 + timedelta(days=1)  # a one-second step a day ahead ...
        gw.workflow.expire_grants()  # ... meets the workflow's housekeeping (every second)
        clock.at = T0 + timedelta(minutes=1)  # back to 10:16 on Dec 2: the grant runs until midnight
        refused = spend(gw)[1]
    finally:
        gw.close()
    assert refused is None, "the +$1 grant for Dec 2 was recorded expired while the clock was a day ahead"
