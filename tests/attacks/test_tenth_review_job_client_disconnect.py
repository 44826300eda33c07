"""Tenth review: a video job forwarded upstream is recorded $0 when the client hangs up before the
answer; the job runs and is billed, and the client finds it through the free list / poll.

Sora's `POST /v1/videos` and Veo's `:predictLongRunning` start a job; the answer only describes it.
A client that sends the whole request and then closes (or half-closes: mitmproxy's HTTP/1 layer
takes a FIN as "Client disconnected.") before the answer arrives gets `error()` in
addons/gateway.py: no response, so `ex.status = 502` and `meter.judge` says `upstream_error`,
$0 ("not billed"), its reservation released. Nothing tells the gateway the provider did not start
the job; it forwarded a complete request. The client then lists its videos (`GET /v1/videos`,
free) or polls and downloads (free). docs/pricing.md: "a job that later fails is not refunded by
spendgate (errs over)" — here it errs under, to $0, at the client's choice. Fix: an exchange the
CLIENT abandoned after its request went upstream (flow.error "Client disconnected.", not a
failure to reach or hear the provider) is charged its request-fixed usage / reservation for the
job endpoints (videos.*, predictLongRunning), marked estimated.
"""

from __future__ import annotations

import importlib.util
import sys
from decimal import Decimal

import pytest
from mitmproxy import flow as mflow
from mitmproxy.test import taddons, tflow

from tests.attacks.tenth_review_support import GEMINI, GEMINI_AUTH, OPENAI, OPENAI_AUTH, ROOT, make, rows, send

SORA_FORM = (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nsora-2-pro\r\n'
             b'--b\r\nContent-Disposition: form-data; name="seconds"\r\n\r\n12\r\n'
             b'--b\r\nContent-Disposition: form-data; name="size"\r\n\r\n1792x1024\r\n--b--\r\n')


def _addon_module():
    sys.path.insert(0, str(ROOT / "addons"))
    spec = importlib.util.spec_from_file_location("spendgate_addon_tenth_review", ROOT / "addons" / "gateway.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("host,path,body,headers", [
    (OPENAI, "/v1/videos", SORA_FORM, OPENAI_AUTH),
    (GEMINI, "/v1beta/models/veo-3.0-generate-001:predictLongRunning",
     b'{"instances": [{"prompt": "a drone shot"}], "parameters": {"durationSeconds": 8}}', GEMINI_AUTH),
], ids=["sora-create", "veo"])
def test_a_job_the_client_walked_away_from_is_not_free(tmp_path, host, path, body, headers):
    mod = _addon_module()
    gw = make(tmp_path, "defaults: {user: {day: 20}}\n")
    gate = mod.SpendGate()
    gate.gateway = gw
    try:
        ex, refused = send(gw, host, path, body, headers)
        assert refused is None
        reserved = ex.extra["reservation"].amount
        with taddons.context(gate):
            f = tflow.tflow()
            f.response = None
            f.metadata[mod.META] = ex  # what _meter left on the flow; the request went upstream
            f.error = mflow.Error("Client disconnected.")  # mitmproxy's HTTP/1 layer on the client's FIN
            gate.error(f)
        (row,) = rows(gw)
        charged = Decimal(str(row["charged_usd"] or 0))
        assert charged >= reserved > 0, (row["outcome"], row["note"], charged, reserved)
    finally:
        gate.gateway = None
        gw.close()
