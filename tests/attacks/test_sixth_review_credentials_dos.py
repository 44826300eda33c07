"""Sixth review: `identity.credentials` was quadratic in the number of credentials a request named,
on the proxy's event loop.

Each comma-separated Bearer token (and each `?key=` value) was checked against the list found so
far, so an `Authorization: Bearer t0,t1,...` of ~340 KB (50,000 tokens, which mitmproxy accepts)
cost ~13 s of CPU on the event loop before the request was refused, and every other user's traffic
waited. `credentials` now stops at the second distinct value (one or several is all admission
asks): 15 ms for that header, linear in its size (measured in the issue note; no timing here).
"""

from __future__ import annotations

import pytest

from spendgate.identity import credentials
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.support import OPENAI_KEY

HOST = "api.openai.com"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MANY = "Bearer " + ",".join(f"t{i}" for i in range(50_000))


class _Counting(dict):
    """Headers that count how often a credential header is read (each read is one pass)."""

    def __init__(self, *a) -> None:
        super().__init__(*a)
        self.reads = 0

    def get(self, key, default=None):
        self.reads += 1
        return super().get(key, default)


@pytest.mark.parametrize("headers, query", [
    ({"authorization": MANY}, ""),
    ({"x-api-key": ",".join(f"k{i}" for i in range(50_000))}, ""),
    ({}, "&".join(f"key=v{i}" for i in range(50_000))),
])
def test_credentials_stop_at_the_second_distinct_value(headers, query):
    h = _Counting(headers)
    assert len(credentials(h, query)) == 2
    assert h.reads <= 5  # each header read once, not once per value found


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_many_bearer_tokens_are_refused_and_others_still_served(gateway_factory, fake_provider):
    gw = gateway_factory().start()
    with gw.http_client(timeout=120) as c:
        r = c.post(f"https://{HOST}/v1/chat/completions", json=BODY, headers={"authorization": MANY})
        assert r.status_code == 403 and r.headers["x-spendgate-refused"] == "several_credentials"
        r = c.post(f"https://{HOST}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {OPENAI_KEY}"})
        assert r.status_code == 200
    assert len(fake_provider.requests_to(route="/v1/chat/completions")) == 1
