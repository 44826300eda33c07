"""Reviewer's reproductions (branch review): OpenAI batches are admitted at $0 whatever they hold."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import anthropic
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.mark.xfail(strict=True, reason="R3: an OpenAI batch submission reserves $0, so any number of batches of "
                                        "any size are admitted while room >= 0 (Anthropic's are refused)")
def test_r3_openai_batches_are_refused_at_the_cap_like_anthropic_ones(tmp_path, gateway_factory):
    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\ndefaults: {user: {day: 0.0001}}\n")
    gw = gateway_factory(policy=pol).start()
    ant = anthropic.Anthropic(api_key="sk-ant-batch-SECRET", http_client=gw.http_client(), max_retries=0)
    with pytest.raises(anthropic.RateLimitError):  # 50 requests: refused at submission
        ant.messages.batches.create(requests=[{"custom_id": f"q{i}", "params": {
            "model": "claude-sonnet-4-5", "max_tokens": 400, "messages": [{"role": "user", "content": "hi"}]}}
            for i in range(50)])
    client = openai.OpenAI(api_key="sk-batch-SECRET", http_client=gw.http_client(), max_retries=0)
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}}
             for i in range(50)]
    f = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(map(json.dumps, lines)).encode()),
                                  "application/jsonl"), purpose="batch")
    admitted = 0
    for _ in range(5):  # the same 50-request batch, five times, on a $0.0001 day budget
        try:
            client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
            admitted += 1
        except openai.RateLimitError:
            pass
    rows = gw.ledger(wait_for=3)
    print("admitted", admitted, [(r["endpoint"], r["outcome"], r["charged_usd"]) for r in rows])
    assert admitted == 0
