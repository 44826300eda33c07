"""Our cost against the providers' published per-token prices.

The expected numbers below are typed in from the providers' own price pages, NOT read from the
catalogue, so a wrong catalogue entry, a wrong override or a wrong formula fails here. Each
expected cost is computed in the test from the published rates (USD per million tokens):

Anthropic, https://docs.claude.com/en/docs/about-claude/pricing (model pricing table, "Long
context pricing", "Batch processing") and
https://docs.claude.com/en/docs/build-with-claude/prompt-caching#pricing
(5-minute write 1.25x input, 1-hour write 2x input, read 0.1x input); web search $10 / 1,000
(https://docs.claude.com/en/docs/agents-and-tools/tool-use/web-search-tool):
    Opus 4.1     in 15    out 75   read 1.50  5m 18.75  1h 30
    Opus 4.5     in 5     out 25   read 0.50  5m 6.25   1h 10
    Sonnet 4.5   in 3     out 15   read 0.30  5m 3.75   1h 6     >200k input: 6 / 22.50 / 0.60 / 7.50 / 12
    Sonnet 4     same as Sonnet 4.5, including the >200k long-context rates (1M context beta)
    Haiku 4.5    in 1     out 5    read 0.10  5m 1.25   1h 2
    Batch: 50% of every rate.
OpenAI, https://platform.openai.com/docs/pricing (Standard, Priority and Flex tables):
    gpt-5        in 1.25  cached 0.125  out 10     priority 2.50 / 0.25 / 20   flex 0.625 / 0.0625 / 5
    gpt-5-mini   in 0.25  cached 0.025  out 2
    gpt-5-nano   in 0.05  cached 0.005  out 0.40
    gpt-4.1      in 2     cached 0.50   out 8
    o3           in 2     cached 0.50   out 8      (since the 2025-06-10 price cut; before: in 10, out 40)
    o4-mini      in 1.10  cached 0.275  out 4.40
    Reasoning tokens are billed as output tokens.
Google, https://ai.google.dev/gemini-api/docs/pricing (paid tier, text):
    gemini-2.5-pro    in 1.25 (<=200k) / 2.50 (>200k)  out 10 / 15  context cache 0.125 / 0.25
                      Grounding with Google Search $35 / 1,000 requests; batch 50%
    gemini-2.5-flash  in 0.30  out 2.50  context cache 0.03
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.pricing.rates import Pricer
from spendgate.usage import Usage

REPO = Path(__file__).resolve().parents[2]
D = Decimal
M = D(1_000_000)
AT = datetime(2026, 11, 20, 12, tzinfo=UTC)


def cost(rates: dict[str, str], *, uncached=0, read=0, w5=0, w1h=0, out=0, searches=0, search_each="0") -> Decimal:
    """The provider's arithmetic, from its published rates: tokens x rate / 1M, summed."""
    r = {k: D(v) for k, v in rates.items()}
    return (uncached * r["in"] + read * r.get("read", r["in"]) + w5 * r.get("w5", r["in"])
            + w1h * r.get("w1h", r["in"]) + out * r["out"]) / M + searches * D(search_each)  # fmt: skip


def usage(*, uncached=0, read=0, w5=0, w1h=0, out=0, reasoning=0, searches=0) -> Usage:
    return Usage(input_tokens=uncached + read + w5 + w1h, cache_read_tokens=read, cache_write_tokens=w5 + w1h,
                 cache_write_1h_tokens=w1h, output_tokens=out, reasoning_tokens=reasoning,
                 web_search_requests=searches)  # fmt: skip


OPUS_41 = {"in": "15", "out": "75", "read": "1.50", "w5": "18.75", "w1h": "30"}
OPUS_45 = {"in": "5", "out": "25", "read": "0.50", "w5": "6.25", "w1h": "10"}
SONNET = {"in": "3", "out": "15", "read": "0.30", "w5": "3.75", "w1h": "6"}
SONNET_LONG = {"in": "6", "out": "22.50", "read": "0.60", "w5": "7.50", "w1h": "12"}
HAIKU_45 = {"in": "1", "out": "5", "read": "0.10", "w5": "1.25", "w1h": "2"}
HALF = {k: str(D(v) / 2) for k, v in SONNET.items()}
HALF_LONG = {k: str(D(v) / 2) for k, v in SONNET_LONG.items()}
GPT5 = {"in": "1.25", "read": "0.125", "out": "10"}
GEM_PRO = {"in": "1.25", "read": "0.125", "out": "10"}
GEM_PRO_LONG = {"in": "2.50", "read": "0.25", "out": "15"}

