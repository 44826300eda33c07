"""Fifth review: OpenAI Responses `background: true` gets the work done without paying for it.

POST /v1/responses with `"background": true` is answered at once with `status: queued` and no
usage; the model then runs at the provider and the client collects the answer, with its usage,
from GET /v1/responses/{id}. The POST row is an estimate of the input only (output 0), and the
GET is an unmetered path (laptop default `allow`: $0; central default `block`). The output
tokens (the expensive part, reasoning included) are never charged to any budget.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

HOST = "api.openai.com"
QUEUED = {"id": "resp_bg1", "object": "response", "created_at": 1764600000, "status": "queued",
          "background": True, "model": "gpt-5-2025-08-07", "output": [], "usage": None}
DONE = {**QUEUED, "status": "completed",
        "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": "done", "annotations": []}]}],
        "usage": {"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": 400000, "output_tokens_details": {"reasoning_tokens": 399000},
                  "total_tokens": 401000}}


def test_a_background_response_is_charged_for_the_output_it_produced(gateway_factory, fake_provider):
    gw = gateway_factory().start()  # laptop mode, example policy
    fake_provider.serve_raw(HOST, "/v1/responses", json.dumps(QUEUED).encode(), "application/json")
    fake_provider.serve_raw(HOST, "/v1/responses/resp_bg1", json.dumps(DONE).encode(), "application/json")
    with gw.http_client() as c:
        h = {"authorization": "Bearer sk-test-SECRET456"}
        r = c.post(f"https://{HOST}/v1/responses", headers=h,
                   json={"model": "gpt-5", "input": "prove the Riemann hypothesis", "background": True})
        assert r.status_code == 200 and r.json()["status"] == "queued"
        r = c.get(f"https://{HOST}/v1/responses/resp_bg1", headers=h)
        assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 400000  # the client has its answer
    rows = gw.ledger(wait_for=2)
    charged = sum(r["cost_usd"] or 0 for r in rows)
    print([(r["endpoint"], r["outcome"], r["output_tokens"], r["cost_usd"]) for r in rows])
    # 400k gpt-5 output tokens at $10/Mtok = $4; the ledger must carry (about) that
    assert charged >= 3.5, [(r["endpoint"], r["outcome"], r["output_tokens"], r["cost_usd"]) for r in rows]
