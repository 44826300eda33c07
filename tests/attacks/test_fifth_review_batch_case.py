"""Fifth review: batch results downloads were matched case-sensitively, unlike every other route.

`providers.route` lower-cases a path that matched nothing (`/V1/Messages` is `/v1/messages`, the
module's stated rule: a server that treats both spellings alike must not see us treat them
differently), and `_route_batches` lower-cased submissions, but the GET results patterns
(OpenAI file content, Anthropic batch results, Gemini download and batch operation) were matched on
the case-kept path: `GET /V1/files/{id}/content` was `unmetered` ($0 in laptop mode).
"""

from __future__ import annotations

import json

import pytest

from spendgate.metering import providers
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.support import OPENAI_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def _line(i: int) -> str:
    return json.dumps({"id": f"batch_req_{i}", "custom_id": f"r{i}", "response": {"status_code": 200, "request_id": "x",
        "body": {"id": f"chatcmpl-{i}", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 100000, "completion_tokens": 100000, "total_tokens": 200000}}},
        "error": None})


BODY = ("\n".join(_line(i) for i in range(3)) + "\n").encode()


@pytest.mark.parametrize("path", ["/v1/files/file-out1/content", "/V1/Files/file-out2/Content"])
def test_a_results_download_is_charged_in_any_spelling(gateway_factory, fake_provider, path):
    gw = gateway_factory().start()
    fake_provider.serve_raw("api.openai.com", path, BODY, "application/octet-stream")
    with gw.http_client() as c:
        r = c.get(f"https://api.openai.com{path}", headers={"authorization": f"Bearer {OPENAI_KEY}"})
        assert r.status_code == 200 and r.content == BODY
    rows = gw.ledger(wait_for=1)
    assert sum(float(x["cost_usd"] or 0) for x in rows) > 0, [(x["endpoint"], x["outcome"], x["cost_usd"])
                                                              for x in rows]


@pytest.mark.parametrize("host,path", [
    ("api.anthropic.com", "/V1/messages/batches/msgbatch_1/results"),
    ("generativelanguage.googleapis.com", "/Download/v1beta/files/abc:download"),
    ("generativelanguage.googleapis.com", "/V1beta/batches/abc"),
])
def test_other_results_routes_in_another_spelling(host, path):
    assert providers.route(host, path, "GET").adapter is not None
