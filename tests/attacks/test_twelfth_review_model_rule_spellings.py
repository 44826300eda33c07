"""Twelfth review: a model rule is matched against a string the provider does not decide by.

`runway.model_denial` globs the request's `model` as the client spelled it (lower-cased). After
the eleventh review's F2 fix an *unreadable* model is refused, but a *readable* one that is not
what runs still passes:

- Azure deployments: `/openai/deployments/{name}/chat/completions` runs the deployment; the body's
  `model` is ignored by Azure. The adapter reads the body's model first, so naming an allowed model
  in the body sends any deployment past an allow list.
- Provider spellings the pricer already resolves (`pricing.rates.normalize_model`): Bedrock's
  `anthropic.claude-opus-4-1-20250805-v1:0` / `us.anthropic....` is priced as `claude-opus-4-1`,
  yet the policy README's own example `deny: ["claude-opus-*"]` does not match it; Gemini's
  OpenAI-compatible endpoint takes `models/gemini-2.5-pro` as well as `gemini-2.5-pro`.
- OpenRouter's `models` fallback list: with an allowed `model` first, a denied model in `models`
  runs whenever the first fails (the client can make it fail); only `model` is checked.
- Realtime: a `response.create` may carry `response.model`; the adapter takes it over the session's
  model (the URL's `?model=`, `session.created`), which is what the provider runs.

Now a rule is matched against every name the request may run under (`runway.rule_names`: as
sent, the catalogue's names, without `models/` or a router's `vendor/`), an Azure request also at
its deployment, an OpenRouter request at each fallback, a Realtime turn at the session's model too.
"""

from __future__ import annotations

import json

import pytest

from spendgate.metering import providers
from spendgate.metering import websocket as ws
from tests.attacks.tenth_review_support import GEMINI, GEMINI_AUTH, OPENAI_AUTH, make, send

DENY = "models: [{scope: 'user:mallory', deny: ['claude-opus-*', 'gpt-5*', 'gemini-2.5-pro*']}]\n"
ALLOW = "models: [{scope: 'user:mallory', allow: ['gpt-4o-mini*', 'claude-haiku-*', 'gemini-2.5-flash*']}]\n"
AWS = {"authorization": "AWS4-HMAC-SHA256 Credential=AKIAMALLORY/20250101/us-east-1/bedrock/aws4_request, "
                        "SignedHeaders=host, Signature=abc"}
BEDROCK = "bedrock-runtime.us-east-1.amazonaws.com"
CHAT = [{"role": "user", "content": "hi"}]


def _refused(tmp_path, rule, host, path, body, auth):
    gw = make(tmp_path, "defaults: {user: {day: 50}}\n" + rule)
    try:
        ex, answer = send(gw, host, path, json.dumps(body).encode(), auth)
        return ex, answer
    finally:
        gw.close()


def test_an_azure_deployment_is_checked_not_the_body_model_azure_ignores(tmp_path):
    ex, answer = _refused(tmp_path, ALLOW, "myres.openai.azure.com",
                          "/openai/deployments/gpt5-prod/chat/completions?api-version=2024-10-21",
                          {"model": "gpt-4o-mini", "messages": CHAT}, {"api-key": "azkey-mallory-SECRET"})
    assert answer is not None and answer.status == 403, ex.request.model  # without the body model it is a 403


@pytest.mark.parametrize("path, body", [
    ("/model/anthropic.claude-opus-4-1-20250805-v1:0/invoke",
     {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 9, "messages": CHAT}),
    ("/model/us.anthropic.claude-opus-4-1-20250805-v1:0/converse", {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
], ids=["invoke", "converse-us-profile"])
def test_deny_claude_opus_covers_opus_on_bedrock(tmp_path, path, body):
    """policies/README.md's example (`deny: ["claude-opus-*"]`); the pricer prices these as claude-opus-4-1."""
    ex, answer = _refused(tmp_path, DENY, BEDROCK, path, body, AWS)
    assert answer is not None and answer.status == 403, ex.request.model


def test_deny_covers_the_models_prefix_on_geminis_openai_endpoint(tmp_path):
    ex, answer = _refused(tmp_path, DENY, GEMINI, "/v1beta/openai/chat/completions",
                          {"model": "models/gemini-2.5-pro", "messages": CHAT}, GEMINI_AUTH)
    assert answer is not None and answer.status == 403, ex.request.model


def test_openrouter_fallback_models_are_checked(tmp_path):
    ex, answer = _refused(tmp_path, DENY, "openrouter.ai", "/api/v1/chat/completions",
                          {"model": "openai/gpt-4o-mini", "models": ["anthropic/claude-opus-4.1"], "messages": CHAT},
                          OPENAI_AUTH)
    assert answer is not None and answer.status == 403, ex.request.model


def test_a_realtime_turn_is_checked_at_the_sessions_model_not_one_the_client_names(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 50}}\n"
                        "models: [{scope: 'user:mallory', allow: ['gpt-4o-mini-realtime*']}]\n")
    try:
        path = "/v1/realtime?model=gpt-realtime"
        route = ws.socket_route(providers.route("api.openai.com", path))
        session = ws.SocketSession(gw.meter, route, "api.openai.com", path, {**OPENAI_AUTH, "upgrade": "websocket"})
        session.server_message(json.dumps({"type": "session.created", "session": {"model": "gpt-realtime"}}).encode())
        turn = session.client_message(json.dumps({"type": "response.create",
                                                  "response": {"model": "gpt-4o-mini-realtime-preview"}}).encode())
        assert turn is not None
        answer = gw.admission.admit(turn.exchange)
        assert answer is not None and answer.status == 403, turn.exchange.request.model
    finally:
        gw.close()


def test_the_catalogue_name_also_lets_an_allowed_model_through(tmp_path):
    """The other side of matching every name: Bedrock's spelling of an allowed model is allowed."""
    ex, answer = _refused(tmp_path, ALLOW, BEDROCK, "/model/us.anthropic.claude-haiku-4-5-20251001-v1:0/invoke",
                          {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 9, "messages": CHAT}, AWS)
    assert answer is None, answer
