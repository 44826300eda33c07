"""WebSocket turns end to end: a real mitmdump with our addon, a real WebSocket client
(`websockets`), the fake provider speaking the Responses and Realtime sockets upstream.

One ledger row per turn (never one for the handshake), each with client, session and model; a
turn cut mid-stream is estimated; a turn at the cap is refused inside the socket with the error
event Codex reads, and the provider never sees it.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from websockets.sync.client import connect

from tests.support import OPENAI_KEY

MODEL = "gpt-5"
INPUT = "y" * 8000  # ~2000 tokens by the gateway's estimate, about what the fake bills


def policy(tmp_path, body: str):
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\ntimezone: UTC\n" + body)
    return p


def open_socket(gw, path: str = "/v1/responses", host: str = "api.openai.com", headers: dict | None = None):
    """A WebSocket to `host` through the gateway: CONNECT, then TLS with mitmproxy's CA."""
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += raw.recv(4096)
    assert reply.split(b" ")[1] == b"200", reply
    hdrs = {"Authorization": f"Bearer {OPENAI_KEY}", "originator": "codex_exec",
            "session_id": "sess-ws-1", "User-Agent": "codex_exec/0.171.0"}
    hdrs.update(headers or {})
    return connect(f"wss://{host}{path}", sock=raw, ssl=gw.websocket_ssl_context(), additional_headers=hdrs,
                   open_timeout=10, close_timeout=2, max_size=None)


def create(model: str = MODEL, scenario: str | None = None, **extra) -> str:
    msg = {"type": "response.create", "model": model, "instructions": "be brief",
           "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": INPUT}]}],
           "store": False, **extra}
    if scenario:
        msg["metadata"] = {"fake_scenario": scenario}
    return json.dumps(msg)


def events_until_end(ws, timeout: float = 10.0) -> list[dict]:
    """Events of one turn, up to its terminal event (or the socket's end)."""
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ev = json.loads(ws.recv(timeout=deadline - time.monotonic()))
        except Exception:
            return out
        out.append(ev)
        if ev.get("type") in ("response.completed", "response.incomplete", "response.failed", "error",
                              "response.done"):
            return out
    return out


def ws_messages(fake):
    return [r for r in fake.requests if r.method == "WS"]


def test_three_turns_one_cut_make_three_rows(gateway, fake_provider):
    with open_socket(gateway) as ws:
        for _ in range(2):
            ws.send(create())
            evs = events_until_end(ws)
            assert [e["type"] for e in evs][:2] == ["response.created", "response.in_progress"]
            assert evs[-1]["type"] == "response.completed"
            assert evs[-1]["response"]["usage"]["input_tokens"] == 2000  # passed on untouched
        ws.send(create(scenario="cut"))
        evs = events_until_end(ws)
        assert evs and evs[-1]["type"] == "response.output_text.delta"  # the provider went away
    rows = sorted(gateway.ledger(wait_for=3), key=lambda r: r["ts"])
    assert len(rows) == 3, rows  # one per turn, no row for the handshake
    for r in rows:
        assert r["endpoint"] == "responses.websocket"
        assert r["model"] == MODEL and r["client"] == "codex" and r["session_id"] == "sess-ws-1"
        assert r["status"] == 200 and r["stream"]
    ok, ok2, cut = rows
    for r in (ok, ok2):
        assert r["outcome"] == "ok" and not r["estimated"]
        assert (r["input_tokens"], r["cache_read_tokens"], r["output_tokens"], r["reasoning_tokens"]) == (
            2000, 500, 700, 250)
        assert float(r["cost_usd"]) > 0 and r["charged_usd"] == r["cost_usd"]
    assert cut["outcome"] == "estimated" and cut["estimated"]
    # estimated from the message size (4 bytes a token) and the deltas seen before the cut
    assert cut["input_tokens"] == -(-len(create(scenario="cut")) // 4) and cut["output_tokens"] > 0
    assert "before the response completed" in cut["note"]
    assert float(cut["charged_usd"]) > 0
    assert not [r for r in rows if r["status"] == 101]
    assert len(ws_messages(fake_provider)) == 3


def test_turn_at_the_cap_is_refused_inside_the_socket_and_never_forwarded(tmp_path, gateway_factory,
                                                                          fake_provider):
    # a turn costs ~$0.0089 at gpt-5 rates (2000 in / 500 cached / 700 out); admission reserves
    # ~$0.0126 (2056 input tokens by size, max_output_tokens 1000): the first fits, the second not
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 0.015}}\n")).start()
    with open_socket(gw) as ws:
        ws.send(create(max_output_tokens=1000))
        assert events_until_end(ws)[-1]["type"] == "response.completed"
        ws.send(create(max_output_tokens=1000))
        evs = events_until_end(ws)
        assert len(evs) == 1, evs
        err = evs[0]
        assert err["type"] == "error" and err["status"] == 429
        assert err["error"]["type"] == "usage_limit_reached"  # what Codex treats as final
        msg = err["error"]["message"]
        assert msg.startswith("spendgate: spend limit reached (daily budget of user tester")
        assert "spendgate request --amount" in msg
        assert err["headers"]["x-should-retry"] == "false"
        assert err["headers"]["x-codex-promo-message"] == msg
        assert isinstance(err["error"]["resets_at"], int)
        # the socket is still usable: the client decides to stop; a ping still goes through
        ws.ping().wait(5)
    sent = ws_messages(fake_provider)
    assert len(sent) == 1  # the refused response.create never reached the provider
    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    assert [r["outcome"] for r in rows] == ["ok", "blocked"]
    blocked = rows[1]
    assert blocked["status"] == 429 and float(blocked["charged_usd"]) == 0
    assert blocked["client"] == "codex" and blocked["session_id"] == "sess-ws-1" and blocked["model"] == MODEL


