"""Session facts carried in the body (issue 14, part 1): each client's documented fallback chain,
every form it has used, read through the real adapters and the identity chain."""

from __future__ import annotations

import json

import pytest

from spendgate.identity import BodyHints, claude_code_session, resolve, session_source
from spendgate.metering import providers
from spendgate.policy.model import parse

POLICY = parse("version: 1\nidentity: [local_user]\n")
SESSION = "54c1eb09-bc4c-4d2f-98eb-6d2ab2d5e2fe"
DEVICE = "0" * 64


def ident(host: str, path: str, headers: dict[str, str], body: dict):
    route = providers.route(host, path)
    req = route.adapter.parse_request(path, json.dumps(body).encode())
    assert not req.malformed
    return resolve(POLICY, headers, default_user="dev", hints=req.hints)


def claude_body(user_id: str | None) -> dict:
    body = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 32000, "messages": [{"role": "user", "content": "hi"}]}
    if user_id is not None:
        body["metadata"] = {"user_id": user_id}
    return body


JSON_USER_ID = json.dumps({"device_id": DEVICE, "account_uuid": "", "session_id": SESSION}, separators=(",", ":"))
LEGACY_USER_ID = f"user_{'ab' * 32}_account_0f3c2d1e-1111-2222-3333-444455556666_session_{SESSION}"
LEGACY_NO_ACCOUNT = f"user_{'ab' * 32}_account__session_{SESSION}"


@pytest.mark.parametrize("user_agent", ["claude-cli/1.0.120 (external, cli)", None])
@pytest.mark.parametrize("user_id", [JSON_USER_ID, LEGACY_USER_ID, LEGACY_NO_ACCOUNT])
def test_claude_code_session_from_metadata_user_id_in_every_format(user_id, user_agent):
    headers = {"x-api-key": "sk-ant-x"} | ({"user-agent": user_agent} if user_agent else {})
    i = ident("api.anthropic.com", "/v1/messages?beta=true", headers, claude_body(user_id))
    assert i.session_id == SESSION and i.client == "claude-code"


def test_the_field_report_request_exactly():
    body = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 32000, "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"user_id": "{\"device_id\":\"" + DEVICE + "\",\"account_uuid\":\"\",\"session_id\":\""
                         + SESSION + "\"}"}}
    i = ident("api.anthropic.com", "/v1/messages", {"user-agent": "claude-cli/1.0.98 (external, cli)"}, body)
    assert (i.client, i.session_id) == ("claude-code", SESSION)


def test_claude_code_header_wins_over_the_body():
    i = ident("api.anthropic.com", "/v1/messages", {"x-claude-code-session-id": "from-header"}, claude_body(JSON_USER_ID))
    assert i.session_id == "from-header"
    assert session_source({"x-claude-code-session-id": "h"}, BodyHints(user_id=JSON_USER_ID))[1] == \
        "header x-claude-code-session-id"
    assert session_source({}, BodyHints(user_id=JSON_USER_ID))[1] == "body metadata.user_id"


@pytest.mark.parametrize("user_id", ["alice@acme.com", "user_123", "{not json", '{"session_id": 5}', "[1]",
                                     '{"session_id": "has spaces in it"}', '{"session_id": "' + "x" * 200 + '"}'])
def test_other_user_ids_are_not_sessions(user_id):
    assert claude_code_session(user_id) is None
    i = ident("api.anthropic.com", "/v1/messages", {"user-agent": "Anthropic/Python 0.70.0"}, claude_body(user_id))
    assert i.session_id is None and i.client == "anthropic-sdk"


CODEX_UA = "codex_cli_rs/0.171.0 (Debian 12; x86_64) xterm"
CODEX_BODY = {"model": "gpt-5-codex", "instructions": "...", "input": [], "stream": True,
              "prompt_cache_key": "0199a7f4-conv-id"}


@pytest.mark.parametrize("headers,expect", [
    ({"session_id": "0199a7f4-session"}, "0199a7f4-session"),  # current Codex
    ({"conversation_id": "0199a7f4-older"}, "0199a7f4-older"),  # older Codex
    ({}, "0199a7f4-conv-id"),  # body prompt_cache_key (= conversation id)
])
@pytest.mark.parametrize("host,path", [("api.openai.com", "/v1/responses"),
                                       ("chatgpt.com", "/backend-api/codex/responses")])
