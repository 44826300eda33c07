"""Fifth review: a decoy credential header the provider ignores chose the key (and user) charged.

`identity.api_key` took the first of x-api-key / x-goog-api-key / api-key / Authorization,
whatever the provider. api.openai.com authenticates with `Authorization: Bearer` only, so a
client added `x-api-key: <anything>`: the row's key fingerprint (the `keys:` budget, and the
`api_key` identity source) was the decoy's, while the provider billed the real key. A request
carrying more than one distinct credential is now refused (403 several_credentials).
"""

from __future__ import annotations

import openai
import pytest

from spendgate.identity import fingerprint
from tests.support import OPENAI_KEY
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def key_capped_policy(tmp_path, key: str):
    """`key` maps to bob and has no room left (a micro-dollar a day); everyone else has plenty."""
    p = tmp_path / "policy.yaml"
    p.write_text(f"""version: 1
timezone: UTC
organization: {{name: acme, budgets: {{month: 100000}}}}
identity: [api_key, local_user]
defaults:
  user: {{day: 1000}}
  key: {{day: 1000}}
  unattributed: {{day: 1000}}
users: {{bob: {{budgets: {{day: 1000}}}}, tester: {{budgets: {{day: 1000}}}}}}
keys:
  "{fingerprint(key)}": {{user: bob, budgets: {{day: 0.000001}}}}
""")
    return p


def _ask(gw, **headers):
    c = openai.OpenAI(api_key=OPENAI_KEY, http_client=gw.http_client(), max_retries=0)
    try:
        return c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_headers=headers or None)
    finally:
        c.close()


def test_a_decoy_x_api_key_does_not_move_openai_traffic_off_its_real_keys_budget(tmp_path, gateway_factory,
                                                                                  fake_provider):
    gw = gateway_factory(policy=key_capped_policy(tmp_path, OPENAI_KEY)).start()
    with pytest.raises(openai.RateLimitError):  # the real key's budget does not cover a request
        _ask(gw)
    # the same key, plus a header api.openai.com never reads: refused, never forwarded
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _ask(gw, **{"x-api-key": "decoy-1"})
    assert refused.value.response.headers["x-spendgate-refused"] == "several_credentials"
    assert "more than one API credential" in refused.value.message
    assert fake_provider.requests_to(route="/v1/chat/completions") == []
    # the same credential twice (Claude Code's apiKeyHelper sends x-api-key and Bearer alike) is one
    with pytest.raises(openai.RateLimitError):
        _ask(gw, **{"x-api-key": OPENAI_KEY})
    rows = gw.ledger(wait_for=3)
    assert sorted(r["outcome"] for r in rows) == ["blocked"] * 3, [(r["outcome"], r["note"]) for r in rows]


@pytest.mark.parametrize("headers, query, expected", [
    ({"authorization": "Bearer sk-real"}, "", ["sk-real"]),
    ({"x-api-key": "k1", "authorization": "Bearer k1"}, "", ["k1"]),
    ({"x-api-key": "decoy", "authorization": "Bearer sk-real"}, "", ["decoy", "sk-real"]),
    ({"api-key": "azure", "x-api-key": "decoy"}, "", ["decoy", "azure"]),
    ({"x-goog-api-key": "decoy"}, "key=real", ["decoy", "real"]),
    ({"x-goog-api-key": "same"}, "alt=sse&key=same", ["same"]),
    ({"authorization": "Bearer a, Bearer b"}, "", ["a", "b"]),
    ({"authorization": "Basic dXNlcjpwdw=="}, "", []),
    ({"x-api-key": "decoy, sk-ant-real"}, "", ["decoy", "sk-ant-real"]),  # the header twice, folded
    ({"authorization": "Bearer a, b"}, "", ["a", "b"]),
    ({"authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/us-east-1/bedrock/aws4_request, "
                       "SignedHeaders=host, Signature=abc"}, "", ["AKIAIOSFODNN7EXAMPLE"]),
    ({"authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/us-east-1/bedrock/aws4_request, "
                       "SignedHeaders=host, Signature=abc, Bearer decoy"}, "", ["AKIAIOSFODNN7EXAMPLE", "decoy"]),
    ({}, "key=real&key=decoy", ["real", "decoy"]),
])
def test_every_credential_a_request_carries_is_seen(headers, query, expected):
    from spendgate.identity import credentials
    assert credentials(headers, query) == expected


def test_a_repeated_key_header_is_refused_not_fingerprinted_as_one_odd_key(gateway_factory, fake_provider):
    gw = gateway_factory().start()
    with gw.http_client() as c:
        r = c.post("https://api.anthropic.com/v1/messages",
                   headers=[("x-api-key", "sk-ant-decoy"), ("x-api-key", "sk-ant-api03-real"),
                            ("anthropic-version", "2023-06-01")],
                   json={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 403 and r.headers["x-spendgate-refused"] == "several_credentials"
    assert r.json()["type"] == "error"  # Anthropic's error shape
    assert fake_provider.requests_to(route="/v1/messages") == []
