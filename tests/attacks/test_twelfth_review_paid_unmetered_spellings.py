"""Twelfth review: paid sessions spendgate cannot meter still go through free on a laptop.

Eleventh review F1 listed them in `providers._PAID_UNMETERED`, matched on the host spelled exactly
`api.openai.com` / `generativelanguage.googleapis.com`. The same sessions are offered on hosts the
gateway already treats as the same API (`*.api.openai.com` data residency, Azure OpenAI), on
Vertex AI (the Live API), and under the beta WebRTC spelling (`POST /v1/realtime?model=...` with an
SDP offer, which `_route_openai` sends to the WebSocket-only Realtime adapter and admission then
forwards at the 1 micro-dollar floor). A transcription-only Realtime socket
(`/v1/realtime?intent=transcription`) never sends `response.create`, so no turn is ever admitted
nor recorded. Paid jobs no adapter reads (Azure and Vertex batches, Azure image deployments,
Vertex's OpenAI-compatible and deployed-model endpoints) passed every model rule the same way.
The paid list is now matched per provider (every host it serves), covers these, and sends the two
Realtime spellings the socket adapter cannot meter to it; all are refused by default.
"""

from __future__ import annotations

import json

import pytest

from spendgate.metering import providers
from spendgate.metering import websocket as ws
from tests.attacks.tenth_review_support import OPENAI_AUTH, make, send

AZURE = "myres.openai.azure.com"
AZ_AUTH = {"api-key": "azkey-mallory-SECRET-0001"}
VERTEX = "us-central1-aiplatform.googleapis.com"
GCP_AUTH = {"authorization": "Bearer ya29.mallory-SECRET-0001"}
SDP = b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"

PAID = [
    ("eu.api.openai.com", "/v1/realtime/calls", "POST", OPENAI_AUTH, SDP),
    ("eu.api.openai.com", "/v1/realtime/client_secrets", "POST", OPENAI_AUTH, b'{"session": {"type": "realtime"}}'),
    (AZURE, "/openai/v1/realtime/calls", "POST", AZ_AUTH, SDP),
    (AZURE, "/openai/v1/realtime/client_secrets", "POST", AZ_AUTH, b'{"session": {"type": "realtime"}}'),
    (AZURE, "/openai/realtimeapi/sessions?api-version=2025-04-01-preview", "POST", AZ_AUTH,
     b'{"model": "gpt-4o-realtime-preview"}'),
    # Azure's Realtime WebSocket: no socket adapter, so the upgrade goes through admission as unmetered
    (AZURE, "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-4o-realtime-preview", "GET", AZ_AUTH, b""),
    (AZURE, "/openai/v1/realtime?model=gpt-realtime", "GET", AZ_AUTH, b""),
    # Vertex AI's Live API (the Gemini Live socket on Vertex)
    (VERTEX, "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent", "GET", GCP_AUTH, b""),
    # the beta WebRTC spelling: an SDP offer POSTed to /v1/realtime; the session then runs outside the gateway
    ("api.openai.com", "/v1/realtime?model=gpt-4o-realtime-preview", "POST",
     {**OPENAI_AUTH, "content-type": "application/sdp"}, SDP),
]


@pytest.mark.parametrize("host, path, method, auth, body", PAID, ids=[f"{p[0].split('.')[0]}{p[1][:40]}" for p in PAID])
def test_a_paid_session_on_another_spelling_is_refused_on_a_laptop(tmp_path, host, path, method, auth, body):
    gw = make(tmp_path)  # laptop mode, no `unmetered` key: unknown paths are allowed, paid sessions are not
    try:
        headers = {**auth, "upgrade": "websocket"} if method == "GET" else auth
        ex, answer = send(gw, host, path, body, headers, method=method)
        assert answer is not None and answer.status == 403, (ex.route, answer)
    finally:
        gw.close()


def test_a_transcription_only_realtime_socket_is_refused_at_its_handshake(tmp_path):
    """No response.create ever goes up such a socket: the provider transcribes every committed buffer
    (billed per token) and spendgate admitted and recorded nothing. Its usage is not read, so the
    socket is refused by default like the other paid sessions (and never given the socket adapter)."""
    path = "/v1/realtime?intent=transcription"
    assert ws.socket_route(providers.route("api.openai.com", path, "GET")) is None
    gw = make(tmp_path, "defaults: {user: {day: 0.01}}\n")
    try:
        ex, answer = send(gw, "api.openai.com", path, b"", {**OPENAI_AUTH, "upgrade": "websocket"}, method="GET")
        assert answer is not None and answer.status == 403
        assert b"paid model session spendgate cannot meter" in answer.body
    finally:
        gw.close()
    # a Realtime conversation socket keeps its adapter (metered turn by turn)
    assert ws.socket_route(providers.route("api.openai.com", "/v1/realtime?model=gpt-realtime", "GET")) is not None


# Paid work on endpoints no adapter reads: forwarded free under the laptop default and past every
# model rule (a rule covering the caller is never consulted for an unmetered route).
PAID_JOBS = [
    (AZURE, "/openai/batches?api-version=2024-10-21",
     {"input_file_id": "file-abc", "endpoint": "/chat/completions", "completion_window": "24h"}, AZ_AUTH),
    (AZURE, "/openai/v1/batches", {"input_file_id": "file-abc", "endpoint": "/v1/chat/completions",
                                   "completion_window": "24h"}, AZ_AUTH),
    (VERTEX, "/v1/projects/p/locations/us-central1/batchPredictionJobs",
     {"model": "publishers/google/models/gemini-2.5-pro", "inputConfig": {}}, GCP_AUTH),
    (AZURE, "/openai/deployments/dalle/images/generations?api-version=2024-10-21", {"prompt": "x", "n": 10}, AZ_AUTH),
    # Vertex AI's OpenAI-compatible endpoint (documented by Google) and a deployed (tuned) model's endpoint
    (VERTEX, "/v1/projects/p/locations/us-central1/endpoints/openapi/chat/completions",
     {"model": "google/gemini-2.5-pro", "messages": [{"role": "user", "content": "hi"}]}, GCP_AUTH),
    (VERTEX, "/v1/projects/p/locations/us-central1/endpoints/1234567890:generateContent",
     {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, GCP_AUTH),
]


@pytest.mark.parametrize("host, path, body, auth", PAID_JOBS, ids=[p[1][:40] for p in PAID_JOBS])
def test_paid_jobs_no_adapter_reads_are_not_forwarded_past_a_model_allow_list(tmp_path, host, path, body, auth):
    gw = make(tmp_path, "defaults: {user: {day: 0.5}}\nmodels: [{scope: 'user:mallory', allow: ['gpt-4o-mini*']}]\n")
    try:
        ex, answer = send(gw, host, path, json.dumps(body).encode(), auth)
        assert answer is not None and answer.status == 403, ex.route
    finally:
        gw.close()