def test_codex_session_chain(headers, expect, host, path):
    i = ident(host, path, {"user-agent": CODEX_UA, "originator": "codex_cli_rs", **headers}, CODEX_BODY)
    assert i.client == "codex" and i.session_id == expect


def test_prompt_cache_key_of_other_clients_is_not_a_session():
    i = ident("api.openai.com", "/v1/responses", {"user-agent": "OpenAI/Python 2.1.0"}, CODEX_BODY)
    assert i.client == "openai-sdk" and i.session_id is None
    chat = {"model": "gpt-5", "messages": [], "prompt_cache_key": "tenant-42"}
    assert ident("api.openai.com", "/v1/chat/completions", {"user-agent": "OpenAI/Python 2.1.0"}, chat).session_id is None


GEMINI_PATH = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"


@pytest.mark.parametrize("body,expect", [
    ({"user_prompt_id": "8f2e-sess########3"}, "8f2e-sess"),  # interactive turn
    ({"user_prompt_id": "8f2e-sess"}, "8f2e-sess"),  # non-interactive: the prompt id is the session id
    ({"user_prompt_id": "8f2e-sess########1", "request": {"contents": [], "session_id": "8f2e-real"}}, "8f2e-real"),
])
def test_gemini_cli_session_from_code_assist_body(body, expect):
    i = ident("cloudcode-pa.googleapis.com", "/v1internal:streamGenerateContent?alt=sse",
              {"user-agent": "GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64)"}, {"model": "gemini-2.5-pro", **body})
    assert i.client == "gemini-cli" and i.session_id == expect


def test_request_session_id_is_code_assist_s_alone():
    """`request.session_id` is a Code Assist member; a Gemini API body's members are its own (a
    path inside an object would also stop its conversation being resumed from a kept prefix)."""
    body = {"contents": [], "user_prompt_id": "8f2e-sess########1", "request": {"session_id": "8f2e-real"}}
    i = ident("generativelanguage.googleapis.com", GEMINI_PATH,
              {"user-agent": "GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64)"}, body)
    assert i.client == "gemini-cli" and i.session_id == "8f2e-sess"


def test_gemini_cli_recognized_by_its_body_alone_and_installation_id_is_not_a_session():
    i = ident("generativelanguage.googleapis.com", GEMINI_PATH, {}, {"contents": [], "user_prompt_id": "s1########2"})
    assert (i.client, i.session_id) == ("gemini-cli", "s1")
    i = ident("generativelanguage.googleapis.com", GEMINI_PATH,
              {"x-gemini-api-privileged-user-id": "3b1c-install"}, {"contents": []})
    assert (i.client, i.session_id) == ("gemini-cli", None)


@pytest.mark.parametrize("name", ["x-claude-code-session-id", "session_id", "session-id", "x-session-id"])
def test_generic_session_headers_for_any_client(name):
    i = ident("api.openai.com", "/v1/chat/completions", {name: "abc-123"}, {"model": "gpt-5", "messages": []})
    assert i.session_id == "abc-123"


def test_malformed_bodies_give_no_hints_and_never_raise():
    for adapter_path in [("api.anthropic.com", "/v1/messages"), ("api.openai.com", "/v1/responses"),
                         ("generativelanguage.googleapis.com", GEMINI_PATH)]:
        route = providers.route(*adapter_path)
        for body in [b"", b"[", b'{"metadata": 5, "prompt_cache_key": 7, "user_prompt_id": []}', b"\xff"]:
            req = route.adapter.parse_request(adapter_path[1], body)
            assert req.hints.user_id is None and req.hints.prompt_cache_key is None


def test_copilot_cli_session_header():
    headers = {"user-agent": "copilot/1.0.102 (linux v24.20.0) term/unknown client/github/cli",
               "copilot-integration-id": "copilot-developer-cli", "x-client-session-id": SESSION,
               "x-interaction-id": "0d7044b0-272f-42ba-8152-43c6a2e30c96"}
    r = ident("api.individual.githubcopilot.com", "/responses", headers, {"model": "gpt-5-mini", "input": "hi"})
    assert (r.client, r.session_id) == ("copilot", SESSION)
    assert session_source(headers)[1] == "header x-client-session-id"
