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
