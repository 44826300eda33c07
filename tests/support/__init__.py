"""Test support: a test CA, a fake LLM provider (mitmproxy upstream), and a real-mitmdump gateway helper."""

# Credentials the e2e tests use; tests grep that none of them lands in the ledger file or the log.
ANTHROPIC_KEY = "sk-ant-test-SECRET123"
OPENAI_KEY = "sk-test-SECRET456"
GEMINI_KEY = "AIza-test-SECRET789"
CHATGPT_TOKEN = "eyJchatgpt-test-SECRET000"
RAW_KEYS = (ANTHROPIC_KEY, OPENAI_KEY, GEMINI_KEY, CHATGPT_TOKEN)
