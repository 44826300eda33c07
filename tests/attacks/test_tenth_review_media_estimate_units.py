"""Tenth review: when a media answer cannot be read (cut, truncated, garbled), the row is priced as
a few input tokens: the images or seconds of video are dropped.

`meter.judge` falls back to `estimate_usage(req, result)` whenever the provider's usage did not
arrive, and `estimate_usage` copies token counts only: `RequestInfo.estimate` (Imagen's images,
Sora's seconds) and even `request_usage` (Veo's seconds, which the request fixes: judge uses it
only when the exchange was not `ended`) are ignored. The row is then input tokens for a model
whose only rate is per image / per second: `unpriced`, charged the policy's fallback per-MTok rate
on ~10 input tokens. A 200 answer the provider billed (4 Imagen Ultra images, $0.24; a 12 s
sora-2-pro job, $6; four 8 s Veo clips, $12.80) is charged a fraction of a cent. The answer body
being cut after its headers (connection reset, a client gone mid-download, a proxy timeout) is
enough. Fix: estimate_usage (or judge) keeps the request's per-unit estimate / request_usage for
an answered (status < 400) exchange whose usage is unknown, like admission reserved it.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.attacks.tenth_review_support import GEMINI, GEMINI_AUTH, OPENAI, OPENAI_AUTH, make, rows, send
from spendgate.metering.meter import Body

IMAGEN = json.dumps({"predictions": [{"mimeType": "image/png", "bytesBase64Encoded": "iVBORw0KGgo" + "A" * 4000}] * 4}).encode()
SORA_FORM = (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2-pro\r\n'
             b'--b\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n12\r\n'
             b'--b\r\nContent-Disposition: form-data; name="size"\r\n\r\n1792x1024\r\n--b--\r\n')
SORA_JOB = json.dumps({"id": "video_1", "object": "video", "model": "sora-2-pro", "status": "queued",
                       "seconds": "12", "size": "1792x1024", "created_at": 1764600000}).encode()

CASES = [  # (host, path, request body, headers, what the provider bills in USD, answer body or None if cut)
    ("imagen-truncated", GEMINI, "/v1beta/models/imagen-4.0-ultra-generate-001:predict",
     b'{"instances": [{"prompt": "a robot"}]}', GEMINI_AUTH, Decimal("0.24"), IMAGEN[: len(IMAGEN) // 2]),
    ("imagen-cut", GEMINI, "/v1beta/models/imagen-4.0-ultra-generate-001:predict",
     b'{"instances": [{"prompt": "a robot"}]}', GEMINI_AUTH, Decimal("0.24"), None),
    ("veo-cut", GEMINI, "/v1beta/models/veo-3.0-generate-001:predictLongRunning",
     b'{"instances": [{"prompt": "a drone shot"}], "parameters": {"sampleCount": 4}}', GEMINI_AUTH,
     Decimal("12.80"), None),
    ("sora-truncated", OPENAI, "/v1/videos", SORA_FORM, OPENAI_AUTH, Decimal("6.00"), SORA_JOB[:40]),
]


@pytest.mark.parametrize("name,host,path,body,headers,billed,answer", CASES, ids=[c[0] for c in CASES])
def test_an_unreadable_media_answer_keeps_its_units(tmp_path, name, host, path, body, headers, billed, answer):
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")  # the shipped default `unpriced` fallback
    try:
        ex, refused = send(gw, host, path, body, headers)
        assert refused is None
        reserved = ex.extra["reservation"].amount
        ex.status = 200  # responseheaders saw the provider's 200
        if answer is None:  # addons/gateway.py error(): the body never completed
            gw.meter.finish(ex, None, ended="peer closed connection without sending complete message body")
        else:
            gw.meter.finish(ex, Body(answer), bytes_out=len(answer))
        (row,) = rows(gw)
        charged = Decimal(str(row["charged_usd"] or 0))
        units = row["output_images"] + row["output_video_seconds"]
        assert units > 0 and charged >= billed, (row["outcome"], row["note"], units, charged, f"reserved {reserved}")
    finally:
        gw.close()
