"""Eleventh review (F1): paid model sessions spendgate cannot meter went through free on a laptop.

In laptop mode `unmetered` defaults to allow (an unknown path on a provider host is usually free
metadata). `POST /v1/realtime/calls` starts a Realtime session over WebRTC that runs directly
between the client and OpenAI; `client_secrets` / `sessions` mint ephemeral keys spent elsewhere;
Gemini Live (`...GenerativeService.BidiGenerateContent` WebSocket) runs through the proxy but its
usage is not read. Each was forwarded and recorded `unmetered` at $0: a way around every budget.
They are now refused by default in every mode, with a message saying why; `unmetered: allow` (or a
charge) in the policy still lets an operator permit them.
"""

from __future__ import annotations

import pytest

from tests.attacks.tenth_review_support import GEMINI, GEMINI_AUTH, OPENAI, OPENAI_AUTH, make, send

LIVE = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
PAID = [
    (OPENAI, "/v1/realtime/calls", "POST", OPENAI_AUTH),
    (OPENAI, "/v1/realtime/client_secrets", "POST", OPENAI_AUTH),
    (OPENAI, "/v1/realtime/sessions", "POST", OPENAI_AUTH),
    (GEMINI, LIVE, "GET", GEMINI_AUTH),
    (GEMINI, LIVE.replace("v1beta", "v1alpha") + "Constrained", "GET", GEMINI_AUTH),
    (GEMINI, "/v1alpha/auth_tokens", "POST", GEMINI_AUTH),
]


@pytest.mark.parametrize("host, path, method, auth", PAID, ids=[p[1].rsplit("/", 1)[-1][-30:] for p in PAID])
def test_a_paid_session_spendgate_cannot_meter_is_refused_on_a_laptop(tmp_path, host, path, method, auth):
    gw = make(tmp_path)  # laptop mode, no `unmetered` key
    try:
        ex, answer = send(gw, host, path, b"v=0\r\n" if method == "POST" else b"", auth, method=method)
        assert answer is not None and answer.status == 403, answer
        assert b"paid model session spendgate cannot meter" in answer.body
    finally:
        gw.close()


def test_the_policy_can_still_allow_them_and_other_unknown_paths_still_pass(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\nunmetered: allow\n")
    try:
        assert send(gw, OPENAI, "/v1/realtime/calls", b"v=0\r\n", OPENAI_AUTH)[1] is None
    finally:
        gw.close()
    (tmp_path / "default").mkdir()
    gw = make(tmp_path / "default")
    try:  # an unknown path (most are free metadata) keeps the laptop default
        assert send(gw, OPENAI, "/v1/organization/something_new", b"{}", OPENAI_AUTH)[1] is None
    finally:
        gw.close()
