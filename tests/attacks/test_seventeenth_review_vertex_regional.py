"""Seventeenth review (FinOps), finding V1: Claude on a Vertex AI REGIONAL endpoint is charged the
global price; Google bills regional endpoints 10% more for Claude Sonnet 4.5 and later models.

Anthropic, "Claude on Vertex AI", section "Global vs regional endpoints" / pricing
(https://docs.claude.com/en/docs/build-with-claude/claude-on-vertex-ai): starting with Claude
Sonnet 4.5, Vertex offers global endpoints (no premium) and regional endpoints (data routed through
a specific region) with a 10% pricing premium; older models keep their pricing. spendgate prices
Bedrock's regional profiles 10% above `global.` (the aws catalogue lists them), but Vertex's
location (`/v1/projects/P/locations/us-east5/...` on `us-east5-aiplatform.googleapis.com`) is
dropped by vertex.parse_path (spendgate/metering/providers/vertex.py:37-59: the `locations/[^/]+`
group is not captured) and is no serving modifier, so no override can express the premium either
(overrides match provider + model only; multipliers are keyed by reported modifiers).

Hand-computed, claude-sonnet-4-5 ($3 / $15 per MTok), 100,000 input and 1,000 output tokens:
    global:    $0.30 + $0.015 = $0.315
    us-east5:  x 1.1          = $0.3465   (spendgate: $0.315, 10% under on every regional call)
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.attacks.tenth_review_support import answered, make, rows, send

AUTH = {"authorization": "Bearer ya29.r17-SECRET", "user-agent": "anthropic-vertex/python 0.70"}
REQ = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 1024, "messages": [{"role": "user", "content": "refactor"}]}
ANSWER = {"id": "msg_v", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
          "content": [{"type": "text", "text": "done"}], "stop_reason": "end_turn",
          "usage": {"input_tokens": 100000, "output_tokens": 1000}}


@pytest.mark.parametrize("host, location, expected", [
    ("aiplatform.googleapis.com", "global", Decimal("0.315")),  # holds today
    ("us-east5-aiplatform.googleapis.com", "us-east5", Decimal("0.3465")),  # fails today: $0.315
])
def test_a_regional_vertex_endpoint_costs_ten_percent_more_for_sonnet_4_5(tmp_path, host, location, expected):
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")
    path = f"/v1/projects/acme/locations/{location}/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"
    try:
        ex, refused = send(gw, host, path, json.dumps(REQ).encode(), AUTH)
        assert refused is None
        answered(gw, ex, json.dumps(ANSWER).encode())
        (row,) = rows(gw)
    finally:
        gw.close()
    assert (row["provider"], row["outcome"]) == ("vertex", "ok"), row
    assert Decimal(str(row["cost_usd"])) == expected, (location, row["cost_usd"])
