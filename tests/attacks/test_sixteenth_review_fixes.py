"""Sixteenth review (time and windows): regression tests for the fixes, beside the reviewer's own.

D1: a live time zone change rebuilds the in-memory counters from the ledger; a request in flight
across it is settled in the new zone's window and leaves nothing reserved; a running gateway on
the shared store refuses the change and keeps its policy (a restart re-keys the store).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from spendgate.budgets.windows import bounds
from tests.attacks.sixteenth_review_support import ANTHROPIC, AUTH, GRANT_POLICY, REQUEST, answer, gateway, spend
from tests.attacks.tenth_review_support import answered, send

UTC_POLICY = "version: 1\ntimezone: UTC\ndefaults:\n  user: {day: 1, month: 1}\n"
PARIS_POLICY = UTC_POLICY.replace("timezone: UTC", "timezone: Europe/Paris")


def test_a_request_in_flight_across_a_zone_change_is_charged_in_the_new_zones_window(tmp_path: Path):
    gw = gateway(tmp_path, UTC_POLICY)
    try:
        assert spend(gw)[1] is None  # $0.15 settled before the change
        ex, refused = send(gw, ANTHROPIC, "/v1/messages", REQUEST, AUTH)  # reserved before the change
        assert refused is None
        (tmp_path / "policy.yaml").write_text(PARIS_POLICY)
        assert gw.reload_policy()
        answered(gw, ex, answer(10_000))  # settled after it: $0.15 more
        gw.meter.flush()
        day = ("user:mallory", "day", bounds("day", datetime.now(UTC), ZoneInfo("Europe/Paris"))[0])
        c = gw.book.store.get(day)
    finally:
        gw.close()
    assert abs(c.spent - Decimal("0.30")) < Decimal("0.001"), c  # both requests, in Paris's day
    assert c.reserved == 0, f"the in-flight reservation was left reserved: {c}"


def test_a_running_gateway_on_the_shared_store_refuses_a_zone_change(tmp_path: Path, pg_url):
    from spendgate.store.postgres import PostgresStore

    PostgresStore(pg_url).open().migrate()
    gw = gateway(tmp_path, UTC_POLICY, store=pg_url)
    try:
        (tmp_path / "policy.yaml").write_text(PARIS_POLICY)
        assert not gw.reload_policy()  # fail closed: the old zone's windows keep counting
        assert str(gw.policy.timezone) == "UTC" and gw.book.policy is gw.policy
        rejected = [r for r in gw.workflow.audit_rows(None) if r.get("event") == "policy_rejected"]
    finally:
        gw.close()
    assert rejected and "cannot be applied to a running gateway on the shared store" in str(rejected)


# D3: irreversible housekeeping skips a tick where the wall clock stepped; a grant recorded expired
# while the clock was ahead comes back at the next start (its `until` is still to come).

def test_the_step_guard_skips_the_tick_of_a_step_and_trusts_the_next():
    from datetime import timedelta

    from spendgate.wallclock import StepGuard

    mono = [100.0]
    guard = StepGuard(monotonic=lambda: mono[0])
    t = datetime(2026, 12, 2, 10, tzinfo=UTC)
    assert guard.steady(t)  # the first look: nothing to compare with
    mono[0] += 60
    assert guard.steady(t + timedelta(seconds=61))  # NTP-sized disagreement
    mono[0] += 1
    assert not guard.steady(t + timedelta(hours=3))  # stepped ahead
    mono[0] += 1
    assert not guard.steady(t + timedelta(seconds=63))  # and back
    mono[0] += 60
    assert guard.steady(t + timedelta(seconds=123))  # settled




def test_a_grant_recorded_expired_while_the_clock_was_ahead_holds_again_after_a_restart(tmp_path: Path,
                                                                                       monkeypatch):
    from datetime import timedelta

    from tests.attacks.sixteenth_review_support import Clock

    t0 = datetime(2026, 12, 2, 10, 15, tzinfo=UTC)
    clock = Clock(t0).install(monkeypatch)
    gw = gateway(tmp_path, GRANT_POLICY)
    try:
        assert spend(gw)[1] is None and spend(gw)[1].status == 429
        assert gw.workflow.approvals.request("mallory", "user:mallory", "day", "1", "release")["status"] == \
            "auto_approved"
    finally:
        gw.close()
    clock.at = t0 + timedelta(days=1)  # started with the clock a day ahead: the first look is trusted
    gw = gateway(tmp_path, GRANT_POLICY)
    gw.close()
    clock.at = t0 + timedelta(minutes=5)  # the clock put right, and a restart
    gw = gateway(tmp_path, GRANT_POLICY)
    try:
        expired = [r for r in gw.workflow.audit_rows(None) if r.get("event") == "grant_expired"]
        refused = spend(gw)[1]
    finally:
        gw.close()
    assert expired, "the grant was recorded expired while the clock was ahead (the case this test is about)"
    assert refused is None, "the +$1 grant until midnight did not come back"
