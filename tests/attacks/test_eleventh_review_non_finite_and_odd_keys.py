"""Eleventh review: values a hand-edited file or a client sends that once broke every request.

F3/F4: YAML reads `.nan` and `.inf` as floats, and JSON Schema's `minimum: 0` lets both through
(NaN compares false with everything). `hour: .nan` passed `policy check` and reloaded, then every
request of every user got a 503 (decimal.InvalidOperation in the budget book); `.inf` was
silently no cap; `input_mtok: .nan` in the price overrides made each request for that model a
503, `.inf` a 429 naming a cap that was not reached. Every file read through
`spendgate.yamlcheck` (policy, price overrides, MDM site config) now refuses a non-finite number
at its line, so the gateway keeps its last good policy and prices.

F10: an API key header with bytes that are not UTF-8 (`x-api-key: sk-ant-\\xff\\xfe`) reached
`identity.fingerprint` as surrogate escapes, `str.encode()` raised, and the request got a
retryable 503 instead of the provider's own answer (401). It is fingerprinted now.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from spendgate.identity import fingerprint
from spendgate.policy.model import PolicyError, parse
from spendgate.pricing.rates import PricingError, parse_overrides
from tests.attacks.tenth_review_support import make, send


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", ".Inf"])
def test_a_budget_that_is_not_a_finite_number_is_refused_at_its_line(value):
    with pytest.raises(PolicyError) as e:
        parse(f"version: 1\ndefaults:\n  user: {{hour: {value}}}\n")
    assert f"<policy>:3:16: defaults.user.hour: {value} is not a finite number" in str(e.value)


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_a_price_that_is_not_a_finite_number_is_refused_at_its_line(value):
    text = ("version: 1\nmodels:\n  - provider: openai\n    model: gpt-4o-mini\n    effective_from: 2025-01-01\n"
            f"    input_mtok: {value}\n")
    with pytest.raises(PricingError) as e:
        parse_overrides(text)
    assert f"<overrides>:6:17: models.0.input_mtok: {value} is not a finite number" in str(e.value)


def test_a_finite_budget_still_parses():
    assert parse("version: 1\ndefaults:\n  user: {hour: 0.05}\n").defaults["user"]["hour"] == Decimal("0.05")


def test_a_key_that_is_not_utf8_is_fingerprinted_and_its_request_forwarded(tmp_path):
    raw = b"sk-ant-\xff\xfe".decode("utf-8", "surrogateescape")  # how mitmproxy hands such a header on
    assert fingerprint(raw).startswith("sha256:") and fingerprint(raw) != fingerprint("sk-ant-")
    gw = make(tmp_path)
    try:
        ex, answer = send(gw, "api.anthropic.com", "/v1/messages",
                          b'{"model": "claude-haiku-4-5", "max_tokens": 9, "messages": []}',
                          {"x-api-key": raw, "anthropic-version": "2023-06-01"})
        assert answer is None  # forwarded: the provider answers a bad key itself
        assert ex.identity.key_fingerprint == fingerprint(raw)
    finally:
        gw.close()
