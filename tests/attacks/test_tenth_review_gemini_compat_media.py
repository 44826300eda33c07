"""Tenth review: Imagen and Veo through the Gemini API's OpenAI-compatible endpoints are unmetered.

Today's change meters Imagen (`models/imagen-*:predict`) and Veo (`:predictLongRunning`), but the
same models are served under `/v1beta/openai` too: `POST /v1beta/openai/images/generations`
(`client.images.generate(model="imagen-4.0-generate-001", ...)` with the OpenAI SDK pointed at
Gemini; also gemini-*-image) and `POST /v1beta/openai/videos` (Veo; polled with
`GET /v1beta/openai/videos/{id}`). `providers._route_gemini` knows only `_PASSIVE`
(chat/responses/embeddings/completions) under GEMINI_OPENAI_BASE, so both fall into `unmetered`:
in laptop mode (`unmetered` unset means allow) they are forwarded with a $0 row and count against
no budget, and README's "Not metered yet" does not list them. Fix: route images/generations (per
`data[]` image, like :predict's predictions) and videos (per second, from the request, like Veo)
under GEMINI_OPENAI_BASE, or at least refuse them at the cap.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from spendgate.metering.providers import route
from tests.attacks.tenth_review_support import GEMINI, answered, make, rows, send

AUTH = {"authorization": "Bearer AIza-mallory-SECRET-0001", "user-agent": "OpenAI/Python 2.8.0"}
IMAGES = json.dumps({"created": 1764600000, "data": [{"b64_json": "iVBORw0KGgo" + "A" * 64}] * 4}).encode()
VIDEO = json.dumps({"id": "video_veo1", "object": "video", "model": "veo-3.0-generate-001", "status": "queued",
                    "seconds": "8", "created_at": 1764600000}).encode()

CASES = [
    ("/v1beta/openai/images/generations",
     {"model": "imagen-4.0-generate-001", "prompt": "a robot", "n": 4, "response_format": "b64_json"}, IMAGES),
    ("/v1beta/openai/videos", {"model": "veo-3.0-generate-001", "prompt": "a drone shot", "seconds": "8"}, VIDEO),
]


@pytest.mark.parametrize("path,request_body,answer", CASES, ids=["imagen", "veo"])
def test_gemini_openai_compatible_media_is_metered(path, request_body, answer):
    assert route(GEMINI, path, "POST").adapter is not None, f"{path} is unmetered"


@pytest.mark.parametrize("path,request_body,answer", CASES, ids=["imagen", "veo"])
def test_laptop_mode_never_records_them_at_zero(tmp_path, path, request_body, answer):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n", central=False)  # `unmetered` unset: allow
    try:
        ex, refused = send(gw, GEMINI, path, json.dumps(request_body).encode(), AUTH)
        if refused is None:
            answered(gw, ex, answer)
        (row,) = rows(gw)
        charged = Decimal(str(row["charged_usd"] or 0))
        assert refused is not None or charged > 0, (row["endpoint"], row["outcome"], charged)
    finally:
        gw.close()
