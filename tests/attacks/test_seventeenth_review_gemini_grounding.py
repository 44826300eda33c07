"""Seventeenth review (FinOps), finding G1: a Gemini 2.5 grounded prompt is charged once per
search QUERY, while Google bills Gemini 2.5 (and older) per grounded PROMPT.

Gemini API pricing (https://ai.google.dev/gemini-api/docs/pricing, "Grounding with Google
Search"): Gemini 2.5 Pro / Flash / Flash-Lite: "$35 / 1,000 grounded prompts" (after the free daily
allowance); Gemini 3: "$14 / 1,000 search queries". One generateContent call whose answer lists
three `groundingMetadata.webSearchQueries` is ONE grounded prompt on 2.5 ($0.035) but three queries
on Gemini 3 (3 x $0.014).

spendgate counts `len(webSearchQueries)` for every model (gemini.GeminiChunkFolder.fold,
spendgate/metering/providers/gemini.py:157-159) and prices each at the catalogue's per-search rate
(rates.compute, "web search" part), so a 2.5 request with three queries costs three fees: $0.105
instead of $0.035 (a coding agent's research turn easily runs 3-5 queries: 3-5x over).

Hand-computed, gemini-2.5-flash ($0.30 in / $2.50 out per MTok):
    input 1,000 x $0.30 = $0.0003; output 500 x $2.50 = $0.00125; 1 grounded prompt = $0.035
    total $0.03655 (spendgate: $0.10655)
Gemini 3 stays per query: gemini-3-pro-preview ($2 / $12): $0.002 + $0.006 + 3 x $0.014 = $0.05.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.attacks.tenth_review_support import GEMINI, GEMINI_AUTH, answered, make, rows, send

REQ = {"contents": [{"role": "user", "parts": [{"text": "latest CVE for openssl?"}]}], "tools": [{"google_search": {}}]}


def _answer(model: str) -> bytes:
    return json.dumps({
        "candidates": [{"content": {"role": "model", "parts": [{"text": "..."}]}, "finishReason": "STOP",
                        "groundingMetadata": {"webSearchQueries": ["openssl cve", "openssl advisory 2026",
                                                                   "openssl security release"]}}],
        "usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 500, "totalTokenCount": 1500},
        "modelVersion": model}).encode()


@pytest.mark.parametrize("model, expected", [
    ("gemini-2.5-flash", Decimal("0.03655")),  # per grounded prompt: fails today ($0.10655)
    ("gemini-3-pro-preview", Decimal("0.05")),  # per search query: holds today, must keep holding
])
def test_grounding_is_billed_per_prompt_on_gemini_2_5_and_per_query_on_gemini_3(tmp_path, model, expected):
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")
    try:
        ex, refused = send(gw, GEMINI, f"/v1beta/models/{model}:generateContent", json.dumps(REQ).encode(), GEMINI_AUTH)
        assert refused is None
        answered(gw, ex, _answer(model))
        (row,) = rows(gw)
    finally:
        gw.close()
    assert row["outcome"] == "ok", row
    assert Decimal(str(row["cost_usd"])) == expected, (model, row["cost_usd"], row["web_search_requests"])
