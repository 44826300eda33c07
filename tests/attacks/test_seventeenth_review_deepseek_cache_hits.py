"""Seventeenth review (FinOps), finding D1: DeepSeek cache hits are charged at the cache-MISS rate
when the answer reports them the way DeepSeek's API reference documents them.

DeepSeek, "Create Chat Completion" (https://api-docs.deepseek.com/api/create-chat-completion) and
"Context Caching" (https://api-docs.deepseek.com/guides/kv_cache): `usage.prompt_cache_hit_tokens`
and `usage.prompt_cache_miss_tokens` (prompt_tokens = hit + miss); hits are billed at the cache-hit
input price. spendgate reads DeepSeek with the OpenAI Chat adapter, which only reads
`prompt_tokens_details.cached_tokens` (openai_chat.chat_usage, spendgate/metering/providers/openai_chat.py:47),
so an answer carrying only the documented fields is priced as 100% cache misses. (Live DeepSeek
answers may also carry the OpenAI-style `prompt_tokens_details.cached_tokens`; this test uses only
the documented fields. An over-charge, so budgets err high, but a coding agent's DeepSeek traffic
is 80-95% cache hits, so the ledger and reports show 2-3x the bill.)

Hand-computed, deepseek-chat catalogue rates ($0.27 miss / $0.07 hit / $1.10 out per MTok):
    10,000 miss x $0.27 = $0.0027; 90,000 hit x $0.07 = $0.0063; 1,000 out x $1.10 = $0.0011
    total $0.0101 (spendgate: $0.0281)
DeepSeek's off-peak hours (16:30-00:30 UTC; the catalogue's time constraint on deepseek-chat) halve
every rate: $0.00505 for a request made then.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, time
from decimal import Decimal

from tests.attacks.tenth_review_support import answered, make, rows, send

AUTH = {"authorization": "Bearer sk-ds-SECRET-17", "user-agent": "OpenAI/Python 2.8.0"}
REQ = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "explain this diff"}]}
ANSWER = {"id": "d1", "object": "chat.completion", "created": 1, "model": "deepseek-chat",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "..."}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 100000, "completion_tokens": 1000, "total_tokens": 101000,
                    "prompt_cache_hit_tokens": 90000, "prompt_cache_miss_tokens": 10000}}


def test_deepseek_cache_hits_take_the_cache_hit_rate(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")
    try:
        ex, refused = send(gw, "api.deepseek.com", "/chat/completions", json.dumps(REQ).encode(), AUTH)
        assert refused is None
        answered(gw, ex, json.dumps(ANSWER).encode())
        (row,) = rows(gw)
    finally:
        gw.close()
    assert (row["provider"], row["outcome"]) == ("deepseek", "ok"), row
    assert row["cache_read_tokens"] == 90000, row["cache_read_tokens"]
    ts = datetime.fromisoformat(str(row["ts"]))
    at = (ts.astimezone(UTC) if ts.tzinfo else ts).time()  # the ledger keeps UTC
    peak = time(0, 30) <= at < time(16, 30)
    assert Decimal(str(row["cost_usd"])) == Decimal("0.0101" if peak else "0.00505"), (row["cost_usd"], row["ts"])
