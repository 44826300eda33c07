"""More providers end to end: client -> real mitmdump + spendgate -> fake provider, per service.

Bedrock (binary event-stream frames split across HTTP chunks), Vertex Anthropic, Azure OpenAI
(official openai SDK, ``AzureOpenAI``) and OpenRouter (provider-reported ``usage.cost``).

Prices used (USD per MTok), all in the pinned catalogue (genai-prices data):
* Bedrock ``global.anthropic.claude-sonnet-4-5-20250929-v1:0``: in $3, out $15, cache read $0.30,
  cache write $3.75 (aws table; regional profiles list 10% higher).
* Vertex ``claude-sonnet-4-5``: in $3, out $15, cache read $0.30, 5m write $3.75, 1h write $6.
* Azure ``gpt-4o`` (response model ``gpt-4o-2024-11-20``): in $2.50, cached $1.25, out $10.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from spendgate.identity import fingerprint
from spendgate.metering.providers.eventstream import EventStreamDecoder
from tests.support.fake_provider import AZURE_MODEL, OPENROUTER_COST, TEXT_PIECES

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

M = Decimal(1_000_000)
TEXT = "".join(TEXT_PIECES)
AWS_KEY_ID = "AKIAFAKEPROVIDER0001"
SIGV4 = (f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/20261130/us-east-1/bedrock/aws4_request, "
         "SignedHeaders=content-type;host;x-amz-date, Signature=" + "ab" * 32)
BEDROCK_MODEL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
BEDROCK_URL = "https://bedrock-runtime.us-east-1.amazonaws.com/model/{model}/{op}"
BEDROCK_USAGE = {"input_tokens": 1700, "cache_read_tokens": 300, "cache_write_tokens": 200,
                 "cache_write_1h_tokens": 0, "output_tokens": 450}
BEDROCK_COST = (1200 * Decimal(3) + 300 * Decimal("0.3") + 200 * Decimal("3.75") + 450 * Decimal(15)) / M
VERTEX_COST = (1200 * Decimal(3) + 300 * Decimal("0.3") + 200 * Decimal("3.75") + 100 * Decimal(6)
               + 450 * Decimal(15)) / M  # the fake's Anthropic usage, 1h writes at $6
AZURE_COST = (1200 * Decimal("2.5") + 400 * Decimal("1.25") + 450 * Decimal(10)) / M
VERTEX_TOKEN = "ya29.fake-vertex-SECRET-token"
AZURE_KEY = "azure-fake-SECRET-key-0001"
OPENROUTER_KEY = "sk-or-v1-fake-SECRET"


def D(v) -> Decimal:
    return Decimal(str(v))


def no_secret_on_disk(gw, *secrets: str) -> None:
    blob = Path(gw.db).read_bytes() + gw.log_text().encode()
    for s in secrets:
        assert s.encode() not in blob, f"{s!r} reached the ledger or the log"


def test_bedrock_converse_stream_and_invoke_stream(gateway, http_client):
    client = http_client()
    model = BEDROCK_MODEL.replace(":", "%3A")
    headers = {"authorization": SIGV4, "content-type": "application/json", "x-amz-date": "20261130T120000Z"}
    body = {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 500}}
    with client.stream("POST", BEDROCK_URL.format(model=model, op="converse-stream"), json=body,
                       headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/vnd.amazon.eventstream"
        raw = b"".join(resp.iter_raw())
    frames = EventStreamDecoder().feed(raw)  # the client gets the frames untouched
    assert [f.event_type for f in frames][-1] == "metadata" and len(frames) == 4 + len(TEXT_PIECES)
    assert "".join(json.loads(f.payload)["delta"]["text"] for f in frames if f.event_type == "contentBlockDelta") == TEXT

    invoke = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 500,
              "messages": [{"role": "user", "content": "hi"}]}
    with client.stream("POST", BEDROCK_URL.format(model=model, op="invoke-with-response-stream"), json=invoke,
                       headers=headers) as resp:
        assert resp.status_code == 200
        b"".join(resp.iter_raw())

    rows = sorted(gateway.ledger(wait_for=2), key=lambda r: r["endpoint"])
    assert [r["endpoint"] for r in rows] == ["converse-stream", "invoke-with-response-stream"]
    for row in rows:
        assert (row["provider"], row["model"], row["outcome"], row["stream"]) == ("bedrock", BEDROCK_MODEL, "ok", True)
        assert {k: row[k] for k in BEDROCK_USAGE} == BEDROCK_USAGE, row
        assert D(row["cost_usd"]) == BEDROCK_COST == Decimal("0.01119")
        assert row["key_fingerprint"] == fingerprint(AWS_KEY_ID)
    no_secret_on_disk(gateway, AWS_KEY_ID, "ab" * 32)


def test_bedrock_stream_cut_inside_a_frame_is_estimated(gateway, http_client):
    client = http_client()
    url = BEDROCK_URL.format(model=BEDROCK_MODEL.replace(":", "%3A"), op="converse-stream")
    with pytest.raises(Exception):
        with client.stream("POST", url, json={"messages": []}, headers={"authorization": SIGV4,
                                                                        "x-fake-scenario": "cut"}) as resp:
            b"".join(resp.iter_raw())
    (row,) = gateway.ledger(wait_for=1)
    assert row["provider"] == "bedrock" and row["estimated"] and row["outcome"] == "estimated"
    assert row["cost_usd"] is not None and D(row["cost_usd"]) > 0


def test_vertex_anthropic_stream_raw_predict(gateway, http_client):
    client = http_client()
    url = ("https://us-east5-aiplatform.googleapis.com/v1/projects/my-proj/locations/us-east5/publishers/anthropic/"
           "models/claude-sonnet-4-5@20250929:streamRawPredict")
    body = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 500, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    with client.stream("POST", url, json=body, headers={"authorization": f"Bearer {VERTEX_TOKEN}",
                                                        "user-agent": "claude-cli/2.1.197 (external, cli)"}) as resp:
        assert resp.status_code == 200
        text = b"".join(resp.iter_raw()).decode()
    assert "message_delta" in text
    (row,) = gateway.ledger(wait_for=1)
    assert (row["provider"], row["endpoint"], row["outcome"], row["client"]) == \
        ("vertex", "streamRawPredict", "ok", "claude-code")
    assert row["model"] == "claude-sonnet-4-5"  # as the response names it; the request said @20250929
    assert (row["input_tokens"], row["cache_write_1h_tokens"], row["output_tokens"]) == (1800, 100, 450)
    # us-east5 is a regional endpoint: 10% over the global one from Claude Sonnet 4.5 on (Claude on
    # Vertex AI, "Global vs regional endpoints"; pricing/overrides.yaml, vertex_endpoint)
    assert D(row["cost_usd"]) == VERTEX_COST * Decimal("1.1") == Decimal("0.012969")
    assert row["key_fingerprint"] == fingerprint(VERTEX_TOKEN)
    no_secret_on_disk(gateway, VERTEX_TOKEN)


def test_azure_chat_stream_with_the_openai_sdk(gateway):
    client = openai.AzureOpenAI(azure_endpoint="https://contoso.openai.azure.com", api_key=AZURE_KEY,
                                api_version="2024-10-21", http_client=gateway.http_client(), max_retries=0)
    stream = client.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    chunks = list(stream)
    got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert got == TEXT
    assert all(c.usage is None for c in chunks)  # the usage chunk we asked for is not shown to the client
    (row,) = gateway.ledger(wait_for=1)
    assert (row["provider"], row["endpoint"], row["model"], row["outcome"]) == \
        ("azure", "chat.completions", AZURE_MODEL, "ok")
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (1600, 400, 450)
    assert D(row["cost_usd"]) == AZURE_COST == Decimal("0.008")
    assert row["key_fingerprint"] == fingerprint(AZURE_KEY)
    no_secret_on_disk(gateway, AZURE_KEY)


def test_openrouter_reported_cost_wins_and_explain_shows_both(gateway):
    client = openai.OpenAI(base_url="https://openrouter.ai/api/v1", api_key=OPENROUTER_KEY,
                           http_client=gateway.http_client(), max_retries=0)
    reply = client.chat.completions.create(model="anthropic/claude-sonnet-4.5",
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == TEXT
    stream = client.chat.completions.create(model="anthropic/claude-sonnet-4.5", stream=True,
                                            messages=[{"role": "user", "content": "hi"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == TEXT
    rows = gateway.ledger(wait_for=2)
    assert len(rows) == 2
    for row in rows:
        assert (row["provider"], row["model"], row["outcome"]) == ("openrouter", "anthropic/claude-sonnet-4.5", "ok")
        assert D(row["cost_usd"]) == D(OPENROUTER_COST)
        assert row["price_source"] == "provider-reported (openrouter usage.cost)"
    text = gateway.cli("explain", rows[0]["request_id"], check=True).stdout
    assert "provider-reported cost" in text and "$0.012346" in text
    # list price of the same usage: 1200 uncached x $3 + 400 cached x $0.30 + 450 x $15 per MTok
    assert "side by side: list-price equivalent $0.010470" in text
    no_secret_on_disk(gateway, OPENROUTER_KEY)


def test_site_added_host_is_metered_and_priced_as_its_catalogue_provider(gateway_factory):
    gw = gateway_factory("gw", extra_args=[
        "--set", "spendgate_extra_providers=llm.corp.example=corp-vllm:openai:openai"]).start()
    client = openai.OpenAI(base_url="https://llm.corp.example/v1", api_key="corp-SECRET-key",
                           http_client=gw.http_client(), max_retries=0)
    reply = client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == TEXT
    (row,) = gw.ledger(wait_for=1)
    assert (row["provider"], row["endpoint"], row["model"], row["outcome"]) == \
        ("corp-vllm", "chat.completions", "gpt-5", "ok")
    # gpt-5 list price: 1200 uncached x $1.25 + 400 cached x $0.125 + 450 x $10 per MTok
    assert D(row["cost_usd"]) == Decimal("0.00605")
    no_secret_on_disk(gw, "corp-SECRET-key")


def test_a_bad_extra_provider_spec_stops_start_up(gateway_factory):
    gw = gateway_factory("bad", extra_args=["--set", "spendgate_extra_providers=*=x:openai"])
    try:
        gw.start()  # mitmdump may open its port before it reads the error and exits
    except Exception:
        pass
    assert gw.proc.wait(timeout=60) != 0
    assert "spendgate_extra_providers: '*=x:openai': '*' would send too many hosts" in gw.log_text()


def test_copilot_list_price_and_premium_requests_in_explain(gateway):
    client = openai.OpenAI(base_url="https://api.business.githubcopilot.com", api_key="tid=copilot-SECRET",
                           http_client=gateway.http_client(), max_retries=0,
                           default_headers={"copilot-integration-id": "vscode-chat", "x-initiator": "user"})
    client.chat.completions.create(model="claude-sonnet-4.5", messages=[{"role": "user", "content": "hi"}])
    (row,) = gateway.ledger(wait_for=1)
    assert (row["provider"], row["client"], row["model"], row["outcome"]) == \
        ("copilot", "copilot", "claude-sonnet-4.5", "ok")
    # list-price equivalent (Anthropic claude-sonnet-4-5): 1200 x $3 + 400 x $0.30 + 450 x $15 per MTok; a Copilot
    # seat is a subscription (issue 20): invoiced $0 per token, the list price kept as notional_usd
    assert (row["billing_basis"], D(row["cost_usd"])) == ("subscription", 0)
    assert D(row["notional_usd"]) == Decimal("0.01047")
    text = gateway.cli("explain", row["request_id"], check=True).stdout
    assert "total" in text and "$0.010470" in text
    assert "side by side: Copilot premium requests 1 (multiplier 1" in text and "$0.040000" in text
    no_secret_on_disk(gateway, "tid=copilot-SECRET")


@pytest.mark.parametrize(("base_url", "model", "provider", "cost"), [
    # OpenAI data residency: gpt-5 list price, 1200 uncached x $1.25 + 400 cached x $0.125 + 450 x $10
    ("https://eu.api.openai.com/v1", "gpt-5", "openai", Decimal("0.00605")),
    # Anthropic's OpenAI-compatible endpoint: 1200 x $3 + 400 cached x $0.30 + 450 x $15
    ("https://api.anthropic.com/v1", "claude-sonnet-4-5", "anthropic", Decimal("0.01047")),
    # Gemini's OpenAI-compatible endpoint: 1200 x $0.30 + 400 cached x $0.03 + 450 x $2.50
    ("https://generativelanguage.googleapis.com/v1beta/openai", "gemini-2.5-flash", "gemini", Decimal("0.001497")),
])
def test_openai_compatible_routes_of_other_providers_are_metered(gateway, base_url, model, provider, cost):
    """Routes that were tunnelled past the budget before (docs/security.md): the OpenAI SDK pointed
    at a data-residency host or at Anthropic's / Gemini's OpenAI-compatible endpoint."""
    client = openai.OpenAI(base_url=base_url, api_key="sk-fake-SECRET-compat", http_client=gateway.http_client(),
                           max_retries=0)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == TEXT
    (row,) = gateway.ledger(wait_for=1)
    assert (row["provider"], row["endpoint"], row["model"], row["outcome"]) == \
        (provider, "chat.completions", model, "ok")
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (1600, 400, 450)
    assert D(row["cost_usd"]) == cost
    no_secret_on_disk(gateway, "sk-fake-SECRET-compat")


def test_codestral_fill_in_the_middle_is_metered_and_budgeted(gateway_factory, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ntimezone: UTC\norganization: {name: acme}\ndefaults: {user: {day: 0.0015}}\n")
    gw = gateway_factory("gw", policy=policy).start()
    with gw.http_client() as http:
        def fim():
            return http.post("https://codestral.mistral.ai/v1/fim/completions", json={
                "model": "codestral-latest", "prompt": "def add(a, b):", "suffix": "    return c", "max_tokens": 64},
                headers={"authorization": "Bearer codestral-SECRET", "x-fake-usage": json.dumps({"cached_tokens": 0})})
        assert fim().status_code == 200
        gw.ledger(wait_for=1)
        assert fim().status_code == 200  # $0.000885 spent of $0.0015: the estimate still fits
        gw.ledger(wait_for=2)
        refused = fim()  # $0.00177 spent: at the cap
    assert refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
    rows = sorted(gw.ledger(wait_for=3), key=lambda r: r["ts"])
    assert [(r["provider"], r["model"], r["outcome"]) for r in rows] == [
        ("mistral", "codestral-latest", "ok"), ("mistral", "codestral-latest", "ok"),
        ("mistral", "codestral-latest", "blocked")]
    # codestral-latest: 1600 input x $0.30 + 450 output x $0.90 per MTok
    assert D(rows[0]["cost_usd"]) == Decimal("0.000885")


def test_gemini_embeddings_are_metered_estimated_and_budgeted(gateway_factory, tmp_path):
    """`:embedContent` / `:batchEmbedContents` (Roo Code's and Kilo Code's codebase indexing use
    them) were forwarded unmetered. They are priced per input token (gemini-embedding-001: $0.15
    per MTok); the Gemini API's answer reports no usage, so each row is estimated from the
    request's size, never $0, and the day's budget holds them at its cap."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ntimezone: UTC\norganization: {name: acme}\ndefaults: {user: {day: 0.001}}\n")
    gw = gateway_factory("gw", policy=policy).start()
    base = "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001"
    key = {"x-goog-api-key": "AIza-fake-embed-SECRET"}
    chunk = "def add(a, b):\n    return a + b\n" * 60  # a code chunk, as an indexer sends it
    one = json.dumps({"content": {"parts": [{"text": chunk}]}, "taskType": "RETRIEVAL_DOCUMENT"}).encode()
    batch = json.dumps({"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": chunk}]}}
                                     for _ in range(4)]}).encode()
    with gw.http_client() as http:
        r1 = http.post(f"{base}:embedContent", content=one, headers={**key, "content-type": "application/json"})
        assert r1.status_code == 200 and r1.json()["embedding"]["values"], r1.text
        r2 = http.post(f"{base}:batchEmbedContents", content=batch, headers={**key, "content-type": "application/json"})
        assert r2.status_code == 200 and len(r2.json()["embeddings"]) == 4
        gw.ledger(wait_for=2)
        for _ in range(6):  # ~$0.00032 a batch: the cap refuses the one that would pass it
            last = http.post(f"{base}:batchEmbedContents", content=batch,
                             headers={**key, "content-type": "application/json"})
            if last.status_code == 429:
                break
    assert last.status_code == 429 and last.headers["x-should-retry"] == "false"
    rows = sorted(gw.ledger(wait_for=3), key=lambda r: r["ts"])
    first, second = rows[0], rows[1]
    assert (first["provider"], first["endpoint"], first["model"], first["outcome"]) == \
        ("gemini", "embedContent", "gemini-embedding-001", "estimated")
    assert (second["endpoint"], second["outcome"]) == ("batchEmbedContents", "estimated")
    assert first["input_tokens"] == -(-len(one) // 4) and first["output_tokens"] == 0  # 4 bytes a token
    assert second["input_tokens"] == -(-len(batch) // 4)
    assert D(first["cost_usd"]) == first["input_tokens"] * Decimal("0.15") / M > 0
    assert D(second["cost_usd"]) == second["input_tokens"] * Decimal("0.15") / M
    assert rows[-1]["outcome"] == "blocked"
    assert sum(D(r["charged_usd"]) for r in rows) <= Decimal("0.001")  # estimated rows are charged their estimate
    no_secret_on_disk(gw, "AIza-fake-embed-SECRET")
