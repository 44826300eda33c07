"""Seventeenth review (FinOps), finding C1: creating a Gemini explicit context cache, which Google
bills as storage (tokens x hours of TTL), passes spendgate as `unmetered` at $0 on a laptop.

Gemini API pricing (https://ai.google.dev/gemini-api/docs/pricing, "Context caching price" and
"storage price") and the caching guide (https://ai.google.dev/gemini-api/docs/caching: billing is
"the cache token count ... the storage duration (TTL) ..."): gemini-2.5-pro storage is
$4.50 per 1,000,000 tokens per hour. `POST /v1beta/cachedContents` names the model and the `ttl`,
and its answer states the cached size (`usageMetadata.totalTokenCount`) and `expireTime`: all a
meter needs. spendgate has no route for it (providers: not in _GEMINI_ADAPTERS, not in the
README's "Not metered yet" list), so in laptop mode (`unmetered` defaults to allow) a 500,000-token
cache kept 24 hours is forwarded and recorded `unmetered`, cost NULL, charged $0: 500,000 / 1e6 x
$4.50 x 24 = $54.00 that no budget sees. (The eleventh review refused paid sessions spendgate
cannot meter; this one it can meter.)

The test asks only that such a call is not a free pass: either charged (> $0, ideally $54) or
refused by default, like the other paid-but-unmetered calls.
"""

from __future__ import annotations

import json

from tests.attacks.tenth_review_support import GEMINI, GEMINI_AUTH, answered, make, rows, send

REQ = {"model": "models/gemini-2.5-pro", "ttl": "86400s",
       "contents": [{"role": "user", "parts": [{"text": "<the whole repository, 500k tokens>"}]}]}
ANSWER = {"name": "cachedContents/r17abc", "model": "models/gemini-2.5-pro", "displayName": "",
          "usageMetadata": {"totalTokenCount": 500000},
          "createTime": "2026-12-02T12:00:00Z", "updateTime": "2026-12-02T12:00:00Z",
          "expireTime": "2026-12-03T12:00:00Z"}


def test_a_day_long_gemini_cache_is_not_a_free_pass_on_a_laptop(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")  # laptop mode, no `unmetered` key: allow
    try:
        ex, refused = send(gw, GEMINI, "/v1beta/cachedContents", json.dumps(REQ).encode(), GEMINI_AUTH)
        if refused is not None:  # refused by default: acceptable, nothing was spent
            return
        answered(gw, ex, json.dumps(ANSWER).encode())
        (row,) = rows(gw)
    finally:
        gw.close()
    assert row["outcome"] != "unmetered" and (row["charged_usd"] or 0) > 0, (
        f"$54 of cache storage recorded {row['outcome']!r}, cost {row['cost_usd']}, charged {row['charged_usd']}")
