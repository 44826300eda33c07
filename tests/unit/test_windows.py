from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from spendgate.budgets import windows
from spendgate.budgets.windows import bounds, seconds_until

NY = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")


def utc(*a):
    return datetime(*a, tzinfo=UTC)


@pytest.mark.parametrize(
    "window,now,start,end",
    [
        ("hour", utc(2026, 11, 29, 15, 59, 59), utc(2026, 11, 29, 15), utc(2026, 11, 29, 16)),
        ("day", utc(2026, 11, 29, 23, 59), utc(2026, 11, 29), utc(2026, 11, 30)),
        ("week", utc(2026, 11, 29, 12), utc(2026, 11, 23), utc(2026, 11, 30)),  # Sunday -> Monday 23rd
        ("week", utc(2026, 11, 30, 0), utc(2026, 11, 30), utc(2026, 12, 7)),  # Monday starts a new week
        ("month", utc(2026, 12, 31, 23, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
        ("month", utc(2027, 2, 15), utc(2027, 2, 1), utc(2027, 3, 1)),
    ],
)
def test_utc_windows(window, now, start, end):
    assert bounds(window, now, ZoneInfo("UTC")) == (start, end)


def test_day_in_new_york_follows_local_midnight_and_dst():
    # 2026-11-01 is the day New York falls back: the local day is 25 hours long.
    s, e = bounds("day", utc(2026, 11, 1, 12), NY)
    assert s == utc(2026, 11, 1, 4) and e == utc(2026, 11, 2, 5)
    assert e - s == timedelta(hours=25)


def test_half_hour_zone_hours_start_at_half_past_utc():
    s, e = bounds("hour", utc(2026, 11, 29, 10, 45), KOLKATA)
    assert s == utc(2026, 11, 29, 10, 30) and e == utc(2026, 11, 29, 11, 30)


def test_month_in_zone_rolls_at_local_midnight():
    # 2026-12-01 04:30 UTC is still 23:30 on November 30 in New York.
    s, e = bounds("month", utc(2026, 12, 1, 4, 30), NY)
    assert s == utc(2026, 11, 1, 4) and e == utc(2026, 12, 1, 5)
    s2, _ = bounds("month", utc(2026, 12, 1, 5, 0), NY)
    assert s2 == utc(2026, 12, 1, 5)


def test_seconds_until_rounds_up_and_is_positive():
    now = utc(2026, 1, 1, 0, 0, 0)
    assert seconds_until(now + timedelta(seconds=1.2), now) == 2
    assert seconds_until(now - timedelta(seconds=5), now) == 1


def test_hour_windows_partition_time_around_every_2026_offset_change():
    """Each instant in exactly one hour window, at most an hour long, whatever the shift (sixteenth review)."""
    for name in ("Europe/Paris", "America/St_Johns", "Australia/Lord_Howe", "Pacific/Chatham",
                 "America/Santiago", "Asia/Kolkata", "Australia/Adelaide"):
        tz = ZoneInfo(name)
        t = datetime(2026, 1, 1, tzinfo=UTC)
        changes = []
        while t.year == 2026:  # the year's offset changes, to the hour
            if (t + timedelta(hours=1)).astimezone(tz).utcoffset() != t.astimezone(tz).utcoffset():
                changes.append(t)
            t += timedelta(hours=1)
        for change in changes:
            t, prev = change - timedelta(hours=3), None
            while t < change + timedelta(hours=4):
                windows._LAST.clear()
                w = windows.bounds("hour", t, tz)
                assert w[0] <= t < w[1] and w[1] - w[0] <= timedelta(hours=1), (name, t, w)
                if prev is not None and w != prev:
                    assert w[0] == prev[1], (name, prev, w)
                prev = w
                t += timedelta(minutes=5)
