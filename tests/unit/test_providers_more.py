"""Vertex (Anthropic and Gemini), Gemini Code Assist, Azure OpenAI, Copilot (list price + premium
requests), OpenRouter's reported cost, OpenAI embeddings and legacy completions.

Fixtures are ours (tests/fixtures/provider), in the shapes of the real recordings. Costs are
written out from published prices (USD per MTok), not computed from the catalogue under test.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from test_providers_common import assert_split_invariant, fixture_bytes

from spendgate.gateway import Gateway, Settings
from spendgate.metering.providers import route
from spendgate.metering.providers.base import ResponseResult
from spendgate.pricing import copilot
from spendgate.pricing.rates import Pricer
from spendgate.pricing.reprice import request_row
from spendgate.reports.queries import ledger as ledger_rows
from spendgate.resources import pricing_dir
from spendgate.usage import Usage

AT = datetime(2026, 11, 30, 12, tzinfo=UTC)
M = Decimal(1_000_000)
TEXT = "Hello! I'm a fake provider answering deterministically."
GEMINI_USAGE = Usage(input_tokens=3000, cache_read_tokens=1000, output_tokens=800, reasoning_tokens=200)
CHAT_USAGE = Usage(input_tokens=1600, cache_read_tokens=400, output_tokens=450)
VERTEX = "https://us-central1-aiplatform.googleapis.com"


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer(catalogue_dir=pricing_dir())


def _route(host: str, path: str):
    r = route(host, path)
    assert r is not None and r.adapter is not None, (host, path)
    return r


# -- Vertex ------------------------------------------------------------------------------------------


def test_vertex_anthropic_request_takes_the_model_from_the_path() -> None:
    path = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
    r = _route("us-east5-aiplatform.googleapis.com", path)
    body = json.dumps({"anthropic_version": "vertex-2023-10-16", "max_tokens": 900, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    info = r.adapter.parse_request(path, body)
    assert (info.model, info.stream, info.max_output_tokens) == ("claude-sonnet-4-5@20250929", True, 900)
    assert r.adapter.dialect == "anthropic"
    stream = assert_split_invariant(lambda: r.adapter.stream_parser(path), fixture_bytes("anthropic_stream.sse"), 7)
    assert stream.usage_final and stream.usage is not None


def test_vertex_count_tokens_is_free() -> None:
    path = "/v1/projects/p/locations/us-east5/publishers/anthropic/models/count-tokens:rawPredict"
    r = _route("us-east5-aiplatform.googleapis.com", path)
    assert r.adapter.parse_request(path, b'{"messages": []}').free


def test_vertex_anthropic_version_suffix_is_priced(pricer: Pricer) -> None:
    u = Usage(input_tokens=1800, cache_read_tokens=300, cache_write_tokens=300, cache_write_1h_tokens=100,
              output_tokens=450)
    want = (1200 * Decimal(3) + 300 * Decimal("0.3") + 200 * Decimal("3.75") + 100 * Decimal(6)
            + 450 * Decimal(15)) / M
    assert pricer.price("vertex", "claude-sonnet-4-5@20250929", u, AT).cost == want == Decimal("0.01179")


def test_vertex_gemini_stream_counts_only_the_last_chunk(pricer: Pricer) -> None:
    path = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    r = _route("us-central1-aiplatform.googleapis.com", path)
    info = r.adapter.parse_request(path, b'{"contents": [], "generationConfig": {"maxOutputTokens": 256}}')
    assert (info.model, info.stream, info.max_output_tokens) == ("gemini-2.5-flash", True, 256)
    res = assert_split_invariant(lambda: r.adapter.stream_parser(path), fixture_bytes("vertex_gemini_stream.sse"))
    assert res.usage == GEMINI_USAGE and res.usage_final and res.output_chars == len(TEXT)
    # gemini-2.5-flash: $0.30 in, $0.03 cache read, $2.50 out (thinking included)
    want = (2000 * Decimal("0.3") + 1000 * Decimal("0.03") + 800 * Decimal("2.5")) / M
    assert pricer.price("vertex", res.model, res.usage, AT).cost == want


def test_vertex_gemini_json_array_stream() -> None:
    path = "/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash:streamGenerateContent"
    r = _route("aiplatform.googleapis.com", path)
    chunks = [json.loads(line[6:]) for line in fixture_bytes("vertex_gemini_stream.sse").decode().splitlines()
              if line.startswith("data: ")]
    body = ("[" + ",\r\n".join(json.dumps(c) for c in chunks) + "]").encode()
    res = assert_split_invariant(lambda: r.adapter.stream_parser(path), body, 11)
    assert res.usage == GEMINI_USAGE and res.complete


def test_code_assist_unwraps_response_and_reads_the_model_from_the_body() -> None:
    path = "/v1internal:streamGenerateContent?alt=sse"
    r = _route("cloudcode-pa.googleapis.com", path)
    assert r.provider == "code-assist" and r.adapter.dialect == "gemini"
    body = json.dumps({"model": "gemini-2.5-pro", "project": "p-123", "user_prompt_id": "u1",
                       "request": {"contents": [], "generationConfig": {"maxOutputTokens": 2048}}}).encode()
    info = r.adapter.parse_request(path, body)
    assert (info.model, info.stream, info.max_output_tokens) == ("gemini-2.5-pro", True, 2048)
    res = assert_split_invariant(lambda: r.adapter.stream_parser(path), fixture_bytes("code_assist_stream.sse"))
    assert res.usage == GEMINI_USAGE and res.usage_final and res.model == "gemini-2.5-pro"


# -- Azure -------------------------------------------------------------------------------------------


def test_azure_stream_with_filter_chunks_and_the_real_model(pricer: Pricer) -> None:
    path = "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
    r = _route("contoso.openai.azure.com", path)
    assert r.extra == {"deployment": "prod-4o"}
    res = assert_split_invariant(lambda: r.adapter.stream_parser(path), fixture_bytes("azure_chat_stream.sse"))
    assert res.model == "gpt-4o-2024-11-20" and res.usage == CHAT_USAGE and not res.garbled and res.error is None
    # Azure gpt-4o: $2.50 in, $1.25 cached, $10 out
    assert pricer.price("azure", res.model, res.usage, AT).cost == Decimal("0.008")


def test_azure_deployment_is_only_a_fallback_model(tmp_path) -> None:
    gw = _gateway(tmp_path)
    try:
        ex = gw.meter.begin("contoso.openai.azure.com", "/openai/deployments/prod-4o/chat/completions?api-version=x",
                            {"api-key": "azure-unit-secret"}, b'{"messages": []}')
        assert ex.request.model == "prod-4o"  # budgets estimate with it until the response names the model
        assert gw.admission.admit(ex) is None
        ex.status = 200
        gw.meter.finish(ex, ex.route.adapter.parse_response(json.dumps({
            "model": "gpt-4o-2024-11-20", "choices": [], "usage": {"prompt_tokens": 1600, "completion_tokens": 450,
                                                                   "prompt_tokens_details": {"cached_tokens": 400}}}).encode()))
        gw.meter.flush()
        (row,) = ledger_rows(gw.ledger.cursor())
        assert row["model"] == "gpt-4o-2024-11-20" and Decimal(str(row["cost_usd"])) == Decimal("0.008")
    finally:
        gw.close()


# -- OpenRouter's reported cost, embeddings, legacy completions -------------------------------------------


def test_openrouter_usage_cost_is_read() -> None:
    r = _route("openrouter.ai", "/api/v1/chat/completions")
    res = r.adapter.parse_response(fixture_bytes("openrouter_chat.json"))
    assert res.usage == CHAT_USAGE and res.reported_cost_usd == "0.0123456"
    bad = json.loads(fixture_bytes("openrouter_chat.json"))
    for cost in (-1, "NaN", "Infinity", True, None, {"x": 1}):
        bad["usage"]["cost"] = cost
        assert r.adapter.parse_response(json.dumps(bad).encode()).reported_cost_usd is None, cost


def test_openrouter_byok_cost_adds_what_the_upstream_provider_bills_the_key() -> None:
    """BYOK: `cost` is OpenRouter's fee; the upstream bills the customer's key the rest."""
    r = _route("openrouter.ai", "/api/v1/chat/completions")
    doc = json.loads(fixture_bytes("openrouter_chat.json"))
    doc["usage"].update(cost=0.0005, is_byok=True, cost_details={"upstream_inference_cost": 0.0123})
    assert r.adapter.parse_response(json.dumps(doc).encode()).reported_cost_usd == "0.0128"
    # BYOK without the upstream figure: no provider-reported cost (priced at list price instead)
    for details in (None, {}, {"upstream_inference_cost": None}, {"upstream_inference_cost": -1}, "x"):
        doc["usage"]["cost_details"] = details
        assert r.adapter.parse_response(json.dumps(doc).encode()).reported_cost_usd is None, details
    # not BYOK: the fee is the whole bill, whatever cost_details says
    doc["usage"].update(is_byok=False, cost_details={"upstream_inference_cost": 0.0123})
    assert r.adapter.parse_response(json.dumps(doc).encode()).reported_cost_usd == "0.0005"
    # and in a stream's last chunk the same
    chunk = {"id": "x", "object": "chat.completion.chunk", "model": "m", "choices": [],
             "usage": {**doc["usage"], "is_byok": True}}
    parser = r.adapter.stream_parser("/api/v1/chat/completions")
    parser.feed(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
    assert parser.result().reported_cost_usd == "0.0128"


def test_embeddings_input_only(pricer: Pricer) -> None:
    r = _route("api.openai.com", "/v1/embeddings")
    info = r.adapter.parse_request("/v1/embeddings", b'{"model": "text-embedding-3-small", "input": ["a", "b"]}')
    assert info.model == "text-embedding-3-small" and not info.stream
    res = r.adapter.parse_response(fixture_bytes("openai_embeddings.json"))
    assert res.usage == Usage(input_tokens=4321) and res.usage_final
    # text-embedding-3-small: $0.02 per MTok input, no output rate (and none needed)
    assert pricer.price("openai", res.model, res.usage, AT).cost == 4321 * Decimal("0.02") / M


def test_legacy_completions_stream(pricer: Pricer) -> None:
    r = _route("api.openai.com", "/v1/completions")
    info = r.adapter.parse_request("/v1/completions", b'{"model": "gpt-3.5-turbo-instruct", "prompt": "x", "stream": true}')
    assert info.stream and info.drop_usage_chunk and b"include_usage" in info.rewritten_body
    res = assert_split_invariant(lambda: r.adapter.stream_parser(""), fixture_bytes("openai_completions_stream.sse"))
    assert res.usage == Usage(input_tokens=1000, output_tokens=200) and res.output_chars == len(TEXT)
    # gpt-3.5-turbo-instruct: $1.50 in, $2 out
    assert pricer.price("openai", res.model, res.usage, AT).cost == (1000 * Decimal("1.5") + 200 * 2) / M


@pytest.mark.parametrize(("provider", "model", "per_mtok_in"), [
    ("deepseek", "deepseek-chat", "0.27"), ("groq", "llama-3.3-70b-versatile", "0.59"),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "0.88"), ("xai", "grok-4", "3"),
    ("mistral", "mistral-large-latest", "2"), ("fireworks", "accounts/fireworks/models/llama-v3p1-8b-instruct", "0.2"),
    ("openrouter", "anthropic/claude-sonnet-4.5", "3"),
])
def test_compatible_providers_have_catalogue_prices(pricer, provider, model, per_mtok_in) -> None:
    got = pricer.price(provider, model, Usage(input_tokens=100_000), AT)  # below every tier
    assert got.cost == Decimal(per_mtok_in) / 10, (provider, model, got)


# -- Copilot ------------------------------------------------------------------------------------------


def _gateway(tmp_path: Path, policy: str = "defaults: {user: {day: 10}}\n") -> Gateway:
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\n" + policy)
    return Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=-1, reload_interval=0))


def _copilot_row(gw: Gateway, model: str, initiator: str) -> dict:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    ex = gw.meter.begin("api.githubcopilot.com", "/chat/completions",
                        {"authorization": "Bearer tid=copilot-unit-secret", "x-initiator": initiator,
                         "copilot-integration-id": "vscode-chat"}, body)
    assert gw.admission.admit(ex) is None
    ex.status = 200
    result = ex.route.adapter.parse_response(json.dumps({
        "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 1600, "completion_tokens": 450, "prompt_tokens_details": {"cached_tokens": 400}},
    }).encode())
    gw.meter.finish(ex, result)
    gw.meter.flush()
    row = next(r for r in ledger_rows(gw.ledger.cursor()) if r["request_id"] == ex.request_id)
    # the detail `spendgate explain` shows: recomputed from the row's rate card and usage
    row["price_detail"] = request_row(gw.ledger.cursor(), ex.request_id)["price_detail"]
    return row


def test_copilot_list_price_and_premium_requests_side_by_side(tmp_path) -> None:
    gw = _gateway(tmp_path)
    try:
        row = _copilot_row(gw, "claude-sonnet-4.5", "user")
        assert (row["provider"], row["client"]) == ("copilot", "copilot")
        # list-price equivalent, Anthropic claude-sonnet-4-5: 1200 x $3 + 400 x $0.30 + 450 x $15 per MTok;
        # a Copilot seat is a subscription (issue 20): nothing invoiced per token, the list price is notional
        assert row["billing_basis"] == "subscription" and Decimal(str(row["cost_usd"])) == 0
        assert Decimal(str(row["notional_usd"])) == Decimal("0.01047")
        premium = json.loads(row["price_detail"])["alternatives"]["copilot_premium"]
        assert (premium["multiplier"], premium["premium_requests"], premium["overage_usd"]) == ("1", "1", "0.04")
        agent = _copilot_row(gw, "claude-opus-4.5", "agent")
        premium = json.loads(agent["price_detail"])["alternatives"]["copilot_premium"]
        assert (premium["multiplier"], premium["premium_requests"]) == ("3", "0") and "agent" in premium["note"]
        opus = json.loads(_copilot_row(gw, "claude-opus-4.5", "user")["price_detail"])["alternatives"]
        assert opus["copilot_premium"]["overage_usd"] == "0.12"
    finally:
        gw.close()


def test_copilot_explain_lines() -> None:
    from spendgate.cli.prices import alternative_lines

    view = copilot.load(pricing_dir()).view("gpt-5-mini", "user")
    assert view["premium_requests"] == "0"
    lines = alternative_lines({"copilot_premium": view})
    assert "Copilot premium requests 0 (multiplier 0" in lines[0] and "docs.github.com" in lines[-1]
    unknown = alternative_lines({"copilot_premium": copilot.load(pricing_dir()).view("claude-imaginary-9", None)})
    assert "no Copilot multiplier known" in unknown[0]


def test_premium_table_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="multipliers"):
        copilot.parse("version: 1\n", "x.yaml")
    with pytest.raises(ValueError, match="not a number"):
        copilot.parse("multipliers: {gpt-5: lots}\n", "x.yaml")


# -- refusals answer in the API's own dialect ---------------------------------------------------------------


@pytest.mark.parametrize(("host", "path", "body", "check"), [
    ("us-east5-aiplatform.googleapis.com",
     "/v1/projects/p/locations/l/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
     {"max_tokens": 100, "messages": []}, lambda d: d["error"]["type"] == "billing_error"),
    ("aiplatform.googleapis.com", "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:generateContent",
     {"contents": []}, lambda d: d["error"]["status"] == "RESOURCE_EXHAUSTED"),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/model/global.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse",
     {"messages": []}, lambda d: set(d) == {"message"} and "spend limit" in d["message"]),
    ("openrouter.ai", "/api/v1/chat/completions", {"model": "anthropic/claude-sonnet-4.5", "messages": []},
     lambda d: d["error"]["type"] == "insufficient_quota"),
])
def test_refusal_dialect(tmp_path, host, path, body, check) -> None:
    gw = _gateway(tmp_path, "defaults: {user: {day: 0.000001}}\n")
    try:
        ex = gw.meter.begin(host, path, {"authorization": "Bearer unit"}, json.dumps(body).encode())
        answer = gw.admission.admit(ex)
        assert answer is not None and answer.status == 429
        assert check(json.loads(answer.body)), answer.body
    finally:
        gw.meter.finish(ex, ResponseResult())
        gw.close()


def test_gemini_embeddings_input_only(pricer: Pricer) -> None:
    """`:embedContent` / `:batchEmbedContents`: the model from the path, no output, usage when the
    answer carries `usageMetadata` (else the meter estimates the row)."""
    for method in ("embedContent", "batchEmbedContents", "EMBEDCONTENT"):
        path = f"/v1beta/models/gemini-embedding-001:{method}"
        r = _route("generativelanguage.googleapis.com", path)
        assert r.adapter is not None and r.adapter.provider == "gemini" and not r.adapter.output, method
        info = r.adapter.parse_request(path, b'{"content": {"parts": [{"text": "def f(): pass"}]}}')
        assert info.model == "gemini-embedding-001" and not info.stream and not info.malformed
    bare = r.adapter.parse_response(b'{"embedding": {"values": [0.1, -0.2]}}')
    assert bare.complete and bare.usage is None and not bare.garbled  # the meter estimates it
    batch = r.adapter.parse_response(b'{"embeddings": [{"values": [0.1]}, {"values": [0.2]}]}')
    assert batch.complete and batch.usage is None
    counted = r.adapter.parse_response(b'{"embedding": {"values": [0.1]}, "usageMetadata": {"promptTokenCount": 812}}')
    assert counted.usage == Usage(input_tokens=812) and counted.usage_final
    assert pricer.price("gemini", "gemini-embedding-001", counted.usage, AT).cost == 812 * Decimal("0.15") / M
    error = r.adapter.parse_response(b'{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}')
    assert error.usage is None and not error.complete and error.error
    assert r.adapter.parse_response(b"[1, 2]").garbled and r.adapter.parse_response(b"\xff{").garbled


def test_an_embedding_reserves_its_input_only(tmp_path):
    """Embeddings bill no output: reserving the policy's typical output would price them at the
    unpriced fallback (no output rate) and refuse them at a small cap."""
    from spendgate.gateway import Gateway, Settings

    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\n")
    gw = Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=-1, reload_interval=0))
    try:
        for host, path, body, per_mtok in (
            ("api.openai.com", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x" * 3996}, "0.02"),
            ("generativelanguage.googleapis.com", "/v1beta/models/gemini-embedding-001:embedContent",
             {"content": {"parts": [{"text": "x" * 3960}]}}, "0.15"),
        ):
            raw = json.dumps(body).encode()
            ex = gw.meter.begin(host, path, {"authorization": "Bearer unit-key"}, raw)
            gw.meter.finish(ex, None)
            assert gw.admission.estimate(ex, AT) == -(-len(raw) // 4) * Decimal(per_mtok) / M, path
    finally:
        gw.close()