CACHED = dict(uncached=1_200, read=50_000, w5=8_000, w1h=4_000, out=2_500)  # a typical agent turn
LONG = dict(uncached=150_000, read=40_000, w5=10_000, w1h=5_000, out=3_000)  # 205,000 input: past 200k

# (id, provider, model, variant, usage kwargs, expected cost)
CASES = [
    # Anthropic: cache reads, 5m and 1h writes priced separately
    ("opus-4.1", "anthropic", "claude-opus-4-1-20250805", "standard", CACHED, cost(OPUS_41, **CACHED)),
    ("opus-4.5", "anthropic", "claude-opus-4-5-20251101", "standard", CACHED, cost(OPUS_45, **CACHED)),
    ("sonnet-4.5", "anthropic", "claude-sonnet-4-5-20250929", "standard", CACHED, cost(SONNET, **CACHED)),
    ("haiku-4.5", "anthropic", "claude-haiku-4-5-20251001", "standard", CACHED, cost(HAIKU_45, **CACHED)),
    # past 200k input (counting cache reads and writes): every token at the long-context rate
    ("sonnet-4.5 >200k", "anthropic", "claude-sonnet-4-5", "standard", LONG, cost(SONNET_LONG, **LONG)),
    # Sonnet 4's long-context tier comes from pricing/overrides.yaml (the catalogue lacks it)
    ("sonnet-4 >200k", "anthropic", "claude-sonnet-4-20250514", "standard", LONG, cost(SONNET_LONG, **LONG)),
    ("sonnet-4 <=200k", "anthropic", "claude-sonnet-4-20250514", "standard", CACHED, cost(SONNET, **CACHED)),
    # exactly at the threshold is still the base rate (the tier starts ABOVE 200,000)
    ("sonnet-4.5 =200k", "anthropic", "claude-sonnet-4-5", "standard", dict(uncached=200_000, out=100),
     cost(SONNET, uncached=200_000, out=100)),
    ("sonnet-4.5 web search", "anthropic", "claude-sonnet-4-5", "standard", dict(uncached=2_000, out=500, searches=3),
     cost(SONNET, uncached=2_000, out=500, searches=3, search_each="0.01")),
    ("sonnet-4.5 batch", "anthropic", "claude-sonnet-4-5", "batch", CACHED, cost(HALF, **CACHED)),
    ("sonnet-4.5 batch >200k", "anthropic", "claude-sonnet-4-5", "batch", LONG, cost(HALF_LONG, **LONG)),
    ("sonnet-4 batch (override)", "anthropic", "claude-sonnet-4-0", "batch", CACHED, cost(HALF, **CACHED)),
    # OpenAI: cached input discounted; reasoning tokens are inside output tokens, at the output rate
    ("gpt-5", "openai", "gpt-5-2025-08-07", "standard", dict(uncached=3_000, read=20_000, out=4_000, reasoning=3_000),
     cost(GPT5, uncached=3_000, read=20_000, out=4_000)),
    ("gpt-5-mini", "openai", "gpt-5-mini", "standard", dict(uncached=3_000, read=20_000, out=4_000, reasoning=2_000),
     cost({"in": "0.25", "read": "0.025", "out": "2"}, uncached=3_000, read=20_000, out=4_000)),
    ("gpt-5-nano", "openai", "gpt-5-nano", "standard", dict(uncached=3_000, read=20_000, out=4_000),
     cost({"in": "0.05", "read": "0.005", "out": "0.40"}, uncached=3_000, read=20_000, out=4_000)),
    ("gpt-5 priority", "openai", "gpt-5", "priority", dict(uncached=3_000, read=20_000, out=4_000),
     cost({"in": "2.50", "read": "0.25", "out": "20"}, uncached=3_000, read=20_000, out=4_000)),
    ("gpt-5 flex", "openai", "gpt-5", "flex", dict(uncached=3_000, read=20_000, out=4_000),
     cost({"in": "0.625", "read": "0.0625", "out": "5"}, uncached=3_000, read=20_000, out=4_000)),
    ("gpt-4.1", "openai", "gpt-4.1-2025-04-14", "standard", dict(uncached=10_000, read=30_000, out=1_000),
     cost({"in": "2", "read": "0.50", "out": "8"}, uncached=10_000, read=30_000, out=1_000)),
    ("o3", "openai", "o3-2025-04-16", "standard", dict(uncached=5_000, read=10_000, out=6_000, reasoning=5_000),
     cost({"in": "2", "read": "0.50", "out": "8"}, uncached=5_000, read=10_000, out=6_000)),
    ("o4-mini", "openai", "o4-mini", "standard", dict(uncached=5_000, read=10_000, out=6_000, reasoning=5_500),
     cost({"in": "1.10", "read": "0.275", "out": "4.40"}, uncached=5_000, read=10_000, out=6_000)),
    # Gemini: 2.5 Pro below and above 200k (a cliff on every part, cache included), Flash, grounding
    ("gemini-2.5-pro", "gemini", "gemini-2.5-pro", "standard", dict(uncached=100_000, read=50_000, out=8_000),
     cost(GEM_PRO, uncached=100_000, read=50_000, out=8_000)),
    ("gemini-2.5-pro >200k", "gemini", "gemini-2.5-pro", "standard", dict(uncached=180_000, read=40_000, out=8_000),
     cost(GEM_PRO_LONG, uncached=180_000, read=40_000, out=8_000)),
    # two search queries, one grounded prompt: 2.5 bills $35 / 1,000 grounded prompts (seventeenth review G1)
    ("gemini-2.5-pro grounding", "gemini", "gemini-2.5-pro", "standard", dict(uncached=1_000, out=500, searches=2),
     cost(GEM_PRO, uncached=1_000, out=500, searches=1, search_each="0.035")),
    ("gemini-2.5-pro batch", "gemini", "gemini-2.5-pro", "batch", dict(uncached=100_000, out=8_000),
     cost({"in": "0.625", "out": "5"}, uncached=100_000, out=8_000)),
    ("gemini-2.5-flash", "gemini", "gemini-2.5-flash", "standard", dict(uncached=30_000, read=90_000, out=5_000,
                                                                         reasoning=4_000),
     cost({"in": "0.30", "read": "0.03", "out": "2.50"}, uncached=30_000, read=90_000, out=5_000)),
]  # fmt: skip


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    """The prices the gateway ships with: the pinned catalogue plus pricing/overrides.yaml."""
    return Pricer(REPO / "pricing" / "overrides.yaml")


