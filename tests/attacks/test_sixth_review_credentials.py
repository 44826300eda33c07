"""Sixth review: second credentials the fifth review's `identity.credentials` rule does not see.

1. A credential header sent twice with different values (`x-api-key: REAL` + `x-api-key: decoy`)
   is folded by the proxy edge (`addons/gateway._headers`) into one value `"REAL, decoy"`, which
   `credentials` counts as ONE credential (only a Bearer token is split on commas). The request
   is forwarded; its row is fingerprinted as the made-up key "REAL, decoy" (not REAL: REAL's
   `keys:` budget and user mapping are dodged) while a provider that reads the first header
   bills REAL.
2. `?k%65y=REAL` is `key=REAL` once the query is decoded (parse_qs decodes names, as any form
   decoder does), but `credentials` looks for the literal bytes "key=" before parsing, so a
   Gemini request with `?k%65y=REAL` and `x-goog-api-key: decoy` is one credential: decoy.
Both fixed: every credential header is split on commas, and query names are percent-decoded.
"""

from __future__ import annotations


import pytest

from spendgate.identity import credentials, fingerprint
from tests.attacks.test_fifth_review_decoy_key import key_capped_policy
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.support import ANTHROPIC_KEY, GEMINI_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_a_repeated_x_api_key_header_is_two_credentials(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=key_capped_policy(tmp_path, ANTHROPIC_KEY)).start()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    with gw.http_client() as c:
        r = c.post("https://api.anthropic.com/v1/messages", json=body,
                   headers=[("x-api-key", ANTHROPIC_KEY), ("anthropic-version", "2023-06-01")])
        assert r.status_code == 429  # the real key's budget does not cover a request
        r = c.post("https://api.anthropic.com/v1/messages", json=body,
                   headers=[("x-api-key", ANTHROPIC_KEY), ("x-api-key", "decoy-1"),
                            ("anthropic-version", "2023-06-01")])
        # two different keys: refused like x-api-key + Authorization (403 several_credentials)
        assert r.status_code == 403 and r.headers.get("x-spendgate-refused") == "several_credentials", (
            r.status_code, [(x["outcome"], x["key_fingerprint"]) for x in gw.ledger(wait_for=2)])


def test_a_percent_encoded_key_parameter_is_a_credential(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=key_capped_policy(tmp_path, GEMINI_KEY)).start()
    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with gw.http_client() as c:
        r = c.post(f"{url}?key={GEMINI_KEY}", json=body)
        assert r.status_code == 429  # the real key's budget does not cover a request
        r = c.post(f"{url}?k%65y={GEMINI_KEY}", json=body, headers={"x-goog-api-key": "decoy-1"})
        assert r.status_code == 403 and r.headers.get("x-spendgate-refused") == "several_credentials", (
            r.status_code, [(x["outcome"], x["key_fingerprint"]) for x in gw.ledger(wait_for=2)])


@pytest.mark.parametrize("headers, query", [
    ({"x-api-key": "REAL, decoy"}, ""),  # what _headers makes of x-api-key sent twice
    ({"x-goog-api-key": "REAL, decoy"}, ""),
    ({"x-goog-api-key": "decoy"}, "k%65y=REAL"),
    ({"x-goog-api-key": "decoy"}, "%6Bey=REAL"),
])
def test_unit_second_credential_is_seen(headers, query):
    assert len(credentials(headers, query)) == 2, credentials(headers, query)
