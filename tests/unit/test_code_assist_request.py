"""Code Assist's request (Gemini CLI signed in with Google) is read in one pass, its conversation never built.

The body is ``{"model", "project", "user_prompt_id", "request": {"contents": [...], "generationConfig",
"session_id", ...}}``, as Gemini CLI 0.61.0 sends it (tests/e2e/test_agents_e2e.py drives the real
CLI). It was read three times, once building the whole `request`: 0.79 ms at 100 KB, 55 ms at 5 MB.
"""

from __future__ import annotations

import json

import pytest

from spendgate.metering.providers import base
from spendgate.metering.providers.vertex import CODE_ASSIST

PATH = "/v1internal:streamGenerateContent?alt=sse"


def body(request: dict | None = None, **top) -> bytes:
    request = {"contents": [{"role": "user", "parts": [{"text": "x" * 2000}]}] * 50,
               "generationConfig": {"temperature": 0, "maxOutputTokens": 8192}, "session_id": "sess-1",
               **(request or {})}
    return json.dumps({"model": "gemini-2.5-pro", "project": "p-1", "user_prompt_id": "sess-1########2",
                       "request": request, **top}).encode()


def test_the_facts_and_the_hints():
    info = CODE_ASSIST["streamGenerateContent"].parse_request(PATH, body())
    assert (info.model, info.stream, info.max_output_tokens, info.malformed) == ("gemini-2.5-pro", True, 8192, False)
    assert (info.hints.session_id, info.hints.user_prompt_id) == ("sess-1", "sess-1########2")


def test_the_conversation_is_validated_not_built(monkeypatch):
    built: list[int] = []
    member = base._member
    monkeypatch.setattr(base, "_member", lambda raw: built.append(len(raw)) or member(raw))
    CODE_ASSIST["generateContent"].parse_request(PATH, body())
    assert built and max(built) < 100, built  # model, user_prompt_id, session_id, generationConfig


@pytest.mark.parametrize("request_, top, cap, session", [
    ({"generationConfig": {}}, {}, None, "sess-1"),
    ({"generationConfig": None}, {}, None, "sess-1"),
    ({"generationConfig": {"maxOutputTokens": 64}}, {"generationConfig": {"maxOutputTokens": 5}}, 64, "sess-1"),
    ({"session_id": 7}, {}, 8192, None),  # not a string: no hint
])  # fmt: skip
def test_members_inside_request(request_, top, cap, session):
    info = CODE_ASSIST["generateContent"].parse_request(PATH, body(request_, **top))
    assert (info.max_output_tokens, info.hints.session_id) == (cap, session)


@pytest.mark.parametrize("raw", [
    b'{"model": "gemini-2.5-pro", "request": "not an object"}',
    b'{"model": "gemini-2.5-pro", "request": null, "user_prompt_id": "p"}',
    b'{"model": "gemini-2.5-pro", "request": {"generationConfig": {"maxOutputTokens": 9}}, "request": {}}',
    b'{"model": "gemini-2.5-pro", "request": {"session_id": "\\ud800"}, "user_prompt_id": "p"}',
])  # fmt: skip
def test_odd_bodies_answer_as_json_loads(raw):
    obj = json.loads(raw)
    request = obj.get("request") if isinstance(obj.get("request"), dict) else {}
    info = CODE_ASSIST["generateContent"].parse_request(PATH, raw)
    assert info.model == "gemini-2.5-pro" and not info.malformed
    assert info.max_output_tokens == base.dig(request, "generationConfig", "maxOutputTokens")
    if "user_prompt_id" in obj:
        assert info.hints.session_id == base.str_or_none(request.get("session_id"))


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"model": ', b'"gemini-2.5-pro"'])
def test_a_malformed_body_is_malformed_only(raw):
    info = CODE_ASSIST["streamGenerateContent"].parse_request(PATH, raw)
    assert info.malformed and not info.stream and info.max_output_tokens is None
