"""Sixth review: a background Response on Azure OpenAI is free.

The fifth review's fix made the queued `POST .../responses` answer $0 ("charged when its result
is fetched") for every host the Responses adapter serves, but only api.openai.com's
`GET /v1/responses/{id}` is metered. Azure OpenAI documents the same background mode
(`POST /openai/v1/responses` with `background: true`, then `GET /openai/v1/responses/{id}`);
there the fetch is `unmetered`, so 400k output tokens cost $0.
Fixed: `GET /openai(/v1)/responses/{id}` on Azure hosts is metered like api.openai.com's, and the
queued POST charges its estimate anyway.
"""

from __future__ import annotations

import json

import pytest

from tests.attacks.test_fifth_review_background import DONE, QUEUED
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

HOST = "contoso.openai.azure.com"


def test_an_azure_background_response_is_charged_when_fetched(gateway_factory, fake_provider):
    gw = gateway_factory().start()
    h = {"api-key": "azure-fake-SECRET-key-0001"}
    with gw.http_client() as c:
        fake_provider.serve_raw(HOST, "/openai/v1/responses", json.dumps(QUEUED).encode(), "application/json")
        r = c.post(f"https://{HOST}/openai/v1/responses", headers=h,
                   json={"model": "gpt-5", "input": "prove the Riemann hypothesis", "background": True})
        assert r.status_code == 200 and r.json()["status"] == "queued"
        fake_provider.serve_raw(HOST, "/openai/v1/responses/resp_bg1", json.dumps(DONE).encode(), "application/json")
        r = c.get(f"https://{HOST}/openai/v1/responses/resp_bg1", headers=h)
        assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 400000
    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    got = [(r["endpoint"], r["output_tokens"], float(r["cost_usd"] or 0)) for r in rows]
    # the output the model produced is charged somewhere: at the POST or at the fetch
    assert sum(c for _, _, c in got) > 1.0, got


def test_the_azure_retrieve_route_is_metered():
    from spendgate.metering import providers
    assert providers.route(HOST, "/openai/v1/responses", "POST").endpoint == "responses"
    assert providers.route(HOST, "/openai/v1/responses/resp_1", "GET").endpoint != "unmetered"
