"""Calendar windows in the policy's time zone: hour, day, week (from Monday), month.

A window is [start, end) in local wall-clock terms, so a day is midnight to midnight even across
a DST change, and a counter resets exactly at the boundary.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WINDOWS = ("hour", "day", "week", "month")
ADJECTIVE = {"hour": "hourly", "day": "daily", "week": "weekly", "month": "monthly"}


def _midnight(d: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(d, time(0), tzinfo=tz)


_LAST: dict[tuple[str, ZoneInfo], tuple[datetime, datetime]] = {}  # the latest window of each kind


def bounds(window: str, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The window containing `now`, as aware datetimes in UTC.

    Every admission asks this for each budget, and the answer changes once an hour at most: the
    last window of each kind is kept and reused while it still contains `now`.
    """
    key = (window, tz)
    last = _LAST.get(key)
    if last is not None and now.tzinfo is not None and last[0] <= now < last[1]:
        return last
    found = _bounds(window, now, tz)
    _LAST[key] = found
    return found


def _bounds(window: str, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    local = now.astimezone(tz)
    if window == "hour":
        return _hour(now.astimezone(UTC), local, tz)
    if window == "day":
        d = local.date()
        start, end = _midnight(d, tz), _midnight(d + timedelta(days=1), tz)
    elif window == "week":
        d = local.date() - timedelta(days=local.weekday())
        start, end = _midnight(d, tz), _midnight(d + timedelta(days=7), tz)
    elif window == "month":
        d = local.date().replace(day=1)
        nxt = (d + timedelta(days=32)).replace(day=1)
        start, end = _midnight(d, tz), _midnight(nxt, tz)
    else:
        raise ValueError(f"unknown window {window!r}")
    return start.astimezone(UTC), end.astimezone(UTC)


def _hour(now: datetime, local: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The local clock hour containing `now`, cut where the zone's offset changes.

    Taking the local hour's start and adding an hour breaks where a DST shift is not a whole hour or
    not on the hour (Lord Howe's 30 minutes, Chatham's 02:45): windows overlapped or ended before
    `now`. Here a window is the span over which the local date, hour and UTC offset stay the same,
    so windows follow each other without gap or overlap and every instant is in exactly one (the
    half hour a shift leaves of a local hour is a window of its own).
    """
    offset = local.utcoffset()
    start = now - timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
    end = start + timedelta(hours=1)  # the hour's bounds if the offset holds all through it
    if start.astimezone(tz).utcoffset() != offset:
        start = _changed(start, now, tz)
    if end.astimezone(tz).utcoffset() != offset:
        end = _changed(now, end, tz)
    return start, end


def _changed(lo: datetime, hi: datetime, tz: ZoneInfo) -> datetime:
    """The instant in (lo, hi] at which `tz` takes the offset it has at `hi` (it has another at `lo`):
    zoneinfo lists no transitions, so a bisection over whole seconds (where tzdata puts them)."""
    a, b = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    want = hi.astimezone(tz).utcoffset()
    while b - a > 1:
        m = (a + b) // 2
        if datetime.fromtimestamp(m, tz).utcoffset() == want:
            b = m
        else:
            a = m
    return datetime.fromtimestamp(b, UTC)


def seconds_until(end: datetime, now: datetime) -> int:
    """Whole seconds until `end`, rounded up (what Retry-After wants), at least 1."""
    delta = (end - now).total_seconds()
    return max(1, int(-(-delta // 1)))
