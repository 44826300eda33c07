"""Test support: a test CA, a fake LLM provider (mitmproxy upstream), and a real-mitmdump gateway helper."""

# Credentials the e2e tests use; tests grep that none of them lands in the ledger file or the log.
ANTHROPIC_KEY = "sk-ant-test-SECRET123"
OPENAI_KEY = "sk-test-SECRET456"
GEMINI_KEY = "AIza-test-SECRET789"
CHATGPT_TOKEN = "eyJchatgpt-test-SECRET000"
RAW_KEYS = (ANTHROPIC_KEY, OPENAI_KEY, GEMINI_KEY, CHATGPT_TOKEN)


def wait_until(predicate, timeout=60.0, every=0.2):
    """Poll `predicate` until it returns something truthy (returned) or `timeout` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def clear_of_midnight(tz: str, margin: float = 120.0) -> float:
    """Sleep past the next midnight in `tz` when it is less than `margin` seconds away; returns the
    seconds slept. A test that charges a day window and then reads "today's" spend must not straddle
    the day's end: the charge lands in the day of the request's time, the read in the new day (a
    laptop test failed so at 23:00 UTC, midnight in Paris)."""
    import time
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo(tz))
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo)
    left = (midnight - now).total_seconds()
    if left >= margin:
        return 0.0
    time.sleep(left + 1.0)
    return left + 1.0
