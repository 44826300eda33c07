"""Fifth review: paid, model-running endpoints fall into the `unmetered` catch-all.

In laptop mode (`unmetered: allow`, the default there) they are forwarded with a $0 `unmetered`
row and count against no budget; on a central gateway (`block`) a client using them is broken.
README's "Not metered yet" list names none of them. The first test drives one through a real
gateway: `POST /v1/responses/compact` (OpenAI's compaction call, billed per token, its answer
carries `usage`); the second lists more.
"""

from __future__ import annotations

import json

import pytest

from spendgate.metering import providers
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.support import OPENAI_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

COMPACTED = {"id": "resp_c1", "object": "response.compaction", "created_at": 1764600000,
             "output": [{"type": "compaction", "encrypted_content": "gAAAA..."}],
             "usage": {"input_tokens": 180000, "input_tokens_details": {"cached_tokens": 0},
                       "output_tokens": 6000, "output_tokens_details": {"reasoning_tokens": 4000},
                       "total_tokens": 186000}}


def test_responses_compact_is_charged_like_the_model_call_it_is(gateway_factory, fake_provider):
    gw = gateway_factory().start()
    fake_provider.serve_raw("api.openai.com", "/v1/responses/compact", json.dumps(COMPACTED).encode(),
                            "application/json")
    with gw.http_client() as c:
        r = c.post("https://api.openai.com/v1/responses/compact", headers={"authorization": f"Bearer {OPENAI_KEY}"},
                   json={"model": "gpt-5.1-codex-max", "input": [{"role": "user", "content": "x" * 4000}]})
        assert r.status_code == 200
    row, = gw.ledger(wait_for=1)
    assert row["outcome"] != "unmetered" and (row["cost_usd"] or 0) > 0, (row["endpoint"], row["outcome"],
                                                                          row["cost_usd"])


@pytest.mark.parametrize("host,path", [
    ("api.openai.com", "/v1/responses/compact"),
    ("api.openai.com", "/v1/videos"),  # Sora, priced per second
    ("api.openai.com", "/v1/threads/runs"),  # Assistants runs
    ("api.openai.com", "/v1/threads/thread_1/runs"),
    ("generativelanguage.googleapis.com", "/v1beta/models/gemini-embedding-001:embedContent"),
    ("generativelanguage.googleapis.com", "/v1beta/models/gemini-embedding-001:batchEmbedContents"),
    ("generativelanguage.googleapis.com", "/v1beta/models/imagen-4.0-generate-001:predict"),
    ("generativelanguage.googleapis.com", "/v1beta/models/veo-3.0-generate-001:predictLongRunning"),
    ("chatgpt.com", "/backend-api/codex/responses/compact"),
])
def test_model_running_endpoints_are_metered(host, path):
    assert providers.route(host, path, "POST").adapter is not None
