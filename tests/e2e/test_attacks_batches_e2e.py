"""Reviewer's reproductions (branch review): OpenAI batches are admitted at $0 whatever they hold."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import anthropic
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


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


def test_an_openai_batch_is_admitted_by_the_estimate_of_its_uploaded_file(tmp_path, gateway_factory):
    """$0.05 a day: a small batch (2 x gpt-4o-mini, 100 tokens out) fits and is admitted, again and
    again (a submission bills nothing; its results are charged when fetched); a 50 x gpt-4o batch
    of 4,000 tokens each (about $1 at batch rates) is refused, naming the budget. A file the gateway
    never saw uploaded (a restart, another replica) reserves the micro-dollar minimum: admitted
    while the budget has any room (docs/pricing.md)."""
    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\ndefaults: {user: {day: 0.05}}\n")
    gw = gateway_factory(policy=pol).start()
    client = openai.OpenAI(api_key="sk-batch-SECRET", http_client=gw.http_client(), max_retries=0)

    def upload(model: str, n: int, max_tokens: int) -> str:
        lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}}
                 for i in range(n)]
        return client.files.create(file=("in.jsonl", io.BytesIO("\n".join(map(json.dumps, lines)).encode()),
                                         "application/jsonl"), purpose="batch").id

    small, big = upload("gpt-4o-mini", 2, 100), upload("gpt-4o", 50, 4000)
    for _ in range(2):
        client.batches.create(input_file_id=small, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.RateLimitError) as err:
        client.batches.create(input_file_id=big, endpoint="/v1/chat/completions", completion_window="24h")
    assert "user:" in err.value.response.json()["error"]["message"]
    client.batches.create(input_file_id="file-uploaded-elsewhere", endpoint="/v1/chat/completions",
                          completion_window="24h")
    rows = gw.ledger(wait_for=6)
    got = sorted((r["endpoint"], r["outcome"], Decimal(str(r["charged_usd"]))) for r in rows)
    assert got == sorted([("files.upload", "ok", Decimal(0))] * 2 + [("batch.submit", "ok", Decimal(0))] * 3
                         + [("batch.submit", "blocked", Decimal(0))]), got
