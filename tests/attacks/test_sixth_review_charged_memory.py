"""Sixth review: ordinary Responses traffic now evicts batch results from the "charged once" memory.

`batches.CHARGED` (10,000 keys, newest kept) was the memory of batch results files charged; the
fifth review's fix gives EVERY Responses answer with usage a `results_key`
(`openai:response:<id>`), so each Codex/agent turn through the gateway is written to the same
bounded LRU. After 10,000 ordinary responses (an hour or two of a team's agent traffic on a
central gateway) a batch results file charged earlier is forgotten, and downloading it again
charges the whole batch a second time ("batch results fetched again: already charged" no longer
holds). The same eviction makes a stored/background response charged twice.
Fixed: stored Responses have their own memory (`batches.RESPONSES_CHARGED`, 50,000 keys).
"""

from __future__ import annotations

import json

from spendgate.metering.meter import results_already_charged
from spendgate.metering.providers import batches, openai_responses
from spendgate.metering.providers.base import ResponseResult
from spendgate.usage import Usage


def _response(i: int) -> bytes:
    return json.dumps({"id": f"resp_{i}", "object": "response", "status": "completed", "model": "gpt-5",
                       "output": [], "usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}}).encode()


def test_ordinary_responses_do_not_make_a_charged_batch_chargeable_again():
    batch = ResponseResult(usage=Usage(input_tokens=1, output_tokens=1), usage_final=True,
                           results_key="openai:file:file-batch-results-1")
    assert results_already_charged(200, batch) is False  # its first download: charged
    for i in range(batches.MAX_REMEMBERED):  # the team's ordinary agent turns afterwards
        r = openai_responses.RESPONSES.parse_response(_response(i))
        assert r.results_key == f"openai:response:resp_{i}"
        results_already_charged(200, r)
    assert results_already_charged(200, batch) is True  # downloaded again: already charged