@pytest.mark.parametrize(("provider", "model", "variant", "use", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_cost_matches_published_prices(pricer, provider, model, variant, use, expected):
    result = pricer.price(provider, model, usage(**use), AT, variant)
    assert result.cost is not None, result.notes
    assert result.cost == expected, [(ln.label, ln.quantity, ln.rate) for ln in result.lines]
    assert sum(ln.cost for ln in result.lines) == result.cost  # the explanation adds up to the charge


def test_price_of_the_day_o3_before_its_price_cut(pricer):
    """o3 cost $10 / $40 until 2025-06-10; a request from before keeps that price."""
    u = usage(uncached=5_000, out=6_000)
    before = pricer.price("openai", "o3", u, datetime(2025, 5, 1, tzinfo=UTC))
    after = pricer.price("openai", "o3", u, datetime(2025, 6, 10, 0, 1, tzinfo=UTC))
    assert before.cost == cost({"in": "10", "out": "40"}, uncached=5_000, out=6_000)
    assert after.cost == cost({"in": "2", "out": "8"}, uncached=5_000, out=6_000)


def test_one_hour_writes_are_not_priced_as_five_minute_writes(pricer):
    five = pricer.price("anthropic", "claude-sonnet-4-5", usage(w5=100_000), AT).cost
    hour = pricer.price("anthropic", "claude-sonnet-4-5", usage(w1h=100_000), AT).cost
    assert (five, hour) == (D("0.375"), D("0.6"))


def test_unknown_model_is_never_zero(pricer):
    result = pricer.price("anthropic", "claude-imaginary-9", usage(uncached=1000, out=10), AT)
    assert result.cost is None and result.source == "unknown"
