"""Fifth review (held): a Gemini API key sent as `?key=` (Gemini's documented form) never reaches
the gateway's log, though mitmdump's flow line prints the whole URL, query included."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.support import GEMINI_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

HOST = "generativelanguage.googleapis.com"


def test_a_query_string_api_key_never_reaches_the_gateway_log(gateway_factory, fake_provider):
    gw = gateway_factory().start()
    with gw.http_client() as c:
        r = c.post(f"https://{HOST}/v1beta/models/gemini-2.5-flash:generateContent?key={GEMINI_KEY}",
                   json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
        assert r.status_code == 200, r.text
        assert "usageMetadata" in r.json()
    rows = gw.ledger(wait_for=1)
    assert rows[0]["key_fingerprint"]  # metered and fingerprinted
    gw.stop()
    log = gw.log_text()
    assert GEMINI_KEY not in log, [line for line in log.splitlines() if GEMINI_KEY in line][:3]
