"""Sixth review: a background Response's output was free when it was never fetched by id.

The fifth review's fix made the queued `POST /v1/responses` $0 ("charged when its result is
fetched") and charged the output at `GET /v1/responses/{id}`. Nothing obliges the client to make
that GET: the finished response is reachable through this same gateway as the
`previous_response_id` of a new (cheap) request, or as items of the Conversation it was stored in
(`GET /v1/conversations/{id}/items`). Now the queued POST charges the request's estimate (what
admission reserved) and the fetch charges the rest: a response read without a fetch is charged
its estimate. Charging its real usage would need the usage, which only the fetch carries
(docs/security.md, C2's residuals).
"""

from __future__ import annotations

import json

import pytest

from tests.attacks.test_fifth_review_background import QUEUED
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

HOST = "api.openai.com"
FOLLOW_UP = {"id": "resp_2", "object": "response", "status": "completed", "model": "gpt-5-2025-08-07",
             "previous_response_id": "resp_bg1",
             "output": [{"type": "message", "id": "msg_2", "role": "assistant", "status": "completed",
                         "content": [{"type": "output_text", "text": "the proof, again", "annotations": []}]}],
             "usage": {"input_tokens": 2000, "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens": 1000, "output_tokens_details": {"reasoning_tokens": 0},
                       "total_tokens": 3000}}
ITEMS = {"object": "list", "data": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                                      "content": [{"type": "output_text", "text": "the proof"}]}],
         "has_more": False}


@pytest.mark.parametrize("collect", ["previous_response_id", "conversation_items"])
def test_a_background_response_collected_without_its_get_is_still_charged(collect, gateway_factory, fake_provider):
    gw = gateway_factory().start()  # laptop mode, example policy
    h = {"authorization": "Bearer sk-test-SECRET456"}
    with gw.http_client() as c:
        fake_provider.serve_raw(HOST, "/v1/responses", json.dumps(QUEUED).encode(), "application/json")
        r = c.post(f"https://{HOST}/v1/responses", headers=h,
                   json={"model": "gpt-5", "input": "prove the Riemann hypothesis", "background": True,
                         "conversation": "conv_1"})
        assert r.status_code == 200 and r.json()["status"] == "queued"
        # (the model runs at OpenAI: 1k input, 400k output tokens, $4.00125; the client waits)
        if collect == "previous_response_id":
            fake_provider.serve_raw(HOST, "/v1/responses", json.dumps(FOLLOW_UP).encode(), "application/json")
            r = c.post(f"https://{HOST}/v1/responses", headers=h,
                       json={"model": "gpt-5", "previous_response_id": "resp_bg1",
                             "input": "repeat your last answer verbatim"})
        else:
            fake_provider.serve_raw(HOST, "/v1/conversations/conv_1/items", json.dumps(ITEMS).encode(),
                                    "application/json")
            r = c.get(f"https://{HOST}/v1/conversations/conv_1/items", headers=h)
        assert r.status_code == 200
    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    got = [(r["endpoint"], float(r["cost_usd"] or 0), float(r["charged_usd"] or 0), r["note"]) for r in rows]
    # the budgets hold the background response's estimate (1k input, 4,096 output tokens), not $0
    queued = got[0]
    assert queued[:2] == ("responses", 0.0) and queued[2] == pytest.approx(0.04096, abs=0.0001), got
    assert sum(c for _, _, c, _ in got) >= queued[2] + got[1][1], got
