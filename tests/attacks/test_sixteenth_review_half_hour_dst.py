"""Sixteenth review (time and windows): in a zone whose daylight-saving shift is 30 minutes
(Australia/Lord_Howe), hour windows overlap, and which one a request is charged to depends on
a module-level cache.

`windows._bounds("hour")` takes the local hour's start and adds one hour in UTC. On 2026-10-04
Lord Howe goes from 02:00 (+10:30) to 02:30 (+11:00): local 02:00 does not exist, so the "02"
window is [15:30, 16:30) UTC while the "03" window is [16:00, 17:00) UTC. `windows.bounds` keeps
the last window per (kind, zone) and reuses it while it contains `now`: a gateway running through
the change charges 16:00-16:30 to the "02" counter, one that started at 16:10 (or asked about
another time meanwhile) to the "03" counter. At 16:30 the running gateway moves to "03", whose
counter never saw the 16:00-16:30 spend: that local hour's cap is half spent unseen.

Worse, where a fall-back does not start on a local hour (Chatham: 03:45 +13:45 -> 02:45 +12:45;
Lord Howe: 02:00 +11:00 -> 01:30 +10:30), the local hour's start is not itself ambiguous, so its
`fold` is ignored and the first offset is used: for a quarter (half) hour the "current" hour
window is one that ended before `now`. Requests are charged to the previous hour's counter (a
user at that hour's cap is refused in a new hour, with `Retry-After: 1` as the window "ended"),
and the BudgetBook's covering cache (valid until the window's end) misses on every request.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from spendgate.budgets import windows

TZ = ZoneInfo("Australia/Lord_Howe")
CHATHAM = ZoneInfo("Pacific/Chatham")


def test_the_current_hour_window_contains_now_after_a_fall_back_off_the_hour():
    windows._LAST.clear()
    at = datetime(2026, 4, 4, 14, 0, tzinfo=UTC)  # Chatham: 02:45 +12:45, just after 03:45 +13:45
    start, end = windows.bounds("hour", at, CHATHAM)
    assert start <= at < end, f"the current hour window [{start}, {end}) ended before {at}"


def test_hour_windows_partition_time_and_do_not_depend_on_the_cache():
    windows._LAST.clear()
    running = windows.bounds("hour", datetime(2026, 10, 3, 15, 40, tzinfo=UTC), TZ)  # a gateway that was running
    at = datetime(2026, 10, 3, 16, 10, tzinfo=UTC)  # 03:10 local (+11:00)
    seen_running = windows.bounds("hour", at, TZ)
    windows._LAST.clear()
    seen_fresh = windows.bounds("hour", at, TZ)  # a gateway started a minute ago
    assert seen_running == seen_fresh, f"the same instant is in {seen_running} or in {seen_fresh}"
    assert running[1] <= seen_fresh[0], f"hour windows overlap: {running} and {seen_fresh}"


def test_every_instant_around_both_changes_is_in_exactly_one_hour_window():
    for first in (datetime(2026, 10, 3, 13, 0, tzinfo=UTC), datetime(2026, 4, 4, 13, 0, tzinfo=UTC)):
        t, prev = first, None
        for _ in range(5 * 12):
            windows._LAST.clear()
            w = windows.bounds("hour", t, TZ)
            assert w[0] <= t < w[1]
            if prev is not None and w != prev:
                assert w[0] == prev[1], f"{prev} then {w}: windows must follow each other without overlap"
            prev = w
            t += timedelta(minutes=5)
