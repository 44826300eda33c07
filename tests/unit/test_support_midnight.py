"""tests.support.clear_of_midnight: tests wait out a day's end instead of straddling it."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tests.support import clear_of_midnight


def _day_so_far(tz: str) -> tuple[float, float]:
    now = datetime.now(ZoneInfo(tz))
    start = datetime.combine(now.date(), datetime.min.time(), now.tzinfo)
    return (now - start).total_seconds(), (start + timedelta(days=1) - now).total_seconds()


def test_it_sleeps_only_near_a_midnight(monkeypatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    assert clear_of_midnight("Europe/Paris", before=0, after=0) == 0.0 and slept == []  # never near enough
    _, left = _day_so_far("Europe/Paris")
    waited = clear_of_midnight("Europe/Paris", before=86_401, after=0)  # the end always near: past it
    assert slept == [waited] and left - 5 < waited - 1.0 <= left  # to one second past midnight
    slept.clear()
    into, _ = _day_so_far("Europe/Paris")
    waited = clear_of_midnight("Europe/Paris", before=0, after=86_401)  # the day always too young
    assert slept == [waited] and 86_401 - into - 5 < waited <= 86_401 - into
