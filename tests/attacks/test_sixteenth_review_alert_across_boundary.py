"""Sixteenth review (time and windows): the alert a request owes is never sent when it settles
after the window it was charged to has ended.

Admission reserves on the windows current when the request starts, and settlement charges the
actual cost to those same counters (`MemoryCounters.settle` on `Reservation.keys`): right. But
the alerts are evaluated after settlement against the budgets current at settlement time
(`Workflow.after_charge` -> `AlertEngine.evaluate(identity, now)` -> `book.covering(identity,
now)`). A request started at 23:59:59 and answered at 00:00:01 (a long stream, or any request the
meter worker settles after midnight) charges yesterday's day counter and this month's/last month's
month counter, while the alerts look at today's, empty, counters: the 50/80/95/100% crossings it
caused in the window it was charged to are never announced, and never will be (that window
receives no more settlements). At a month end it is the monthly organization budget's alert.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tests.attacks.sixteenth_review_support import ANTHROPIC, AUTH, REQUEST, Clock, answer, gateway
from tests.attacks.tenth_review_support import answered, send

POLICY = "version: 1\ntimezone: UTC\ndefaults:\n  user: {day: 0.20, month: 0.20}\n"
BEFORE = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)  # the last second of November
AFTER = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)


def test_a_request_settled_after_the_boundary_still_alerts_in_the_window_it_was_charged_to(tmp_path: Path,
                                                                                           monkeypatch):
    clock = Clock(BEFORE).install(monkeypatch)
    gw = gateway(tmp_path, POLICY)
    try:
        ex, refused = send(gw, ANTHROPIC, "/v1/messages", REQUEST, AUTH)  # admitted at 23:59:59
        assert refused is None
        clock.at = AFTER  # the answer ends two seconds later, in December
        answered(gw, ex, answer(10_000))  # $0.15: 75% of November's day and month budgets
        gw.meter.flush()
        nov_day = ("user:mallory", "day", datetime(2026, 11, 30, tzinfo=UTC))
        assert gw.book.store.get(nov_day).spent > 0.14  # charged to November 30 (right)
        fired = {(k[1], k[2], k[4]) for k in gw.workflow.alerts.fired() if k[0] == "user:mallory"}
    finally:
        gw.close()
    assert ("day", nov_day[2], 50) in fired, f"75% of the Nov 30 daily budget spent, no 50% alert: {fired}"
    assert ("month", datetime(2026, 11, 1, tzinfo=UTC), 50) in fired, "and none for November's monthly budget"
