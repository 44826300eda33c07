"""End-to-end metering: official SDKs -> real mitmdump + spendgate addon -> fake provider.

Every metered API is driven once plain and once content-encoded, and the ledger row is checked
field by field, including cost computed here by hand from published prices.

Published prices used (USD per million tokens):

* claude-sonnet-4-5 -- https://docs.claude.com/en/docs/about-claude/pricing (also
  https://www.anthropic.com/pricing#api): input $3, output $15, cache read $0.30,
  5-minute cache write $3.75, 1-hour cache write $6 (prompts <= 200k tokens).
* gpt-5 (and gpt-5-codex, same price) -- https://openai.com/api/pricing/ and
  https://platform.openai.com/docs/pricing: input $1.25, cached input $0.125, output $10.
* gemini-2.5-flash -- https://ai.google.dev/gemini-api/docs/pricing (paid tier, text):
  input $0.30, output (including thinking tokens) $2.50, context-cache read $0.03.
  genai-prices 0.2.3 bundles the same numbers ($0.3 in, $2.5 out, $0.03 cache read).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest

from tests.support import ANTHROPIC_KEY, CHATGPT_TOKEN, GEMINI_KEY, OPENAI_KEY, RAW_KEYS, wait_until
from tests.support.certs import CA_COMMON_NAME
from tests.support.fake_provider import DEFAULT_USAGE, ORIGIN_BODY, TEXT_PIECES

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

M = 1_000_000
TEXT = "".join(TEXT_PIECES)

# ---------------------------------------------------------------------------------------------
# prices (USD per token), see module docstring for sources
SONNET_45 = dict(inp=3.00 / M, out=15.00 / M, cache_read=0.30 / M, write_5m=3.75 / M, write_1h=6.00 / M)
GPT_5 = dict(inp=1.25 / M, cached=0.125 / M, out=10.00 / M)
GEMINI_25_FLASH = dict(inp=0.30 / M, out=2.50 / M, cache_read=0.03 / M)

# ---------------------------------------------------------------------------------------------
# expected normalized usage per API, derived from the fake's wire numbers (written out, not computed
# from the fake's table, so a change there is noticed)
assert DEFAULT_USAGE["anthropic"]["input_tokens"] == 1200
ANTHROPIC_USAGE = dict(input_tokens=1200 + 300 + 200 + 100, cache_read_tokens=300, cache_write_tokens=300,
                       cache_write_1h_tokens=100, output_tokens=450, reasoning_tokens=0, web_search_requests=0)
ANTHROPIC_COST = (1200 * SONNET_45["inp"] + 300 * SONNET_45["cache_read"] + 200 * SONNET_45["write_5m"]
                  + 100 * SONNET_45["write_1h"] + 450 * SONNET_45["out"])  # = 0.01179

CHAT_USAGE = dict(input_tokens=1600, cache_read_tokens=400, cache_write_tokens=0, cache_write_1h_tokens=0,
                  output_tokens=450, reasoning_tokens=120, web_search_requests=0)
CHAT_COST = (1600 - 400) * GPT_5["inp"] + 400 * GPT_5["cached"] + 450 * GPT_5["out"]  # = 0.00605

RESPONSES_USAGE = dict(input_tokens=2000, cache_read_tokens=500, cache_write_tokens=0, cache_write_1h_tokens=0,
                       output_tokens=700, reasoning_tokens=250, web_search_requests=0)
RESPONSES_COST = (2000 - 500) * GPT_5["inp"] + 500 * GPT_5["cached"] + 700 * GPT_5["out"]  # = 0.0089375

GEMINI_USAGE = dict(input_tokens=3000, cache_read_tokens=1000, cache_write_tokens=0, cache_write_1h_tokens=0,
                    output_tokens=600 + 200, reasoning_tokens=200, web_search_requests=0)
GEMINI_COST = (3000 - 1000) * GEMINI_25_FLASH["inp"] + 1000 * GEMINI_25_FLASH["cache_read"] \
    + 800 * GEMINI_25_FLASH["out"]  # = 0.00263

ROW_FIELDS = ("ts", "request_id", "provider", "endpoint", "model", "user", "key_fingerprint", "client",
              "session_id", "stream", "status", "outcome", "input_tokens", "cache_read_tokens",
              "cache_write_tokens", "cache_write_1h_tokens", "output_tokens", "reasoning_tokens",
              "web_search_requests", "cost_usd", "price_source", "latency_ms", "ttft_ms")

ENCODINGS = [None, "gzip"]


def scen(*flags: str | None) -> dict[str, str]:
    value = ",".join(f for f in flags if f)
    return {"x-fake-scenario": value} if value else {}


def only_row(gateway) -> dict:
    rows = gateway.ledger(wait_for=1)
    assert len(rows) == 1, rows
    return rows[0]


def check_row(row: dict, *, provider: str, endpoint: str, model: str, stream: bool, usage: dict | None,
              cost: float | None, raw_key: str | None, client: str | None = None, status: int = 200,
              outcome: str = "ok") -> None:
    missing = [f for f in ROW_FIELDS if f not in row]
    assert not missing, f"ledger row lacks {missing}: {row}"
    ts = dt.datetime.fromisoformat(row["ts"].replace("Z", "+00:00"))
    assert ts.utcoffset() == dt.timedelta(0), row["ts"]
    assert row["request_id"]
    got = {k: row[k] for k in ("provider", "endpoint", "model", "user", "stream", "status", "outcome")}
    assert got == dict(provider=provider, endpoint=endpoint, model=model, user="tester", stream=stream,
                       status=status, outcome=outcome), row
    if client is not None:
        assert row["client"] == client, row
    if raw_key is not None:
        assert isinstance(row["key_fingerprint"], str) and row["key_fingerprint"].startswith("sha256:"), row
        assert raw_key not in row["key_fingerprint"]
        assert row["key_fingerprint"] != f"sha256:{raw_key}"
    if usage is not None:
        assert {k: row[k] for k in usage} == usage, row
    if cost is None:
        assert row["cost_usd"] is None, row
    else:
        assert row["cost_usd"] == pytest.approx(cost, rel=1e-9), row
        assert row["price_source"], row
    assert isinstance(row["latency_ms"], (int, float)) and row["latency_ms"] >= 0, row
    if stream and outcome == "ok":
        assert isinstance(row["ttft_ms"], (int, float)) and 0 <= row["ttft_ms"] <= row["latency_ms"], row


def assert_upstream_saw(fake, host: str, route: str, encoding: str | None = None):
    reqs = fake.requests_to(host, route)
    assert reqs, f"fake provider never got {host}{route}; got {[(r.host, r.path) for r in fake.requests]}"
    return reqs[-1]


# ---------------------------------------------------------------------------------------------
# Anthropic


@pytest.mark.parametrize("enc", ENCODINGS)
def test_anthropic_messages_json(gateway, fake_provider, anthropic_client, enc):
    c = anthropic_client()
    msg = c.messages.create(model="claude-sonnet-4-5", max_tokens=100,
                            messages=[{"role": "user", "content": "hi"}], extra_headers=scen(enc))
    assert msg.content[0].text == TEXT
    assert msg.usage.input_tokens == 1200
    assert_upstream_saw(fake_provider, "api.anthropic.com", "/v1/messages")
    check_row(only_row(gateway), provider="anthropic", endpoint="messages", model="claude-sonnet-4-5",
              stream=False, usage=ANTHROPIC_USAGE, cost=ANTHROPIC_COST, raw_key=ANTHROPIC_KEY,
              client="anthropic-sdk")


@pytest.mark.parametrize("enc,extra", [(None, None), ("gzip", None), ("br", None), (None, "input_grows")])
def test_anthropic_messages_stream(gateway, fake_provider, anthropic_client, enc, extra):
    c = anthropic_client()
    with c.messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                           messages=[{"role": "user", "content": "hi"}], extra_headers=scen(enc, extra)) as s:
        final = s.get_final_message()
    assert final.content[0].text == TEXT
    assert final.usage.input_tokens == 1200 and final.usage.output_tokens == 450
    check_row(only_row(gateway), provider="anthropic", endpoint="messages", model="claude-sonnet-4-5",
              stream=True, usage=ANTHROPIC_USAGE, cost=ANTHROPIC_COST, raw_key=ANTHROPIC_KEY,
              client="anthropic-sdk")


def test_anthropic_messages_query_string_and_web_search(gateway, fake_provider, anthropic_client):
    """Claude Code sends /v1/messages?beta=true; server_tool_use web searches are billed $10/1k."""
    c = anthropic_client()
    with c.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                           extra_headers=scen("web_search:2", "input_grows"), extra_query={"beta": "true"}) as s:
        final = s.get_final_message()
    assert final.usage.server_tool_use.web_search_requests == 2
    assert fake_provider.requests[-1].path == "/v1/messages?beta=true"
    check_row(only_row(gateway), provider="anthropic", endpoint="messages", model="claude-sonnet-4-5",
              stream=True, usage={**ANTHROPIC_USAGE, "web_search_requests": 2},
              cost=ANTHROPIC_COST + 2 * 10.0 / 1000, raw_key=ANTHROPIC_KEY, client="anthropic-sdk")


def test_anthropic_count_tokens(gateway, fake_provider, anthropic_client):
    c = anthropic_client()
    n = c.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert n.input_tokens == DEFAULT_USAGE["count_tokens"]["input_tokens"] == 2345
    row = only_row(gateway)
    # count_tokens is free: cost 0 whatever the gateway records as tokens
    check_row(row, provider="anthropic", endpoint="count_tokens", model="claude-sonnet-4-5", stream=False,
              usage=None, cost=0.0, raw_key=ANTHROPIC_KEY, client="anthropic-sdk")
    # counting is not consuming: no tokens are recorded as used
    assert row["output_tokens"] == 0 and row["input_tokens"] == 0 and row["outcome"] == "ok"


# ---------------------------------------------------------------------------------------------
# OpenAI chat completions


@pytest.mark.parametrize("enc", ENCODINGS)
def test_openai_chat_json(gateway, fake_provider, openai_client, enc):
    c = openai_client()
    r = c.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}],
                                  extra_headers=scen(enc))
    assert r.choices[0].message.content == TEXT
    check_row(only_row(gateway), provider="openai", endpoint="chat.completions", model="gpt-5", stream=False,
              usage=CHAT_USAGE, cost=CHAT_COST, raw_key=OPENAI_KEY, client="openai-sdk")


@pytest.mark.parametrize("enc", ENCODINGS)
def test_openai_chat_stream_client_did_not_ask_usage(gateway, fake_provider, openai_client, enc):
    """The gateway must add stream_options.include_usage upstream, and strip the usage chunk
    (and the `usage: null` fields) so the client sees exactly what it asked for."""
    c = openai_client()
    chunks = list(c.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, extra_headers=scen(enc)))
    up = assert_upstream_saw(fake_provider, "api.openai.com", "/v1/chat/completions")
    assert up.json["stream"] is True
    assert (up.json.get("stream_options") or {}).get("include_usage") is True, up.json
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == TEXT
    assert all(ch.choices for ch in chunks), "client got a usage-only chunk it never asked for"
    assert all(ch.usage is None for ch in chunks)
    check_row(only_row(gateway), provider="openai", endpoint="chat.completions", model="gpt-5", stream=True,
              usage=CHAT_USAGE, cost=CHAT_COST, raw_key=OPENAI_KEY, client="openai-sdk")


def test_openai_chat_stream_client_asked_usage(gateway, fake_provider, openai_client):
    c = openai_client()
    chunks = list(c.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}],
                                            stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == 1600 and last.usage.completion_tokens == 450
    check_row(only_row(gateway), provider="openai", endpoint="chat.completions", model="gpt-5", stream=True,
              usage=CHAT_USAGE, cost=CHAT_COST, raw_key=OPENAI_KEY, client="openai-sdk")


# ---------------------------------------------------------------------------------------------
# OpenAI Responses + Codex (chatgpt.com)


@pytest.mark.parametrize("enc", ENCODINGS)
def test_openai_responses_json(gateway, fake_provider, openai_client, enc):
    c = openai_client()
    r = c.responses.create(model="gpt-5", input="hi", extra_headers=scen(enc))
    assert r.output_text == TEXT
    check_row(only_row(gateway), provider="openai", endpoint="responses", model="gpt-5", stream=False,
              usage=RESPONSES_USAGE, cost=RESPONSES_COST, raw_key=OPENAI_KEY, client="openai-sdk")


@pytest.mark.parametrize("enc", ENCODINGS)
def test_openai_responses_stream(gateway, fake_provider, openai_client, enc):
    c = openai_client()
    events = list(c.responses.create(model="gpt-5", input="hi", stream=True, extra_headers=scen(enc)))
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT
    check_row(only_row(gateway), provider="openai", endpoint="responses", model="gpt-5", stream=True,
              usage=RESPONSES_USAGE, cost=RESPONSES_COST, raw_key=OPENAI_KEY, client="openai-sdk")


def _codex_headers(enc):
    # what Codex CLI (Rust) sends with a ChatGPT login
    return {
        "authorization": f"Bearer {CHATGPT_TOKEN}",
        "originator": "codex_cli_rs",
        "user-agent": "codex_cli_rs/0.46.0 (Ubuntu 24.4.0; x86_64) xterm-256color",
        "chatgpt-account-id": "00000000-0000-4000-8000-000000000000",
        "session_id": "0199c5f3-5b5e-7c52-9a6f-3f6c0a0f7a11",
        "openai-beta": "responses=experimental",
        "accept": "text/event-stream",
        **scen(enc),
    }


@pytest.mark.parametrize("enc", ENCODINGS)
def test_codex_chatgpt_responses_stream(gateway, fake_provider, http_client, enc):
    hc = http_client()
    body = {"model": "gpt-5-codex", "instructions": "You are Codex.", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [], "tool_choice": "auto", "parallel_tool_calls": False, "reasoning": {"effort": "medium"},
        "store": False, "stream": True, "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199c5f3-5b5e-7c52-9a6f-3f6c0a0f7a11"}
    with hc.stream("POST", "https://chatgpt.com/backend-api/codex/responses", json=body,
                   headers=_codex_headers(enc)) as resp:
        assert resp.status_code == 200
        text = resp.read().decode()
    assert "event: response.completed" in text
    assert_upstream_saw(fake_provider, "chatgpt.com", "/backend-api/codex/responses")
    row = only_row(gateway)
    # ChatGPT login: covered by the ChatGPT plan's seat, so nothing is invoiced per token; the list
    # price is kept as notional_usd (tests/e2e/test_subscriptions_e2e.py)
    check_row(row, provider="openai", endpoint="responses", model="gpt-5-codex", stream=True,
              usage=RESPONSES_USAGE, cost=0.0, raw_key=CHATGPT_TOKEN, client="codex")
    assert (row["billing_basis"], row["credential"]) == ("subscription", "chatgpt_login")
    assert row["notional_usd"] == pytest.approx(RESPONSES_COST, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Gemini (raw HTTP through the proxy)

GEMINI_BASE = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def _gemini_headers(enc):
    return {"x-goog-api-key": GEMINI_KEY, "content-type": "application/json", **scen(enc)}


@pytest.mark.parametrize("enc", ENCODINGS)
def test_gemini_generate_content(gateway, fake_provider, http_client, enc):
    r = http_client().post(f"{GEMINI_BASE}:generateContent", json=GEMINI_BODY, headers=_gemini_headers(enc))
    assert r.status_code == 200
    assert r.json()["usageMetadata"]["thoughtsTokenCount"] == 200
    check_row(only_row(gateway), provider="gemini", endpoint="generateContent", model="gemini-2.5-flash",
              stream=False, usage=GEMINI_USAGE, cost=GEMINI_COST, raw_key=GEMINI_KEY)


@pytest.mark.parametrize("enc", ENCODINGS)
def test_gemini_stream_sse(gateway, fake_provider, http_client, enc):
    with http_client().stream("POST", f"{GEMINI_BASE}:streamGenerateContent?alt=sse", json=GEMINI_BODY,
                              headers=_gemini_headers(enc)) as r:
        assert r.status_code == 200
        body = r.read().decode()
    events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == TEXT
    check_row(only_row(gateway), provider="gemini", endpoint="streamGenerateContent", model="gemini-2.5-flash",
              stream=True, usage=GEMINI_USAGE, cost=GEMINI_COST, raw_key=GEMINI_KEY)


@pytest.mark.parametrize("enc", ENCODINGS)
def test_gemini_stream_json_array(gateway, fake_provider, http_client, enc):
    with http_client().stream("POST", f"{GEMINI_BASE}:streamGenerateContent", json=GEMINI_BODY,
                              headers=_gemini_headers(enc)) as r:
        assert r.status_code == 200
        body = r.read().decode()
    arr = json.loads(body)
    assert arr[-1]["usageMetadata"]["candidatesTokenCount"] == 600
    check_row(only_row(gateway), provider="gemini", endpoint="streamGenerateContent", model="gemini-2.5-flash",
              stream=True, usage=GEMINI_USAGE, cost=GEMINI_COST, raw_key=GEMINI_KEY)


# ---------------------------------------------------------------------------------------------
# outcomes other than "ok"


def test_unknown_model_is_unpriced_not_free(gateway, fake_provider, anthropic_client):
    c = anthropic_client()
    c.messages.create(model="claude-imaginary-9-9", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    check_row(only_row(gateway), provider="anthropic", endpoint="messages", model="claude-imaginary-9-9",
              stream=False, usage=ANTHROPIC_USAGE, cost=None, raw_key=ANTHROPIC_KEY, client="anthropic-sdk",
              outcome="unpriced")


def test_models_list_is_unmetered(gateway, fake_provider, openai_client):
    c = openai_client()
    assert [m.id for m in c.models.list()] == ["gpt-5", "gpt-4.1"]
    row = only_row(gateway)
    assert row["outcome"] == "unmetered" and row["endpoint"] == "unmetered", row
    assert row["status"] == 200 and row["user"] == "tester", row
    assert row["provider"] == "openai", row
    assert not row["cost_usd"], row
    assert row["key_fingerprint"] is None or (row["key_fingerprint"].startswith("sha256:")
                                              and OPENAI_KEY not in row["key_fingerprint"]), row


@pytest.mark.parametrize("which", ["anthropic", "openai_chat"])
def test_cut_stream_is_estimated(gateway, fake_provider, anthropic_client, openai_client, which):
    with pytest.raises(Exception):
        if which == "anthropic":
            with anthropic_client().messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                                    messages=[{"role": "user", "content": "hi"}],
                                                    extra_headers=scen("cut")) as s:
                for _ in s:
                    pass
        else:
            for _ in openai_client().chat.completions.create(
                    model="gpt-5", messages=[{"role": "user", "content": "hi"}], stream=True,
                    extra_headers=scen("cut")):
                pass
    row = only_row(gateway)
    assert row["outcome"] == "estimated", row
    assert row["stream"] is True, row
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0, row
    if which == "anthropic":
        # message_start carried the full input side; only output had to be estimated
        assert row["input_tokens"] == ANTHROPIC_USAGE["input_tokens"], row
        assert row["cache_read_tokens"] == 300 and row["cache_write_tokens"] == 300, row
    assert row["cost_usd"] is not None and row["cost_usd"] > 0, row


@pytest.mark.parametrize("enc", [None, "gzip"])
def test_a_long_stream_read_in_batches_reaches_the_client_whole_and_is_counted_exactly(
        gateway, fake_provider, anthropic_client, enc):
    """~400 KB of deltas (non-ASCII, quotes and escapes among them): the tap reads them in 64 KB
    batches after mitmproxy sent them (streams.AfterForwarding). The client gets every byte in
    order, and a stream cut before its last delta is estimated from exactly the characters that
    came through, so no batch was lost, read twice or read out of order."""
    pieces = [f" wörd {i}" if i % 3 else f' "code" {i}\n' for i in range(3000)]
    with anthropic_client().messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                            messages=[{"role": "user", "content": "hi"}],
                                            extra_headers=scen(enc, "long_output")) as s:
        final = s.get_final_message()
    assert final.content[0].text == "".join(pieces)
    check_row(only_row(gateway), provider="anthropic", endpoint="messages", model="claude-sonnet-4-5",
              stream=True, usage=ANTHROPIC_USAGE, cost=ANTHROPIC_COST, raw_key=ANTHROPIC_KEY)
    got = []
    with pytest.raises(Exception):
        with anthropic_client().messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                                messages=[{"role": "user", "content": "hi"}],
                                                extra_headers=scen(enc, "long_output", "cut_late")) as s:
            got.extend(s.text_stream)
    assert "".join(got) == "".join(pieces[:-1])
    row = [r for r in gateway.ledger(wait_for=2) if r["outcome"] == "estimated"][0]
    assert row["output_tokens"] == -(-len("".join(pieces[:-1])) // 4), row  # meter.CHARS_PER_TOKEN


def test_anthropic_midstream_error_is_recorded(gateway, fake_provider, anthropic_client):
    import anthropic

    with pytest.raises(anthropic.APIStatusError):
        with anthropic_client().messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                                messages=[{"role": "user", "content": "hi"}],
                                                extra_headers=scen("error_midstream")) as s:
            for _ in s:
                pass
    row = only_row(gateway)
    assert row["provider"] == "anthropic" and row["endpoint"] == "messages" and row["stream"] is True, row
    assert row["status"] == 200, row  # the HTTP status was 200; the error came inside the stream
    # the provider consumed the prompt before failing: recorded, estimated, with the error named
    assert row["outcome"] == "estimated" and row["estimated"] is True, row
    assert row["note"] == "api_error", row  # the type the fake sends, as Anthropic does ("Overloaded")
    assert row["input_tokens"] == ANTHROPIC_USAGE["input_tokens"], row  # known from message_start


def test_openai_responses_midstream_error_is_recorded(gateway, fake_provider, openai_client):
    import openai

    with pytest.raises(openai.APIError):
        for _ in openai_client().responses.create(model="gpt-5", input="hi", stream=True,
                                                  extra_headers=scen("error_midstream")):
            pass
    row = only_row(gateway)
    assert row["endpoint"] == "responses" and row["stream"] is True, row
    assert row["outcome"] == "estimated" and row["note"], row


@pytest.mark.parametrize("status", [429, 500])
def test_upstream_error_status(gateway, fake_provider, anthropic_client, status):
    import anthropic

    with pytest.raises(anthropic.APIStatusError) as ei:
        anthropic_client().messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                           messages=[{"role": "user", "content": "hi"}],
                                           extra_headers=scen(f"status:{status}"))
    assert ei.value.status_code == status
    row = only_row(gateway)
    assert (row["provider"], row["endpoint"], row["status"], row["outcome"]) == \
        ("anthropic", "messages", status, "upstream_error"), row
    assert not row["cost_usd"], row


# ---------------------------------------------------------------------------------------------
# transport & secrets


def _read_http_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_non_provider_host_is_tunnelled_not_decrypted(gateway, fake_provider):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    ctx = ssl.create_default_context(cafile=fake_provider.ca_file)
    ctx.load_verify_locations(gateway.ca_file)  # trust both, so we can see who actually signed
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as raw:
        raw.sendall(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
        head = _read_http_head(raw)
        assert head.split(b"\r\n")[0].split(b" ")[1] == b"200", head
        with ctx.wrap_socket(raw, server_hostname="example.test") as tls:
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.sendall(b"GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert issuer == CA_COMMON_NAME, f"client saw a certificate issued by {issuer!r}: the proxy decrypted it"
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(ORIGIN_BODY), data
    assert fake_provider.requests_to("example.test", "/")


def test_sdk_uses_env_proxy_and_ca(gateway, fake_provider):
    """HTTPS_PROXY + SSL_CERT_FILE alone are enough for the SDK (as a user would set them)."""
    code = (
        "import anthropic, warnings; warnings.simplefilter('ignore');"
        f"c = anthropic.Anthropic(api_key={ANTHROPIC_KEY!r}, max_retries=0);"
        "m = c.messages.create(model='claude-sonnet-4-5', max_tokens=10, "
        "messages=[{'role': 'user', 'content': 'hi'}]); print(m.usage.output_tokens)"
    )
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(gateway.env())
    cp = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "450"
    check_row(only_row(gateway), provider="anthropic", endpoint="messages", model="claude-sonnet-4-5",
              stream=False, usage=ANTHROPIC_USAGE, cost=ANTHROPIC_COST, raw_key=ANTHROPIC_KEY,
              client="anthropic-sdk")


def test_raw_keys_never_stored(gateway, fake_provider, anthropic_client, openai_client, http_client):
    anthropic_client().messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                       messages=[{"role": "user", "content": "hi"}])
    with anthropic_client().messages.stream(model="claude-sonnet-4-5", max_tokens=10,
                                            messages=[{"role": "user", "content": "hi"}]) as s:
        s.get_final_message()
    oc = openai_client()
    oc.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    list(oc.responses.create(model="gpt-5", input="hi", stream=True))
    hc = http_client()
    hc.post(f"{GEMINI_BASE}:generateContent", json=GEMINI_BODY, headers=_gemini_headers(None))
    with hc.stream("POST", "https://chatgpt.com/backend-api/codex/responses",
                   json={"model": "gpt-5-codex", "input": [], "stream": True},
                   headers=_codex_headers(None)) as r:
        r.read()
    rows = gateway.ledger(wait_for=6)
    fps = {r["key_fingerprint"] for r in rows}
    assert len(fps) == 4, fps  # four distinct credentials, four distinct fingerprints
    # the upstream did receive the real keys (the gateway must pass them through untouched)
    seen = " ".join(f"{r.headers.get('authorization', '')} {r.headers.get('x-api-key', '')} "
                    f"{r.headers.get('x-goog-api-key', '')}" for r in fake_provider.requests)
    for key in RAW_KEYS:
        assert key in seen
    gateway.stop()
    blobs = {p: p.read_bytes() for p in Path(gateway.tmp).rglob("*") if p.is_file()}
    assert any(p.name == "ledger.duckdb" for p in blobs), list(blobs)
    for p, data in blobs.items():
        for key in RAW_KEYS:
            assert key.encode() not in data, f"raw key {key[:8]}... found in {p}"
            assert key.encode("utf-16-le") not in data, f"raw key {key[:8]}... (utf-16) found in {p}"


# ---------------------------------------------------------------------------------------------
# harness self-check: the fake provider alone (no gateway), so a failure above can be attributed


def test_fake_provider_speaks_the_real_wire_formats(fake_provider):
    import anthropic
    import httpx2
    import openai

    hc = httpx2.Client(proxy=fake_provider.url, verify=ssl.create_default_context(cafile=fake_provider.ca_file),
                       trust_env=False, timeout=15)
    try:
        a = anthropic.Anthropic(api_key="sk-ant-direct", http_client=hc, max_retries=0)
        with a.messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                               extra_headers=scen("gzip", "input_grows")) as s:
            events = [e.type for e in s]
            final = s.get_final_message()
        assert events[0] == "message_start" and "message_delta" in events and events[-1] == "message_stop"
        assert final.usage.input_tokens == 1200  # message_delta replaced message_start's 200
        assert final.usage.cache_creation.ephemeral_1h_input_tokens == 100
        o = openai.OpenAI(api_key="sk-direct", http_client=hc, max_retries=0)
        plain = list(o.chat.completions.create(model="gpt-5", messages=[], stream=True))
        assert all(ch.choices and ch.usage is None for ch in plain)
        with_usage = list(o.chat.completions.create(model="gpt-5", messages=[], stream=True,
                                                    stream_options={"include_usage": True}))
        assert with_usage[-1].choices == [] and with_usage[-1].usage.prompt_tokens_details.cached_tokens == 400
        r = hc.post(f"{GEMINI_BASE}:streamGenerateContent", json=GEMINI_BODY, headers=scen("br"))
        assert r.headers["content-encoding"] == "br"
        arr = json.loads(r.text)
        assert [c["usageMetadata"]["candidatesTokenCount"] for c in arr][-1] == 600
        assert all(c["usageMetadata"]["thoughtsTokenCount"] == 200 for c in arr)
        raw = hc.post(f"{GEMINI_BASE}:streamGenerateContent", json=GEMINI_BODY).content
        assert raw.startswith(b"[{") and b"\n,\r\n{" in raw and raw.endswith(b"\n]")
        assert hc.get("https://example.test/").content == ORIGIN_BODY
        assert fake_provider.connects[0] == "api.anthropic.com:443"
    finally:
        hc.close()


def test_a_client_that_leaves_before_the_answer_is_still_charged(gateway, fake_provider):
    """Tenth review (T5): the request went upstream, then the client hung up before the first
    byte of the answer. The provider ran it all the same: the row is estimated, never a free
    `upstream_error`."""
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "x" * 4000}]}
    with gateway.http_client() as hc:
        with pytest.raises(httpx2.ReadTimeout):  # the client gives up (and closes) after 0.4 s
            hc.post("https://api.anthropic.com/v1/messages", json=body, timeout=0.4,
                    headers={"x-api-key": "sk-ant-leaver", "anthropic-version": "2023-06-01", **scen("think")})
    row = only_row(gateway)
    assert (row["outcome"], row["estimated"]) == ("estimated", True), row
    assert row["input_tokens"] >= 1000 and Decimal(str(row["charged_usd"])) > 0, row
    assert "the client left" in row["note"], row


def test_client_gone_mid_stream_is_recorded_with_an_estimate(gateway, fake_provider, anthropic_client):
    """The agent is killed (Ctrl-C) while the answer streams: the row is still written."""
    with anthropic_client().messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                            messages=[{"role": "user", "content": "hi"}],
                                            extra_headers=scen("slow", "big_output")) as s:
        for i, _ in enumerate(s):
            if i == 5:
                break  # leaving the block closes the HTTP response: the client hangs up
    row = only_row(gateway)
    assert row["outcome"] == "estimated" and row["estimated"] is True and row["stream"] is True, row
    # message_start told us the whole input side; output is estimated from the text seen so far
    assert row["input_tokens"] == ANTHROPIC_USAGE["input_tokens"], row
    assert 0 < row["output_tokens"] < ANTHROPIC_USAGE["output_tokens"], row
    assert row["cost_usd"] > 0 and row["note"], row


def test_rows_are_recorded_on_the_proxys_event_loop(gateway, fake_provider, anthropic_client):
    """Issue 18, twenty-eighth part: with in-memory counters the meter's batches run on mitmproxy's
    event loop (its start-up line says so), and the row is the one the worker thread would write."""
    msg = anthropic_client().messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                             messages=[{"role": "user", "content": "hi"}])
    assert msg.usage.input_tokens == 1200
    # the line is logged once the gateway runs, which may be just after its port answers
    assert wait_until(lambda: "rows recorded on the event loop" in gateway.log_text(), timeout=10)
    check_row(only_row(gateway), provider="anthropic", endpoint="messages", model="claude-sonnet-4-5",
              stream=False, usage=ANTHROPIC_USAGE, cost=ANTHROPIC_COST, raw_key=ANTHROPIC_KEY,
              client="anthropic-sdk")
