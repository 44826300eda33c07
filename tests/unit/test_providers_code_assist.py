"""Gemini through Code Assist (cloudcode-pa.googleapis.com, Gemini CLI with a Google login)."""

from __future__ import annotations

import json
from pathlib import Path

from spendgate.metering import providers
from spendgate.metering.providers import gemini_code_assist as ca

WIRE = Path("/work/shared/fixtures/wire")
BODY = json.dumps({"model": "gemini-2.5-pro", "project": "p-1", "user_prompt_id": "u-1",
                   "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                               "generationConfig": {"maxOutputTokens": 321}, "session_id": "s" * 300}}).encode()


def test_routes():
    r = providers.route("cloudcode-pa.googleapis.com", "/v1internal:streamGenerateContent?alt=sse")
    assert (r.provider, r.endpoint, r.adapter) == ("gemini", "streamGenerateContent", ca.STREAM_GENERATE_CONTENT)
    r = providers.route("cloudcode-pa.googleapis.com", "/v1internal:generateContent")
    assert r.adapter is ca.GENERATE_CONTENT
    for path in ("/v1internal:loadCodeAssist", "/v1internal:countTokens", "/v1internal:retrieveUserQuota", "/"):
        assert providers.route("cloudcode-pa.googleapis.com", path).endpoint == "unmetered"
    assert any("cloudcode" in h for h in providers.allow_hosts_regexes(False))


def test_request_model_cap_and_session_from_the_body():
    info = ca.STREAM_GENERATE_CONTENT.parse_request("/v1internal:streamGenerateContent?alt=sse", BODY)
    assert (info.model, info.stream, info.max_output_tokens) == ("gemini-2.5-pro", True, 321)
    assert info.session_id == "s" * ca.SESSION_ID_CHARS  # client-sent: cut
    assert ca.GENERATE_CONTENT.parse_request("/v1internal:generateContent", b"not json").malformed


def test_wrapped_stream_and_body_use_gemini_usage_rules():
    chunks = [json.loads(line) for line in (WIRE / "gemini_stream.chunks.jsonl").read_text().splitlines() if line]
    wrapped = b"".join(b"data: " + json.dumps({"response": c, "traceId": "t"}).encode() + b"\r\n\r\n" for c in chunks)
    parser = ca.STREAM_GENERATE_CONTENT.stream_parser("/v1internal:streamGenerateContent?alt=sse")
    parser.feed(wrapped)
    plain = providers.route("generativelanguage.googleapis.com",
                            "/v1beta/models/m:streamGenerateContent?alt=sse").adapter.stream_parser(
        "/v1beta/models/m:streamGenerateContent?alt=sse")
    plain.feed(b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks))
    got, want = parser.result(), plain.result()
    assert got.usage == want.usage and got.usage is not None and got.usage_final
    whole = json.loads((WIRE / "gemini_generate_content.json").read_text())
    r = ca.GENERATE_CONTENT.parse_response(json.dumps({"response": whole}).encode())
    assert r.usage == providers.route("generativelanguage.googleapis.com", "/v1beta/models/m:generateContent"
                                      ).adapter.parse_response(json.dumps(whole).encode()).usage
