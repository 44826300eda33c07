"""Seventh review: another host's Responses answer made an OpenAI background fetch $0.

The charged-once memory (`batches.RESPONSES_CHARGED`) is keyed `openai:response:<id>` whatever
host answered: `apply_response` sets that key for every Responses answer with usage, and
`results_already_charged(..., fetched=False)` marks it for a POST to *any* host metered with the
Responses adapter (OpenRouter, xAI, Groq, Together, Fireworks, DeepSeek, Mistral, Azure, a site's
extra host). A POST whose answer carries the id of a queued OpenAI background response (a server
that lets the client choose the id, or echoes it) makes that response's real fetch
"response fetched again: already charged": the client pays the queued estimate ($0.04) and an
OpenRouter call for $4 of gpt-5 output.
Fixed: the charged-once key and the held estimate are keyed by host and response id.
"""

from __future__ import annotations

import json

import pytest

from tests.attacks.test_fifth_review_background import DONE, QUEUED, _costs
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

OPENAI = "api.openai.com"
OTHER = "openrouter.ai"
TINY = {"id": "resp_bg1", "object": "response", "status": "completed", "model": "openai/gpt-4o-mini",
        "output": [], "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6}}


def test_another_hosts_response_id_never_makes_an_openai_fetch_free(gateway_factory, fake_provider):
    gw = gateway_factory().start()
    h = {"authorization": "Bearer sk-test-SECRET456"}
    with gw.http_client() as c:
        fake_provider.serve_raw(OPENAI, "/v1/responses", json.dumps(QUEUED).encode(), "application/json")
        assert c.post(f"https://{OPENAI}/v1/responses", headers=h,
                      json={"model": "gpt-5", "input": "think hard", "background": True}).status_code == 200
        # a cheap call elsewhere whose answer carries the same response id
        fake_provider.serve_raw(OTHER, "/api/v1/responses", json.dumps(TINY).encode(), "application/json")
        assert c.post(f"https://{OTHER}/api/v1/responses", headers={"authorization": "Bearer sk-or-v1-x"},
                      json={"model": "openai/gpt-4o-mini", "input": "hi"}).status_code == 200
        gw.ledger(wait_for=2)
        fake_provider.serve_raw(OPENAI, "/v1/responses/resp_bg1", json.dumps(DONE).encode(), "application/json")
        r = c.get(f"https://{OPENAI}/v1/responses/resp_bg1", headers=h)
        assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 400000
    rows = _costs(gw.ledger(wait_for=3))
    fetch = [r for r in rows if r[0] == "responses.retrieve"][0]
    # 400k gpt-5 output tokens were delivered by api.openai.com: the fetch must be charged (less the estimate)
    assert fetch[3] == pytest.approx(4.00125), rows