def test_chatgpt_codex_socket_is_metered(gateway, fake_provider):
    with open_socket(gateway, "/backend-api/codex/responses", host="chatgpt.com") as ws:
        ws.send(create(model="gpt-5-codex"))
        assert events_until_end(ws)[-1]["type"] == "response.completed"
    (row,) = gateway.ledger(wait_for=1)
    assert (row["provider"], row["model"], row["outcome"], row["output_tokens"]) == ("openai", "gpt-5-codex", "ok", 700)


def test_realtime_response_done_is_metered_with_the_model_from_the_url(gateway, fake_provider):
    with open_socket(gateway, "/v1/realtime?model=gpt-realtime", headers={"originator": "", "User-Agent": "rt"}) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
        ws.send(json.dumps({"type": "session.update", "session": {"instructions": "hi"}}))
        ws.send(json.dumps({"type": "response.create", "response": {"instructions": INPUT}}))
        evs = events_until_end(ws)
        assert evs[-1]["type"] == "response.done"
    (row,) = gateway.ledger(wait_for=1)
    assert row["endpoint"] == "realtime" and row["model"] == "gpt-realtime"
    assert (row["outcome"], row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == ("ok", 2000, 500, 700)


def test_handshake_refused_upstream_makes_no_row(gateway, fake_provider):
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus):
        open_socket(gateway, headers={"x-fake-scenario": "status:401"})
    time.sleep(0.5)
    assert gateway.ledger() == []


def test_official_openai_sdk_over_the_responses_socket(tmp_path, gateway_factory, fake_provider):
    """openai.OpenAI().responses.connect(): a metered turn, then the refusal as the SDK's typed error event."""
    import openai

    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 0.015}}\n")).start()
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    got = []
    options = {"proxy": gw.proxy_url, "ssl": gw.websocket_ssl_context()}
    with client.responses.connect(websocket_connection_options=options) as conn:
        for _ in range(2):
            conn.response.create(model=MODEL, input=INPUT, max_output_tokens=1000)
            for ev in conn:
                if ev.type in ("response.completed", "response.failed", "error"):
                    got.append(ev)
                    break
    done, refused = got
    assert done.type == "response.completed" and done.response.usage.output_tokens == 700
    assert refused.type == "error"
    assert refused.error.type == "insufficient_quota" and refused.error.code == "budget_exceeded"
    assert "spend limit reached (daily budget of user tester" in refused.error.message
    assert "spent of $0.0150;" in refused.error.message  # enough digits for the limit (money.py), not cents
    assert len(ws_messages(fake_provider)) == 1
    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    assert [(r["outcome"], r["client"], r["endpoint"]) for r in rows] == [
        ("ok", "openai-sdk", "responses.websocket"), ("blocked", "openai-sdk", "responses.websocket")]


def test_official_openai_sdk_realtime_metered_then_refused(tmp_path, gateway_factory, fake_provider):
    """openai.OpenAI().realtime.connect(): response.done metered; at the cap a typed error event."""
    import openai

    # a response costs $0.0174 at gpt-realtime text rates (2000 in / 500 cached / 700 out); the first
    # reserves ~$0.019 (its size, 700 output), the second ~$0.030 because the 2700 tokens of the
    # conversation so far count too: $0.0174 + $0.030 > $0.04 (by size alone it would fit)
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 0.04}}\n")).start()
    client = openai.OpenAI(api_key=OPENAI_KEY, max_retries=0)
    options = {"proxy": gw.proxy_url, "ssl": gw.websocket_ssl_context()}
    got = []
    with client.realtime.connect(model="gpt-realtime", websocket_connection_options=options) as conn:
        for _ in range(2):
            conn.response.create(response={"instructions": INPUT, "max_output_tokens": 700})
            for ev in conn:
                if ev.type in ("response.done", "error"):
                    got.append(ev)
                    break
    done, refused = got
    assert done.type == "response.done" and done.response.usage.output_tokens == 700
    assert refused.type == "error" and "spend limit reached (daily budget of user tester" in refused.error.message
    assert [r.json["type"] for r in ws_messages(fake_provider)] == ["response.create"]
    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    assert [(r["outcome"], r["endpoint"], r["model"]) for r in rows] == [
        ("ok", "realtime", "gpt-realtime"), ("blocked", "realtime", "gpt-realtime")]
    assert float(rows[0]["cost_usd"]) > 0 and rows[0]["client"] == "openai-sdk"
