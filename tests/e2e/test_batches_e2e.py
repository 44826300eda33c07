"""The batch APIs end to end: submitted (admitted with an estimate, $0), charged at batch rates
when the results are fetched, once. Official anthropic and openai SDKs; Gemini over plain HTTPS.

Batch rates (USD per MTok, pinned catalogue, in force from 2026-10-14):
* claude-sonnet-4-5: input $1.50, cache read $0.15, output $7.50; claude-haiku-4-5: $0.50, $0.05, $2.50.
* gpt-4o-mini: input $0.075, output $0.30.
* gemini-2.5-flash: input $0.15, output $1.25.
Per succeeded request the fake bills: Anthropic 1000 uncached + 200 cache read in, 300 out;
OpenAI and Gemini 1000 in, 300 out. Requests whose id starts with ``fail`` fail and bill nothing.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal

import anthropic
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

M = Decimal(1_000_000)
SONNET_LINE = (1000 * Decimal("1.5") + 200 * Decimal("0.15") + 300 * Decimal("7.5")) / M
HAIKU_LINE = (1000 * Decimal("0.5") + 200 * Decimal("0.05") + 300 * Decimal("2.5")) / M
GPT_LINE = (1000 * Decimal("0.075") + 300 * Decimal("0.3")) / M
GEMINI_LINE = (1000 * Decimal("0.15") + 300 * Decimal("1.25")) / M


def D(v) -> Decimal:
    return Decimal(str(v))


def ask(cid: str, model: str) -> dict:
    return {"custom_id": cid, "params": {"model": model, "max_tokens": 400,
                                         "messages": [{"role": "user", "content": "hi"}]}}


def test_anthropic_message_batch_charged_per_model_when_results_are_fetched_once(gateway):
    client = anthropic.Anthropic(api_key="sk-ant-batch-SECRET", http_client=gateway.http_client(), max_retries=0)
    batch = client.messages.batches.create(requests=[
        ask("a", "claude-sonnet-4-5"), ask("b", "claude-sonnet-4-5"), ask("c", "claude-haiku-4-5"),
        ask("fail-d", "claude-sonnet-4-5")])
    assert batch.processing_status == "in_progress"
    results = list(client.messages.batches.results(batch.id))
    assert sorted(r.result.type for r in results) == ["errored", "succeeded", "succeeded", "succeeded"]
    again = list(client.messages.batches.results(batch.id))  # fetched twice: charged once
    assert len(again) == 4

    rows = gateway.ledger(wait_for=6)
    (submit,) = [r for r in rows if r["endpoint"] == "batch.submit"]
    assert (submit["provider"], submit["model"], submit["outcome"], D(submit["cost_usd"])) == \
        ("anthropic", "claude-sonnet-4-5", "ok", 0)
    assert submit["price_source"] == "not billed (batch submitted: charged when its results are fetched)"
    charged = sorted((r for r in rows if r["endpoint"] == "batch.results" and D(r["cost_usd"]) > 0),
                     key=lambda r: r["model"])
    assert [r["model"] for r in charged] == ["claude-haiku-4-5", "claude-sonnet-4-5"]
    haiku, sonnet = charged
    assert (sonnet["input_tokens"], sonnet["cache_read_tokens"], sonnet["output_tokens"]) == (2400, 400, 600)
    assert D(sonnet["cost_usd"]) == 2 * SONNET_LINE == Decimal("0.00756")
    assert (haiku["input_tokens"], haiku["output_tokens"]) == (1200, 300)
    assert D(haiku["cost_usd"]) == HAIKU_LINE == Decimal("0.00126")
    assert all(json.loads(r["modifiers"]) == {"service_tier": "batch"} for r in charged)
    assert all(D(r["charged_usd"]) == D(r["cost_usd"]) for r in charged)
    repeat = [r for r in rows if r["endpoint"] == "batch.results" and D(r["cost_usd"]) == 0]
    assert len(repeat) == 1 and repeat[0]["note"] == "batch results fetched again: already charged"
    text = gateway.cli("explain", sonnet["request_id"], check=True).stdout
    assert "(batch)" in text


def test_openai_batch_output_file_charged_at_batch_rates(gateway):
    client = openai.OpenAI(api_key="sk-batch-SECRET", http_client=gateway.http_client(), max_retries=0)
    lines = [{"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}
             for cid in ("r1", "r2", "fail-3")]
    f = client.files.create(file=("in.jsonl", io.BytesIO("\n".join(map(json.dumps, lines)).encode()),
                                  "application/jsonl"), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id
    out = client.files.content(done.output_file_id).text
    assert len(out.strip().splitlines()) == 3

    rows = gateway.ledger(wait_for=4)  # upload, submit, poll, output file
    ends = {r["endpoint"]: r for r in rows}
    assert ends["batch.submit"]["outcome"] == "ok" and D(ends["batch.submit"]["cost_usd"]) == 0
    res = ends["batch.results"]
    assert (res["provider"], res["model"], res["outcome"], res["input_tokens"], res["output_tokens"]) == \
        ("openai", "gpt-4o-mini", "ok", 2000, 600)
    assert D(res["cost_usd"]) == 2 * GPT_LINE == Decimal("0.00033")
    assert ends["unmetered"]["outcome"] == "unmetered"  # the upload and the poll: not model calls


def test_gemini_batch_results_file(gateway):
    http = gateway.http_client()
    hdr = {"x-goog-api-key": "AIza-batch-SECRET"}
    base = "https://generativelanguage.googleapis.com"
    r = http.post(f"{base}/v1beta/models/gemini-2.5-flash:batchGenerateContent", headers=hdr,
                  json={"batch": {"display_name": "b", "input_config": {"file_name": "files/in-1"}}})
    assert r.status_code == 200, r.text
    name = r.json()["name"]
    op = http.get(f"{base}/v1beta/{name}", headers=hdr).json()
    out = op["metadata"]["output"]["responsesFile"]
    r = http.get(f"{base}/download/v1beta/{out}:download?alt=media", headers=hdr)
    assert r.status_code == 200 and len(r.text.strip().splitlines()) == 3
    rows = gateway.ledger(wait_for=3)
    poll = next(x for x in rows if x["endpoint"] == "batch.results" and x["input_tokens"] == 0)
    assert D(poll["cost_usd"]) == 0  # the done operation of a file batch: its results are in the file
    res = next(x for x in rows if x["endpoint"] == "batch.results" and x["input_tokens"])
    assert (res["provider"], res["model"], res["input_tokens"], res["output_tokens"]) == \
        ("gemini", "gemini-2.5-flash", 2000, 600)
    assert D(res["cost_usd"]) == 2 * GEMINI_LINE == Decimal("0.00105")


def test_gemini_inline_batch_charged_once_from_the_done_operation(gateway):
    http = gateway.http_client()
    hdr = {"x-goog-api-key": "AIza-batch-SECRET"}
    base = "https://generativelanguage.googleapis.com"
    reqs = [{"request": {"contents": [{"parts": [{"text": "hi"}], "role": "user"}]}, "metadata": {"key": k}}
            for k in ("a", "b", "c")]
    r = http.post(f"{base}/v1beta/models/gemini-2.5-flash:batchGenerateContent", headers=hdr,
                  json={"batch": {"display_name": "inline", "input_config": {"requests": {"requests": reqs}}}})
    name = r.json()["name"]
    for _ in range(2):  # polled twice after it is done: charged once
        op = http.get(f"{base}/v1beta/{name}", headers=hdr).json()
        assert len(op["response"]["inlinedResponses"]["inlinedResponses"]) == 3
    rows = gateway.ledger(wait_for=3)
    polls = sorted((x for x in rows if x["endpoint"] == "batch.results"), key=lambda x: -float(x["cost_usd"]))
    assert len(polls) == 2
    assert (polls[0]["model"], polls[0]["input_tokens"], polls[0]["output_tokens"]) == ("gemini-2.5-flash", 3000, 900)
    assert D(polls[0]["cost_usd"]) == 3 * GEMINI_LINE
    assert D(polls[1]["cost_usd"]) == 0 and polls[1]["note"] == "batch results fetched again: already charged"


def test_a_batch_over_the_budget_is_refused_at_submission_and_results_are_never_refused(tmp_path, gateway_factory,
                                                                                         fake_provider):
    pol = tmp_path / "p.yaml"
    pol.write_text(f"version: 1\ndefaults: {{user: {{day: {HAIKU_LINE}}}}}\n")  # one result line's worth
    gw = gateway_factory(policy=pol).start()
    client = anthropic.Anthropic(api_key="sk-ant-batch-SECRET", http_client=gw.http_client(), max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.batches.create(requests=[ask(f"q{i}", "claude-sonnet-4-5") for i in range(50)])
    assert "spend limit" in str(e.value)
    assert fake_provider.requests_to(route="/v1/messages/batches") == []
    # a batch submitted earlier (straight to the provider) still has its results fetched at the cap
    fake_provider.batches["msgbatch_old"] = {"requests": [ask("a", "claude-haiku-4-5")]}
    got = list(client.messages.batches.results("msgbatch_old"))
    assert [x.result.type for x in got] == ["succeeded"]
    rows = gw.ledger(wait_for=3)
    (res,) = [r for r in rows if r["endpoint"] == "batch.results"]
    assert D(res["cost_usd"]) == HAIKU_LINE and D(res["charged_usd"]) == HAIKU_LINE
    # exactly at the cap now (the results were charged): even a submission estimated at $0 is refused
    # (admission.MIN_RESERVE; found by the attacker review)
    oai = openai.OpenAI(api_key="sk-batch-SECRET", http_client=gw.http_client(), max_retries=0)
    with pytest.raises(openai.RateLimitError):
        oai.batches.create(input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h")
    assert fake_provider.requests_to(route="/v1/batches") == []


def test_an_openai_batch_names_no_model_and_is_not_refused_as_unpriced(tmp_path, gateway_factory):
    pol = tmp_path / "block.yaml"
    pol.write_text("version: 1\nunpriced: block\n")
    gw = gateway_factory(policy=pol).start()
    client = openai.OpenAI(api_key="sk-batch-SECRET", http_client=gw.http_client(), max_retries=0)
    batch = client.batches.create(input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "validating"
    (row,) = gw.ledger(wait_for=1)
    assert (row["endpoint"], row["outcome"], D(row["charged_usd"])) == ("batch.submit", "ok", 0)
