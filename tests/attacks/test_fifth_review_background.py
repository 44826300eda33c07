"""Fifth review: OpenAI Responses `background: true` got the work done without paying for it.

POST /v1/responses with `"background": true` is answered at once with `status: queued` and no
usage; the model then runs at the provider and the client collects the answer, with its usage,
from GET /v1/responses/{id}. The POST row was an estimate of the input only, and the GET was
unmetered: the output tokens (the expensive part, reasoning included) were never charged. The GET
is now metered (`responses.retrieve`, also on Azure, whose background fetch the sixth review found
free): never refused, charged once per response id; the queued POST charges its estimate.
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


PROGRESS = {**QUEUED, "status": "in_progress"}


def _costs(rows):
    return [(r["endpoint"], r["outcome"], r["output_tokens"], float(r["cost_usd"] or 0), r["note"],
             float(r["charged_usd"] or 0)) for r in sorted(rows, key=lambda r: r["ts"])]


@pytest.mark.parametrize("host, base, h", [
    (HOST, "/v1", {"authorization": "Bearer sk-test-SECRET456"}),
    ("contoso.openai.azure.com", "/openai/v1", {"api-key": "azure-fake-SECRET-key-0001"}),  # Azure's background mode
])
def test_a_background_response_is_charged_for_the_output_it_produced(gateway_factory, fake_provider, host, base, h):
    gw = gateway_factory().start()  # laptop mode, example policy
    with gw.http_client() as c:
        fake_provider.serve_raw(host, f"{base}/responses", json.dumps(QUEUED).encode(), "application/json")
        r = c.post(f"https://{host}{base}/responses", headers=h,
                   json={"model": "gpt-5", "input": "prove the Riemann hypothesis", "background": True})
        assert r.status_code == 200 and r.json()["status"] == "queued"
        for answer in (PROGRESS, DONE, DONE):  # a poll while it runs, the answer, the answer again
            fake_provider.serve_raw(host, f"{base}/responses/resp_bg1", json.dumps(answer).encode(), "application/json")
            r = c.get(f"https://{host}{base}/responses/resp_bg1", headers=h)
            assert r.status_code == 200 and r.json() == answer  # the client has its answer, untouched
    rows = _costs(gw.ledger(wait_for=4))
    assert [(e, o, c) for e, o, _, c, _, _ in rows][:2] == [("responses", "ok", 0.0), ("responses.retrieve", "ok", 0.0)]
    # the queued POST costs nothing yet, but its estimate (input + 4,096 output tokens) counts on the budgets
    held = rows[0][5]
    assert held == pytest.approx(0.04096, abs=0.0001)
    assert rows[0][4].startswith("background response: charged when its result is fetched; its estimate, $")
    assert rows[0][4].endswith(", is charged until then")
    assert rows[1][4] == "background response: charged when its result is fetched" and rows[1][5] == 0
    # 400k gpt-5 output tokens at $10/Mtok and 1k input at $1.25/Mtok: charged once, when fetched, less the estimate
    assert rows[2][:3] == ("responses.retrieve", "ok", 400000) and rows[2][3] == pytest.approx(4.00125)
    assert rows[2][5] == pytest.approx(4.00125 - held) and rows[2][4].endswith("of it charged when it was queued")
    assert rows[3][3] == rows[3][5] == 0.0 and rows[3][4] == "response fetched again: already charged"
    assert sum(r[5] for r in rows) == pytest.approx(4.00125)  # the budgets counted the real cost, once


def test_a_background_response_never_fetched_by_id_still_counts_its_estimate(gateway_factory, fake_provider):
    """The answer can be read without a fetch (a follow-up naming it in previous_response_id, a
    conversation's items): the estimate charged when it was queued stays on the budgets."""
    gw = gateway_factory().start()
    h = {"authorization": "Bearer sk-test-SECRET456"}
    with gw.http_client() as c:
        fake_provider.serve_raw(HOST, "/v1/responses", json.dumps(QUEUED).encode(), "application/json")
        c.post(f"https://{HOST}/v1/responses", headers=h,
               json={"model": "gpt-5", "input": "think hard", "background": True})
        r = c.post(f"https://{HOST}/v1/responses", headers=h,
                   json={"model": "gpt-5", "input": "repeat your last answer", "previous_response_id": "resp_bg1"})
        assert r.status_code == 200
    rows = _costs(gw.ledger(wait_for=2))
    assert rows[0][5] == pytest.approx(0.04096, abs=0.0001)  # its estimate (the policy's typical output), charged


def test_a_fetch_is_never_refused_and_a_response_charged_at_its_post_is_not_charged_again(
        tmp_path, gateway_factory, fake_provider):
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\ntimezone: UTC\nidentity: [local_user]\ndefaults: {user: {day: 1}}\n")
    gw = gateway_factory(policy=p).start()
    h = {"authorization": "Bearer sk-test-SECRET456"}
    with gw.http_client() as c:
        fake_provider.serve_raw(HOST, "/v1/responses", json.dumps(DONE).encode(), "application/json")
        r = c.post(f"https://{HOST}/v1/responses", headers=h, json={"model": "gpt-5", "input": "hi"})
        assert r.status_code == 200  # the POST carried the usage: charged there ($4, over the $1 cap now)
        fake_provider.serve_raw(HOST, "/V1/Responses/resp_bg1", json.dumps(DONE).encode(), "application/json")
        r = c.get(f"https://{HOST}/V1/Responses/resp_bg1", headers=h)  # any spelling; at the cap: still served
        assert r.status_code == 200
        gw.ledger(wait_for=2)  # both recorded (and settled)
        r = c.post(f"https://{HOST}/v1/responses", headers=h, json={"model": "gpt-5", "input": "hi"})
        assert r.status_code == 429  # the cap holds for new work
    rows = _costs(gw.ledger(wait_for=3))
    assert [(e, c) for e, _, _, c, _, _ in rows][:2] == [("responses", pytest.approx(4.00125)), ("responses.retrieve", 0)]
    assert rows[1][4] == "response fetched again: already charged"


@pytest.mark.parametrize("method, path, endpoint, free", [
    ("GET", "/v1/responses/resp_1", "responses.retrieve", False),
    ("GET", "/V1/Responses/resp_1", "responses.retrieve", False),
    ("POST", "/v1/responses/resp_1/cancel", "responses.cancel", False),  # charged like a fetch, never refused
    ("POST", "https://contoso.openai.azure.com/openai/v1/responses/resp_1/cancel", "responses.cancel", False),
    ("DELETE", "/v1/responses/resp_1", "unmetered", True),
    ("GET", "/v1/responses/resp_1/input_items", "unmetered", True),
    ("GET", "https://contoso.openai.azure.com/openai/v1/responses/resp_1", "responses.retrieve", False),
    ("GET", "https://contoso.openai.azure.com/openai/responses/resp_1?api-version=2025-04-01-preview",
     "responses.retrieve", False),
])
def test_the_calls_around_a_stored_response(method, path, endpoint, free):
    from spendgate.metering import providers
    host, _, path = path.removeprefix("https://").partition("/") if path.startswith("https://") else (HOST, "", path)
    found = providers.route(host, "/" + path.lstrip("/"), method)
    assert (found.endpoint, bool(found.extra.get("free"))) == (endpoint, free)


def test_a_reused_response_id_never_makes_a_model_call_free(gateway_factory, fake_provider):
    """Only a fetch is ever $0 "already charged": a provider (or a site's own server) that answers
    two calls with one response id is charged for both."""
    gw = gateway_factory().start()
    h = {"authorization": "Bearer sk-test-SECRET456"}
    with gw.http_client() as c:
        for _ in range(2):
            fake_provider.serve_raw(HOST, "/v1/responses", json.dumps(DONE).encode(), "application/json")
            assert c.post(f"https://{HOST}/v1/responses", headers=h, json={"model": "gpt-5", "input": "hi"}
                          ).status_code == 200
    rows = _costs(gw.ledger(wait_for=2))
    assert [c for _, _, _, c, _, _ in rows] == [pytest.approx(4.00125)] * 2
