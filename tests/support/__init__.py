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


def clear_of_midnight(tz: str, before: float = 120.0, after: float = 0.0) -> float:
    """Sleep until the day in `tz` is at least `after` seconds old and at least `before` seconds
    from its end; returns the seconds slept. A test that charges "today" (rows a few minutes old, a
    request made now) and reads today's spend back must not straddle the day's end: the charge lands
    in the day of the row's time, the read in the new day (a laptop test failed so at 23:00 UTC,
    midnight in Paris; a re-pricing test whose rows were five minutes old at 00:01 UTC)."""
    import time
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo(tz))
    start = datetime.combine(now.date(), datetime.min.time(), now.tzinfo)
    into, left = (now - start).total_seconds(), (start + timedelta(days=1) - now).total_seconds()
    wait = left + after + 1.0 if left < before else after - into if into < after else 0.0
    if wait > 0:
        time.sleep(wait)
    return max(wait, 0.0)
