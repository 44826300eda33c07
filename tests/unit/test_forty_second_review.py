"""Forty-second review, the new user's finding (High): a budget a live policy reload added counted
only the spend made up to the gateway's last start.

Counters in memory were rebuilt from the ledger for every scope and window at start-up, but a
settlement then moved only the counters of the budgets covering the request. A `week` cap added
live read the week as it stood at start-up and let requests past it; a reload to a policy with no
caps and back lost what was spent in between. Fixed: a settled row is counted in every window of
every scope it belongs to (`BudgetBook.count_elsewhere`), so the counters always hold what a
restart rebuilds from the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime

from spendgate.budgets.book import BudgetBook, MemoryCounters
from spendgate.budgets.recovery import rebuild_counters
from spendgate.budgets.windows import WINDOWS, bounds
from tests.unit.test_gateway_core import _answered, _settle_one, begin, make

START = "organization: {name: acme, budgets: {month: 1000}}\ndefaults: {user: {day: 100}}\n"


def _as_a_restart_rebuilds(gw) -> dict:
    """The current windows' counters a restart would build from this gateway's ledger."""
    gw.meter.flush()
    gw.ledger.flush()
    fresh = BudgetBook(gw.policy, MemoryCounters())
    rebuild_counters(gw.ledger.cursor(), fresh, datetime.now(UTC))
    return {k: c.spent for k, c in fresh.store.items() if c.spent}


def _live(gw) -> dict:
    gw.meter.flush()  # rows are settled by the meter's worker: every one put so far
    now, tz = datetime.now(UTC), gw.policy.timezone
    current = {w: bounds(w, now, tz)[0] for w in WINDOWS}
    return {k: c.spent for k, c in gw.book.store.items() if c.spent and k[2] == current[k[1]]}


def _reload(gw, policy: str) -> None:
    gw.settings.policy.write_text("version: 1\n" + policy)
    assert gw.reload_policy()


def test_a_budget_a_reload_adds_starts_from_the_spend_already_in_its_window(tmp_path):
    gw = make(tmp_path, START)
    try:
        for _ in range(3):
            _settle_one(gw)
        rebuilt = _as_a_restart_rebuilds(gw)
        assert rebuilt and _live(gw) == rebuilt  # every scope and window, budgeted or not
        org_week = next(k for k in rebuilt if k[:2] == ("organization:acme", "week"))
        _reload(gw, START.replace("{month: 1000}", "{month: 1000, week: 1000}"))
        assert gw.book.store.get(org_week).spent == rebuilt[org_week] > 0
        _settle_one(gw)
        assert _live(gw) == _as_a_restart_rebuilds(gw)
    finally:
        gw.close()


def test_a_reload_to_no_caps_and_back_loses_nothing(tmp_path):
    gw = make(tmp_path, START)
    try:
        _settle_one(gw)
        _reload(gw, "")  # a file cut short: no caps at all for a while
        _settle_one(gw)
        _settle_one(gw)
        _reload(gw, START)
        _settle_one(gw)
        assert _live(gw) == _as_a_restart_rebuilds(gw)
        assert len({k[0] for k in _live(gw)}) >= 3  # organization, user and key scopes all counted
    finally:
        gw.close()


def test_a_request_in_flight_across_a_time_zone_change_is_counted_once(tmp_path):
    """Its reservation settles where the change moved it (MemoryCounters.replace), in the new
    zone's windows: the row is counted elsewhere past those, never twice in them."""
    gw = make(tmp_path, "timezone: UTC\n" + START)
    try:
        ex = begin(gw)
        assert gw.admission.admit(ex) is None
        _reload(gw, "timezone: Pacific/Kiritimati\n" + START)
        _answered(gw, ex)
        assert _live(gw) == _as_a_restart_rebuilds(gw)
    finally:
        gw.close()


def test_a_request_from_a_past_window_settling_after_a_zone_change_is_counted_where_a_restart_counts_it(
        tmp_path, monkeypatch):
    """Its reservation is in a window the change did not move (an hour already over): it settles
    there, and the new zone's current windows still get the row (a reviewer's case: skipping by
    scope and window missed the current hour)."""
    from datetime import timedelta

    import spendgate.budgets.admission as admission_mod

    start = START.replace("{month: 1000}", "{month: 1000, hour: 1000}")
    real = datetime.now(UTC)
    if real.minute < 30:  # UTC's hours start at :00, Kolkata's at :30
        old, new, edge = "UTC", "Asia/Kolkata", real.replace(minute=0, second=0, microsecond=0)
    else:
        old, new, edge = "Asia/Kolkata", "UTC", real.replace(minute=30, second=0, microsecond=0)
    before = edge - timedelta(seconds=10)  # the old zone's previous hour

    class Then(datetime):
        @classmethod
        def now(cls, tz=None):
            return before

    gw = make(tmp_path, f"timezone: {old}\n" + start)
    try:
        monkeypatch.setattr(admission_mod, "datetime", Then)
        gw.meter.now = lambda: before
        ex = begin(gw)
        assert gw.admission.admit(ex) is None
        monkeypatch.undo()
        _reload(gw, f"timezone: {new}\n" + start)
        _answered(gw, ex)
        assert _live(gw) == _as_a_restart_rebuilds(gw)
    finally:
        gw.close()
