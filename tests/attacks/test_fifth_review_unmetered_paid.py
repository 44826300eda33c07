"""Fifth review: paid, model-running endpoints fell into the `unmetered` catch-all.

In laptop mode (`unmetered: allow`, the default there) they were forwarded with a $0 `unmetered`
row and counted against no budget. Codex's remote compaction (`POST /v1/responses/compact`, and
over ChatGPT login `/backend-api/codex/responses/compact`; its answer carries a Responses `usage`)
is now metered (endpoint `responses.compact`). The others the review named (Sora `/v1/videos`,
Assistants runs, Gemini `:embedContent`, Imagen `:predict`, Veo `:predictLongRunning`) stay
`unmetered` and are listed in README's "Not metered yet".
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
    assert (row["endpoint"], row["outcome"], row["model"]) == ("responses.compact", "ok", "gpt-5.1-codex-max")
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (180000, 6000, 4000)
    assert float(row["cost_usd"]) == pytest.approx(180000 * 1.25e-6 + 6000 * 10e-6)


@pytest.mark.parametrize("host,path", [
    ("api.openai.com", "/v1/responses/compact"),
    ("api.openai.com", "/V1/Responses/Compact"),
    ("eu.api.openai.com", "/v1/responses/compact"),
    ("chatgpt.com", "/backend-api/codex/responses/compact"),
])
def test_compaction_is_metered_on_every_openai_host(host, path):
    assert providers.route(host, path, "POST").endpoint == "responses.compact"
