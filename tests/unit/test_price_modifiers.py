"""Price modifiers the provider reports (issue 14, part 3): Anthropic speed and inference_geo,
service tiers and batch, tokens of a kind with its own rate; explained, listed when unknown."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from spendgate.cli.prices import explain_lines
from spendgate.metering import providers
from spendgate.metering.meter import serving_modifiers
from spendgate.pricing import reprice
from spendgate.pricing.rates import Pricer, parse_overrides
from spendgate.store.ledger import LedgerRow, migrate, write_rows
from spendgate.usage import Usage

REPO = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 30, 12, tzinfo=UTC)
PRICER = Pricer(REPO / "pricing" / "overrides.yaml")


def anthropic_body(**usage) -> bytes:
    return json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-opus-5",
                       "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                       "usage": {"input_tokens": 20000, "output_tokens": 3000, **usage}}).encode()


def price_response(provider: str, path: str, body: bytes, at: datetime = AT):
    result = providers.route({"anthropic": "api.anthropic.com", "openai": "api.openai.com",
                              "gemini": "generativelanguage.googleapis.com"}[provider], path).adapter.parse_response(body)
    return result, PRICER.price(provider, result.model, result.usage, at, modifiers=serving_modifiers(result))


def test_the_field_report_claude_opus_5_fast_mode_takes_fast_rates():
    _, standard = price_response("anthropic", "/v1/messages", anthropic_body(service_tier="standard"))
    result, fast = price_response("anthropic", "/v1/messages", anthropic_body(speed="fast", service_tier="standard"))
    assert result.modifiers == {"speed": "fast"}
    assert standard.cost == Decimal("0.175")
    assert fast.cost == Decimal("0.35")  # 20,000 x $10/MTok + 3,000 x $50/MTok (catalogue fast variant)
    assert fast.variant == "fast" and "(fast)" in fast.source
    assert fast.modifiers == ({"name": "speed", "value": "fast", "effect": "fast rates",
                               "source": f"{PRICER.catalogue.version} (fast)"},)


def test_fast_mode_in_a_stream_is_read_from_message_delta_or_message_start():
    events = [
        {"type": "message_start", "message": {"model": "claude-opus-5", "usage": {"input_tokens": 20000, "output_tokens": 1,
                                                                                "speed": "fast"}}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3000}},
        {"type": "message_stop"},
    ]
    parser = providers.route("api.anthropic.com", "/v1/messages").adapter.stream_parser("/v1/messages")
    parser.feed(b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events))
    r = parser.result()
    assert r.modifiers == {"speed": "fast"}
    assert PRICER.price("anthropic", r.model, r.usage, AT, modifiers=serving_modifiers(r)).cost == Decimal("0.35")


@pytest.mark.parametrize("usage,cost", [
    ({"inference_geo": "global"}, "0.175"),
    ({"inference_geo": "us"}, "0.1925"),  # data residency: x1.1 (dated override with its source)
    ({"inference_geo": "us", "speed": "fast"}, "0.385"),
    ({"inference_geo": "not_available"}, "0.175"),
])
def test_inference_geo_multiplier(usage, cost):
    result, price = price_response("anthropic", "/v1/messages", anthropic_body(**usage))
    assert price.cost == Decimal(cost)
    if usage.get("inference_geo") == "us":
        geo = next(m for m in price.modifiers if m["name"] == "inference_geo")
        assert geo["effect"] == "x1.1 on token rates" and "data-residency" in geo["source"]
        assert geo["source"].startswith("override:overrides.yaml@2026-02-05")
        assert all("x1.1" in ln.label for ln in price.lines)


def test_an_unknown_modifier_value_is_said_not_silently_ignored():
    _, price = price_response("anthropic", "/v1/messages", anthropic_body(inference_geo="eu"))
    assert price.cost == Decimal("0.175")
    assert any("inference_geo eu" in n for n in price.notes)
    assert {"name": "inference_geo", "value": "eu", "effect": "none known", "source": ""} in price.modifiers


def test_batch_discount_from_the_reported_service_tier():
    _, price = price_response("anthropic", "/v1/messages", anthropic_body(service_tier="batch"))
    assert price.cost == Decimal("0.0875") and price.variant == "batch"


def test_openai_service_tier_still_picks_its_variant():
    body = json.dumps({"object": "response", "model": "gpt-5", "service_tier": "priority", "output": [],
                       "usage": {"input_tokens": 1_000_000, "output_tokens": 0}}).encode()
    result, price = price_response("openai", "/v1/responses", body)
    assert price.variant == "priority" and price.cost == Decimal("2.5")


def gemini_body(model: str, meta: dict) -> bytes:
    return json.dumps({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}],
                       "usageMetadata": meta, "modelVersion": model}).encode()


def test_gemini_output_image_tokens_take_the_image_rate():
    meta = {"promptTokenCount": 1300, "candidatesTokenCount": 1290,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1300}],
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}]}
    result, price = price_response("gemini", "/v1beta/models/gemini-2.5-flash-image:generateContent",
                                   gemini_body("gemini-2.5-flash-image", meta))
    assert result.usage.output_image_tokens == 1290
    # 1,300 x $0.30/MTok + 1,290 x $30/MTok (output_image_mtok), not 1,290 x $2.50 (text)
    assert price.cost == Decimal("0.00039") + Decimal("0.0387")
    assert [ln.rate_name for ln in price.lines] == ["input_mtok", "output_image_mtok"] and not price.fallbacks


def test_gemini_audio_input_and_cached_audio_take_their_rates():
    meta = {"promptTokenCount": 3000, "cachedContentTokenCount": 500, "candidatesTokenCount": 100,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 2000}, {"modality": "AUDIO", "tokenCount": 1000}],
            "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 300}, {"modality": "AUDIO", "tokenCount": 200}]}
    result, price = price_response("gemini", "/v1beta/models/gemini-2.5-flash:generateContent",
                                   gemini_body("gemini-2.5-flash", meta))
    by = {ln.rate_name: ln.quantity for ln in price.lines}
    # text uncached 2500 - 800 audio = 1700; audio uncached 800; cache text 300; cache audio 200
    assert by == {"input_mtok": 1700, "input_audio_mtok": 800, "cache_read_mtok": 300, "cache_audio_read_mtok": 200,
                  "output_mtok": 100}
    assert sum(ln.quantity for ln in price.lines) == 3100


def test_a_kind_without_its_own_rate_is_priced_at_the_generic_rate_and_says_so():
    meta = {"promptTokenCount": 1000, "candidatesTokenCount": 10,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 700}, {"modality": "IMAGE", "tokenCount": 300}]}
    _, price = price_response("gemini", "/v1beta/models/gemini-2.5-pro:generateContent", gemini_body("gemini-2.5-pro", meta))
    assert price.fallbacks == ({"kind": "input_image", "tokens": 300, "rate_used": "input_mtok"},)
    assert any("300 input image tokens priced at the input rate" in n for n in price.notes)
    assert any("no input_image rate" in ln.label for ln in price.lines)


def test_openai_audio_tokens_take_an_override_rate():
    pricer = Pricer(catalogue=PRICER.catalogue)
    pricer.overrides = parse_overrides(
        "version: 1\nmodels:\n  - {provider: openai, model: gpt-4o-audio-preview, effective_from: 2025-01-01,\n"
        "     source: https://platform.openai.com/docs/pricing, rates: {input_audio_mtok: 40, output_audio_mtok: 80}}\n")
    body = json.dumps({"object": "chat.completion", "model": "gpt-4o-audio-preview", "choices": [],
                       "usage": {"prompt_tokens": 1000, "completion_tokens": 500,
                                 "prompt_tokens_details": {"audio_tokens": 400, "cached_tokens": 0},
                                 "completion_tokens_details": {"audio_tokens": 300}}}).encode()
    result = providers.route("api.openai.com", "/v1/chat/completions").adapter.parse_response(body)
    price = pricer.price("openai", result.model, result.usage, AT)
    by = {ln.rate_name: (ln.quantity, ln.rate) for ln in price.lines}
    assert by == {"input_mtok": (600, Decimal("2.5")), "input_audio_mtok": (400, Decimal(40)),
                  "output_mtok": (200, Decimal(10)), "output_audio_mtok": (300, Decimal(80))}
    # the same without the override: generic rates, said out loud
    plain = PRICER.price("openai", result.model, result.usage, AT)
    assert {f["kind"] for f in plain.fallbacks} == {"input_audio", "output_audio"}


def test_a_multiplier_entry_never_hides_a_rate_entry_of_the_same_model():
    pricer = Pricer(catalogue=PRICER.catalogue)
    pricer.overrides = parse_overrides(
        "version: 1\nmodels:\n"
        "  - {provider: anthropic, model: claude-opus-5, effective_from: 2026-01-01, rates: {input_mtok: 4}}\n"
        "  - {provider: anthropic, model: 'claude-*', effective_from: 2026-06-01, multipliers: {inference_geo: {us: 1.1}}}\n")
    p = pricer.price("anthropic", "claude-opus-5", Usage(input_tokens=1_000_000), AT, modifiers={"inference_geo": "us"})
    assert p.cost == Decimal("4.4")


def _row(rid: str, price, usage: Usage, modifiers: dict | None, model: str) -> LedgerRow:
    return LedgerRow(ts=AT, request_id=rid, provider="gemini" if "gemini" in model else "anthropic", endpoint="x",
                     model=model, user="u", key_fingerprint=None, client="other", session_id=None, stream=False,
                     status=200, outcome="ok", estimated=False, cost_usd=price.cost, price_source=price.source,
                     latency_ms=1.0, ttft_ms=None, price_detail=json.dumps(price.detail()), charged_usd=price.cost,
                     modifiers=json.dumps(modifiers) if modifiers else None, **usage.as_dict())


def test_ledger_explain_check_and_reprice_keep_the_modifiers(tmp_path):
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    migrate(con)
    fast_usage = Usage(input_tokens=20000, output_tokens=3000)
    fast = PRICER.price("anthropic", "claude-opus-5", fast_usage, AT, modifiers={"speed": "fast", "inference_geo": "eu"})
    img_usage = Usage(input_tokens=1000, input_image_tokens=300, output_tokens=10)
    img = PRICER.price("gemini", "gemini-2.5-pro", img_usage, AT)
    write_rows(con, [_row("fast1", fast, fast_usage, {"speed": "fast", "inference_geo": "eu"}, "claude-opus-5"),
                     _row("img1", img, img_usage, None, "gemini-2.5-pro")])
    row = reprice.request_row(con.cursor(), "fast1")
    text = "\n".join(explain_lines(row))
    assert "modifier: speed fast -> fast rates [genai-prices" in text and "(fast)" in text
    assert "modifier: inference_geo eu -> none known" in text and "served with:" in text
    report = reprice.unpriced_report(con.cursor())
    assert report["generic_rate_tokens"] == [{"provider": "gemini", "model": "gemini-2.5-pro", "kind": "input_image",
                                              "rate_used": "input_mtok", "requests": 1, "tokens": 300}]
    assert report["unknown_modifiers"] == [{"provider": "anthropic", "model": "claude-opus-5", "modifier": "inference_geo",
                                            "value": "eu", "requests": 1}]
    examined, changes = reprice.plan(con.cursor(), PRICER, datetime(2026, 1, 1, tzinfo=UTC))
    assert examined == 2 and changes == []  # re-pricing sees the same modifiers: same money


def test_a_request_asking_for_fast_mode_is_reserved_at_fast_rates(tmp_path):
    from spendgate.gateway import Gateway, Settings

    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\n")
    gw = Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=-1, reload_interval=0))
    try:
        def estimate(extra: dict) -> Decimal:
            body = json.dumps({"model": "claude-opus-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "x" * 4000}],
                               **extra}).encode()
            ex = gw.meter.begin("api.anthropic.com", "/v1/messages", {"x-api-key": "sk-ant-unit"}, body)
            gw.meter.finish(ex, None)
            return gw.admission.estimate(ex, AT)

        # same body size either way: only the rates differ (fast mode is twice standard for Opus 5)
        assert estimate({"speed": "fast"}) == 2 * estimate({"speed": "slow"})
    finally:
        gw.close()


@pytest.mark.parametrize("header,variant", [("priority", "priority"), ("SERVICE_TIER_PRIORITY", "priority"),
                                            ("standard", "standard"), (None, "standard")])
def test_gemini_served_tier_header_picks_the_variant(tmp_path, header, variant):
    from spendgate.gateway import Gateway, Settings

    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\n")
    gw = Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=-1, reload_interval=0))
    try:
        model = "gemini-3.8-flash-tts"
        path = f"/v1beta/models/{model}:generateContent"
        body = json.dumps({"contents": [], "service_tier": "priority"}).encode()
        ex = gw.meter.begin("generativelanguage.googleapis.com", path, {"x-goog-api-key": "AIza-unit"}, body)
        assert ex.request.modifiers == {"service_tier": "priority"}
        gw.meter.saw_headers(ex, {"x-gemini-service-tier": header} if header else {})
        ex.status = 200
        result = ex.route.adapter.parse_response(gemini_body(model, {"promptTokenCount": 1_000_000,
                                                                     "candidatesTokenCount": 0}))
        row = gw.meter.build_row(ex, result, None, 0, 0.0)
        detail = json.loads(row.card_json)  # the rate card the row keeps (slim rows)
        assert detail["variant"] == variant
        # catalogue: standard $0.50 (from 2026-10-15 ... $1 from 2027) vs priority $0.90 per MTok input
        std = PRICER.price("gemini", model, Usage(input_tokens=1_000_000), ex.ts).cost
        assert (row.cost_usd > std) is (variant == "priority")
    finally:
        gw.meter.finish(ex, None)
        gw.close()


def test_prices_check_lists_the_shipped_multiplier_as_an_addition():
    from spendgate.pricing.rates import compare_overrides

    listed = compare_overrides(PRICER)
    rows = [r for r in listed if (r["provider"], r["model"]) == ("anthropic", "claude-*")]
    assert {r["field"] for r in listed if r["provider"] == "vertex" and r["model"].startswith("claude-")} == {
        "multiplier vertex_endpoint regional"}  # seventeenth review V1
    assert rows == [{"provider": "anthropic", "model": "claude-*", "effective_from": "2026-02-05", "variant": "standard",
                     "field": "multiplier inference_geo us", "override": "x1.1", "catalogue": None,
                     "status": "catalogue lacks"}]


# -- seventeenth review V1: Claude on a Vertex regional endpoint is 1.1x from Sonnet 4.5 on ---------

VERTEX_CLAUDE = "/v1/projects/acme/locations/{loc}/publishers/anthropic/models/{model}:rawPredict"


@pytest.mark.parametrize("host, loc, model, path_model, modifiers, cost", [
    # 100,000 in x $3 + 1,000 out x $15 per MTok = $0.315 on the global endpoint
    ("aiplatform.googleapis.com", "global", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5@20250929",
     {"vertex_endpoint": "global"}, "0.315"),
    ("us-east5-aiplatform.googleapis.com", "us-east5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5@20250929",
     {"vertex_endpoint": "regional"}, "0.3465"),
    ("aiplatform.googleapis.com", "us", "claude-haiku-4-5-20251001", "claude-haiku-4-5@20251001",  # multi-region
     {"vertex_endpoint": "regional"}, "0.1155"),  # ($0.10 + $0.005) x 1.1 at $1 / $5 per MTok
    # before Sonnet 4.5: the same price on both (listed x1, so the row says why)
    ("europe-west1-aiplatform.googleapis.com", "europe-west1", "claude-3-7-sonnet-20250219",
     "claude-3-7-sonnet@20250219", {"vertex_endpoint": "regional"}, "0.315"),
])
def test_vertex_regional_endpoint_premium(host, loc, model, path_model, modifiers, cost):
    route = providers.route(host, VERTEX_CLAUDE.format(loc=loc, model=path_model), "POST")
    assert route.provider == "vertex" and route.extra["modifiers"] == modifiers
    body = json.dumps({"id": "m", "type": "message", "role": "assistant", "model": model, "content": [],
                       "stop_reason": "end_turn", "usage": {"input_tokens": 100000, "output_tokens": 1000}}).encode()
    result = route.adapter.parse_response(body)
    price = PRICER.price("vertex", result.model, result.usage, AT, modifiers=serving_modifiers(result, route.extra["modifiers"]))
    assert price.cost == Decimal(cost)
    if modifiers["vertex_endpoint"] == "regional":
        (described,) = price.modifiers
        assert described["name"] == "vertex_endpoint" and "claude-on-vertex-ai" in described["source"]
        assert not price.notes


@pytest.mark.parametrize("path", [
    "/v1/projects/acme/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent",  # Gemini: no premium
    "/v1/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",  # no location in the path
])
def test_vertex_paths_without_an_endpoint_premium_state_no_modifier(path):
    route = providers.route("us-central1-aiplatform.googleapis.com", path, "POST")
    assert route.adapter is not None and "modifiers" not in route.extra


def test_a_reported_modifier_wins_over_the_routed_one():
    result = providers.route("api.anthropic.com", "/v1/messages").adapter.parse_response(anthropic_body(inference_geo="us"))
    assert serving_modifiers(result, {"inference_geo": "global", "vertex_endpoint": "regional"}) == {
        "inference_geo": "us", "vertex_endpoint": "regional"}
    assert serving_modifiers(None, {"vertex_endpoint": "regional"}) == {"vertex_endpoint": "regional"}


@pytest.mark.parametrize("mods", [{"service_tier": "standard"}, {"service_tier": "Default", "inference_geo": "global"},
                                  {"speed": "normal", "inference_geo": "not_available"}, {"service_tier": ""}])
def test_plain_modifiers_price_exactly_as_none_at_all(mods):
    """Every Anthropic and OpenAI answer states a plain tier: its price is the unmodified one,
    detail and labels included (returned as compute() made it, issue 18's nineteenth part)."""
    usage = Usage(input_tokens=24_000, output_tokens=450, cache_read_tokens=1_000)
    plain = PRICER.price("anthropic", "claude-sonnet-4-5", usage, AT)
    assert PRICER.price("anthropic", "claude-sonnet-4-5", usage, AT, modifiers=mods) == plain
    assert plain.modifiers == () and plain.late_notes == ()


def test_one_reported_modifier_among_plain_ones_is_still_described():
    usage = Usage(input_tokens=1_000_000)
    p = PRICER.price("anthropic", "claude-opus-5", usage, AT, modifiers={"service_tier": "standard", "inference_geo": "us"})
    assert [m["name"] for m in p.modifiers] == ["inference_geo"]
    assert p.cost == PRICER.price("anthropic", "claude-opus-5", usage, AT, modifiers={"inference_geo": "us"}).cost
    odd = PRICER.price("anthropic", "claude-opus-5", usage, AT, modifiers={"service_tier": "standard", "speed": "turbo"})
    assert odd.late_notes == ("speed turbo: no rate or multiplier is known for it; standard rates used",)
    assert odd.late_notes[0] in odd.notes


@pytest.mark.parametrize("mods", [{"service_tier": "standard"}, {"speed": "fast", "inference_geo": "us"},
                                  {"inference_geo": "us", "speed": "fast"}, {"region": ["eu", "us"]}, {"n": 1}])
def test_the_rows_modifiers_column_is_the_sorted_json(mods):
    from spendgate.metering.meter import modifiers_json

    assert modifiers_json(mods) == json.dumps(mods, sort_keys=True)
    assert modifiers_json(dict(reversed(mods.items()))) == modifiers_json(mods)


def test_a_reported_service_tier_is_cut_like_every_other_modifier():
    """OpenAI's service_tier is read whole from the answer: the row keeps 32 characters of it, as
    Anthropic's speed and Gemini's tier (an upstream cannot fill the ledger's modifiers column)."""
    body = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
                       "service_tier": "Priority" + "x" * 5000, "choices": [],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}).encode()
    result = providers.route("api.openai.com", "/v1/chat/completions").adapter.parse_response(body)
    assert len(result.service_tier) > 5000
    assert serving_modifiers(result) == {"service_tier": "priority" + "x" * 24}
    served = providers.route("api.openai.com", "/v1/chat/completions").adapter.parse_response(
        body.replace(b"x" * 5000, b""))
    assert serving_modifiers(served) == {"service_tier": "priority"}
