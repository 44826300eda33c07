"""Calendar windows in the policy's time zone: hour, day, week (from Monday), month.

A window is [start, end) in local wall-clock terms, so a day is midnight to midnight even across
a DST change, and a counter resets exactly at the boundary.
"""

from __future__ import annotations

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
        start = local.replace(minute=0, second=0, microsecond=0)
        s = start.astimezone(UTC)
        return s, s + timedelta(hours=1)
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


def seconds_until(end: datetime, now: datetime) -> int:
    """Whole seconds until `end`, rounded up (what Retry-After wants), at least 1."""
    delta = (end - now).total_seconds()
    return max(1, int(-(-delta // 1)))
