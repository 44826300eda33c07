"""Tenth review: a Veo request whose video count spendgate cannot read is billed as ONE video.

Veo is charged from the request alone (`VeoAdapter`: durationSeconds x sampleCount x instances;
the answer is an operation). `gemini._count` takes only JSON numbers, so `"sampleCount": "4"` (a
string: Google's proto3 JSON mapping reads int32 fields from strings) and `"sample_count": 4`
(proto field names are accepted beside their lowerCamelCase JSON names; spendgate itself reads
`generation_config` / `max_output_tokens` for that reason) fall back to the default, 1: four 8 s
clips ($12.80 on veo-3.0-generate) are billed as one ($3.20). The duration's default (8 s, the
longest) errs high; the count's default (1, the fewest) errs low. Fix: read digit strings and the
snake_case names, and when the count is present but unreadable, bill the most the API allows
(Veo: 4 per instance), not 1.
"""

from __future__ import annotations

import json

import pytest

from tests.attacks.tenth_review_support import GEMINI, GEMINI_AUTH, answered, make, rows, send

PATH = "/v1beta/models/veo-3.0-generate-001:predictLongRunning"


@pytest.mark.parametrize("params", [{"sampleCount": "4"}, {"sample_count": 4}], ids=["string", "snake_case"])
def test_four_videos_asked_are_never_billed_as_one(tmp_path, params):
    gw = make(tmp_path, "defaults: {user: {day: 50}}\n")
    try:
        body = json.dumps({"instances": [{"prompt": "a drone shot"}], "parameters": {"durationSeconds": 8, **params}})
        ex, refused = send(gw, GEMINI, PATH, body.encode(), GEMINI_AUTH)
        assert refused is None
        answered(gw, ex, b'{"name": "models/veo-3.0-generate-001/operations/op1"}')
        (row,) = rows(gw)
        assert row["output_video_seconds"] >= 4 * 8, (row["output_video_seconds"], row["cost_usd"])
    finally:
        gw.close()
