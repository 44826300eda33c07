"""tests.support.clear_of_midnight: e2e tests wait out a day's end instead of straddling it."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tests.support import clear_of_midnight


def test_it_sleeps_past_midnight_only_when_midnight_is_near(monkeypatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    assert clear_of_midnight("Europe/Paris", margin=0) == 0.0 and slept == []  # never near enough
    now = datetime.now(ZoneInfo("Europe/Paris"))
    left = (datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo) - now).total_seconds()
    waited = clear_of_midnight("Europe/Paris", margin=86_401)  # always near enough: sleeps past it
    assert slept == [waited] and left - 5 < waited - 1.0 <= left  # to one second past midnight
