"""WebSocket turns without mitmproxy: SocketSession over a real Gateway (real DuckDB), fed the
real wire recordings one event per message; and the refusal shapes each client treats as final."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.budgets import refusal
from spendgate.budgets.book import Budget
from spendgate.gateway import Gateway, Settings
from spendgate.metering import providers
from spendgate.metering import websocket as ws
from spendgate.reports.queries import ledger as ledger_rows
from tests.support.wire import wire_bytes

HEADERS = {"authorization": "Bearer sk-unit-ws-secret", "originator": "codex_exec", "session_id": "s-1",
           "upgrade": "websocket"}


def make(tmp_path: Path, policy: str = "") -> Gateway:
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\n" + policy)
    return Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=-1, reload_interval=0))


def session(gw: Gateway, host="api.openai.com", path="/v1/responses") -> ws.SocketSession:
    route = ws.socket_route(providers.route(host, path))
    assert route is not None
    return ws.SocketSession(gw.meter, route, host, path, HEADERS)


def recorded_events() -> list[bytes]:
    """codex_cli_responses_stream.sse as WebSocket messages: one JSON event each."""
    text = wire_bytes("codex_cli_responses_stream.sse").decode()
    return [line[6:].encode() for line in text.splitlines() if line.startswith("data: ")]


def create(model="gpt-5-codex", **extra) -> bytes:
    return json.dumps({"type": "response.create", "model": model, "input": [{"role": "user", "content": "hi"}],
                       **extra}).encode()


def rows(gw: Gateway) -> list[dict]:
    gw.meter.flush()
    return sorted(ledger_rows(gw.ledger.cursor(), 100), key=lambda r: r["ts"])


def test_upgrade_and_routes():
    assert ws.is_upgrade({"upgrade": "WebSocket"}) and not ws.is_upgrade({})
    assert ws.socket_route(providers.route("api.openai.com", "/v1/responses")).endpoint == "responses.websocket"
    assert ws.socket_route(providers.route("chatgpt.com", "/backend-api/codex/responses")).endpoint == \
        "responses.websocket"
    assert ws.socket_route(providers.route("api.openai.com", "/v1/realtime?model=gpt-realtime")).endpoint == "realtime"
    assert ws.socket_route(providers.route("api.anthropic.com", "/v1/messages")) is None  # not a socket API
    assert ws.socket_route(providers.route("api.openai.com", "/v1/models")) is None
    assert ws.event_type(b'{"type":"response.create","model":"x"}') == "response.create"
    assert ws.event_type(b"not json") is None
    # type not first (pretty-printed, other key order): read properly, never a nested type
    assert ws.event_type(b'{"item": {"type": "message"}, "type": "response.output_item.done"}') == \
        "response.output_item.done"
    assert ws.event_type(wire_bytes("openai_realtime_response_done.json")) == "response.done"
    assert ws.event_type(b'{"item": {"type": "message"}}') is None


def test_only_a_bodiless_version_13_get_is_a_handshake():
    """Forty-second review: the Upgrade header alone made any request a 'handshake' whose budget
    was skipped. mitmproxy carries a connection on as a WebSocket only for a version-13 request."""
    h = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13", "sec-websocket-key": "k"}
    assert ws.is_handshake("GET", h, b"") and ws.is_handshake("get", h, None)
    assert not ws.is_handshake("POST", h, b"")  # a model call, whatever it says about upgrading
    assert not ws.is_handshake("GET", h, b'{"model": "gpt-5"}')  # a body is a call, not a handshake
    assert not ws.is_handshake("GET", {**h, "sec-websocket-version": "8"}, b"")
    assert not ws.is_handshake("GET", {**h, "sec-websocket-version": "13, 13"}, b"")  # folded as mitmproxy folds
    assert not ws.is_handshake("GET", {k: v for k, v in h.items() if k != "sec-websocket-version"}, b"")
    assert not ws.is_handshake("GET", {**h, "upgrade": "h2c"}, b"")
    # routed with its method: fetching a stored Response is charged as HTTP, never a socket
    assert ws.socket_route(providers.route("api.openai.com", "/v1/responses/resp_1", "GET")) is None
    assert ws.socket_route(providers.route("api.openai.com", "/v1/responses", "GET")).endpoint == "responses.websocket"
    assert ws.socket_route(providers.route("api.openai.com", "/v1/realtime?model=gpt-realtime", "POST")) is None


def test_a_compressed_request_body_is_decoded_on_the_loop_only_while_small():
    """Forty-second review: a tiny body that decodes to megabytes is decoded and read on a worker."""
    import gzip
    import sys

    from spendgate.metering.streams import DecodedTooLarge

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "addons"))
    import gateway as addon  # addons/gateway.py

    small = json.dumps({"model": "gpt-5", "input": "hi"}).encode()
    assert addon._decoded_on_loop(gzip.compress(small), "gzip", 10**9) == small
    assert addon._decoded_on_loop(b"garbage", "gzip", 10**9) is None  # unreadable: refused as before
    grows = gzip.compress(b"a" * (addon.DECODED_ON_LOOP_BYTES + 1))
    assert len(grows) < addon.DECODE_ON_LOOP_BYTES
    with pytest.raises(DecodedTooLarge):  # small on the wire, large decoded: the worker's
        addon._decoded_on_loop(grows, "gzip", 10**9)
    with pytest.raises(DecodedTooLarge):  # large on the wire: the worker's, as before
        addon._decoded_on_loop(os.urandom(addon.DECODE_ON_LOOP_BYTES + 1), "gzip", 10**9)
    with pytest.raises(DecodedTooLarge):  # past the gateway's limit: too large wherever it is decoded
        addon._decode_and_read(None, None, "/v1/responses", {}, gzip.compress(small), "gzip", len(small) - 1, ())


def test_a_large_body_admission_may_rewrite_is_admitted_and_encoded_off_the_loop(tmp_path):
    """Forty-second review, follow-up: a step-down re-reads the body whole and a rewrite of a
    compressed body is compressed again, so a large body's admission runs on a worker thread
    when either may happen; otherwise, and for small bodies, it stays a direct call."""
    import gzip
    import sys
    from types import SimpleNamespace

    from mitmproxy.test import taddons, tflow

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "addons"))
    import gateway as addon  # addons/gateway.py

    step = "step_down:\n  - {scope: defaults, at: 1, window: day, models: {'gpt-4.1': gpt-4.1-mini}}\n"
    for policy, big, off_loop in (("", True, False), (step, False, False), (step, True, True)):
        where = tmp_path / f"g{len(policy)}{big}"
        where.mkdir()
        gw = make(where, "defaults: {user: {day: 100}}\n" + policy)
        gate = addon.SpendGate()
        gate.gateway = gw
        try:
            with taddons.context(gate):
                flow = tflow.tflow()
                flow.request.host, flow.request.port, flow.request.method = "api.openai.com", 443, "POST"
                flow.request.path = "/v1/chat/completions"
                text = "a" * (addon.DECODED_ON_LOOP_BYTES + 1 if big else 10)
                flow.request.content = json.dumps({"model": "gpt-4.1", "messages": [
                    {"role": "user", "content": text}]}).encode()
                gate.requestheaders(flow)
                pending = gate.request(flow)
                assert (pending is not None) == off_loop, (policy, big)
                if pending is not None:
                    asyncio_run(pending)
                assert flow.response is None and flow.metadata[addon.META].request.model == "gpt-4.1"
        finally:
            gw.close()
    # the rewritten body, encoded as the request came, on the worker
    ex = SimpleNamespace(request=SimpleNamespace(rewritten_body=b'{"model":"m"}'))
    gw = SimpleNamespace(admission=SimpleNamespace(admit=lambda ex, path, body: None))
    answer, encoded = addon._admit_and_encode(gw, ex, "/v1/chat/completions", b"{}", "gzip")
    assert answer is None and gzip.decompress(encoded) == b'{"model":"m"}'
    assert addon._admit_and_encode(gw, ex, "/", b"{}", "") == (None, None)  # nothing to encode: as sent


def asyncio_run(awaitable) -> None:
    import asyncio

    async def wait() -> None:
        await awaitable

    asyncio.run(wait())


def test_recorded_codex_stream_makes_one_exact_row(tmp_path):
    gw = make(tmp_path)
    try:
        s = session(gw)
        turn = s.client_message(create())
        assert turn is not None and gw.admission.admit(turn.exchange) is None
        events = recorded_events()
        final = json.loads(events[-1])
        assert final["type"] == "response.completed"
        for e in events:
            s.server_message(e)
        assert not s.open
        (row,) = rows(gw)
        usage = final["response"]["usage"]
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
            usage["input_tokens"], usage["input_tokens_details"]["cached_tokens"], usage["output_tokens"])
        assert (row["endpoint"], row["outcome"], row["model"], row["client"], row["session_id"]) == (
            "responses.websocket", "ok", final["response"]["model"], "codex", "s-1")
        assert row["stream"] and row["status"] == 200 and Decimal(str(row["charged_usd"])) > 0
    finally:
        gw.close()


def test_non_request_messages_and_garbage_make_no_turn(tmp_path):
    gw = make(tmp_path)
    try:
        s = session(gw)
        for msg in (b'{"type":"response.processed","response_id":"r"}', b"\xff\xfe", b"[1,2]", b""):
            assert s.client_message(msg) is None
        s.server_message(b"garbage")
        assert s.close() == 0 and rows(gw) == []
        # a response nobody asked for (a request we did not read as a turn) is metered, not ignored
        s.server_message(b'{"type":"response.created","response":{}}')
        assert s.close() == 1 and len(rows(gw)) == 1
    finally:
        gw.close()


def test_cut_turn_is_estimated_and_error_turn_not_billed(tmp_path):
    gw = make(tmp_path)
    try:
        s = session(gw)
        t1 = s.client_message(create())
        gw.admission.admit(t1.exchange)
        for e in recorded_events()[:8]:  # created, in_progress, some reasoning deltas
            s.server_message(e)
        t2_events = [b'{"type":"error","status":429,"error":{"type":"usage_limit_reached","message":"x"}}']
        assert s.close("websocket closed") == 1
        s2 = session(gw)
        t2 = s2.client_message(create())
        gw.admission.admit(t2.exchange)
        for e in t2_events:
            s2.server_message(e)
        cut, err = rows(gw)
        assert cut["outcome"] == "estimated" and cut["estimated"] and cut["output_tokens"] > 0
        assert "websocket closed before the response completed" in cut["note"]
        assert (err["outcome"], err["status"], Decimal(str(err["charged_usd"]))) == ("upstream_error", 429, 0)
    finally:
        gw.close()


def test_refused_turn_is_a_blocked_row_and_the_event_carries_the_http_refusal(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 0.0000001}}\n")
    try:
        s = session(gw)
        turn = s.client_message(create())
        answer = gw.admission.admit(turn.exchange)
        assert answer is not None and answer.status == 429
        s.refused(turn)
        event = json.loads(ws.SocketSession.refusal_event(answer.status, answer.body, answer.headers))
        assert event["type"] == "error" and event["status"] == 429
        assert event["error"]["type"] == "usage_limit_reached"  # the client is Codex
        assert event["headers"]["x-codex-promo-message"] == event["error"]["message"]
        (row,) = rows(gw)
        assert (row["outcome"], row["status"], row["client"]) == ("blocked", 429, "codex")
    finally:
        gw.close()


def test_realtime_response_done_fixture(tmp_path):
    gw = make(tmp_path)
    try:
        s = session(gw, path="/v1/realtime?model=gpt-realtime")
        s.server_message(b'{"type":"session.created","session":{"model":"gpt-realtime-2025-08-28"}}')
        turn = s.client_message(b'{"type":"response.create","response":{"instructions":"hi"}}')
        gw.admission.admit(turn.exchange)
        assert turn.exchange.request.model == "gpt-realtime-2025-08-28"
        done = wire_bytes("openai_realtime_response_done.json")
        created = json.dumps({"type": "response.created", "response": {"id": json.loads(done)["response"]["id"]}})
        s.server_message(created.encode())  # events are routed to their turn by this response id
        s.server_message(b'{"type":"error","error":{"type":"invalid_request_error","message":"bad item"}}')
        assert s.open  # an error inside a running Realtime response does not end it
        s.server_message(done)
        # the server may start a response on its own (voice activity): metered too
        s.server_message(created.encode())
        s.server_message(done)
        a, b = rows(gw)
        for r in (a, b):
            assert (r["endpoint"], r["outcome"], r["input_tokens"], r["cache_read_tokens"], r["output_tokens"]) == (
                "realtime", "ok", 132, 64, 121)
    finally:
        gw.close()


# --- refusals each client reads as final ------------------------------------------------------

BUDGET = Budget(scope="user:ann", window="day", limit=Decimal("5"),
                start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 1, 2, tzinfo=UTC))
NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def test_gemini_refusal_is_a_terminal_quota_for_gemini_cli():
    body = json.loads(refusal.over_budget("gemini", BUDGET, Decimal("5.2"), NOW).body)["error"]
    assert body["code"] == 429 and body["status"] == "RESOURCE_EXHAUSTED"
    assert body["message"].startswith("spendgate: spend limit reached")
    info = next(d for d in body["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    # googleQuotaErrors.ts classifyGoogleError: Cloud Code domain + QUOTA_EXHAUSTED -> TerminalQuotaError
    assert (info["reason"], info["domain"]) == ("QUOTA_EXHAUSTED", "cloudcode-pa.googleapis.com")
    retry = next(d for d in body["details"] if d["@type"].endswith("google.rpc.RetryInfo"))
    assert retry["retryDelay"] == "43200s"
    quota = next(d for d in body["details"] if d["@type"].endswith("google.rpc.QuotaFailure"))
    for v in quota["violations"]:  # "PerDay"/"Daily" would make Gemini CLI print its own words instead
        assert "PerDay" not in v["quotaId"] and "Daily" not in v["quotaId"] and "PerMinute" not in v["quotaId"]


@pytest.mark.parametrize("client,etype,promo", [("codex", "usage_limit_reached", True),
                                                ("openai-sdk", "insufficient_quota", False), (None, "insufficient_quota", False)])
def test_openai_refusal_codex_flavour(client, etype, promo):
    a = refusal.over_budget("openai", BUDGET, Decimal("5.2"), NOW, client)
    err = json.loads(a.body)["error"]
    assert err["type"] == etype and err["code"] == "budget_exceeded"
    assert ("x-codex-promo-message" in a.headers) is promo
    if promo:
        assert a.headers["x-codex-promo-message"] == err["message"]
        assert err["resets_at"] == int(BUDGET.end.timestamp())
    assert a.headers["x-should-retry"] == "false" and a.headers["retry-after"] == "43200"


def test_addon_hook_meters_turns_and_keeps_memory_flat(tmp_path):
    """The mitmproxy hooks on a websocket flow (mitmproxy.test.tflow): a long socket stays bounded."""
    import sys

    from mitmproxy.test import tflow
    from mitmproxy.websocket import WebSocketMessage

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "addons"))
    import gateway as addon  # addons/gateway.py

    gw = make(tmp_path)
    gate = addon.SpendGate()
    gate.gateway = gw
    try:
        flow = tflow.twebsocketflow(messages=False)
        flow.metadata[addon.WS] = session(gw)
        msgs = flow.websocket.messages

        def push(from_client: bool, content: bytes) -> WebSocketMessage:
            m = WebSocketMessage(1, from_client, content)  # 1: text
            msgs.append(m)
            gate.websocket_message(flow)
            return m

        events = recorded_events()
        for _ in range(30):  # 30 turns of the recorded stream: far more messages than are kept
            assert not push(True, create()).dropped
            for e in events:
                push(False, e)
            assert len(msgs) <= addon.WS_KEEP_MESSAGES
        gate.websocket_end(flow)
        got = rows(gw)
        assert len(got) == 30 and {r["outcome"] for r in got} == {"ok"}
    finally:
        gate.gateway = None
        gw.close()


def test_a_continuation_is_estimated_with_the_conversation_it_continues(tmp_path):
    """previous_response_id sends only new input: admission must still count the whole context."""
    gw = make(tmp_path)
    try:
        s = session(gw)
        first = s.client_message(create())
        for e in recorded_events():
            s.server_message(e)
        usage = json.loads(recorded_events()[-1])["response"]["usage"]
        context = usage["input_tokens"] + usage["output_tokens"]
        plain = s.client_message(create())  # full input again (Codex with store: false): size only
        assert plain.exchange.request.input_bytes == len(create())
        s.close()
        s2 = session(gw)
        s2.context_tokens = context
        cont = s2.client_message(create(previous_response_id="resp_1"))
        assert cont.exchange.request.input_bytes == len(create(previous_response_id="resp_1")) + context * 4
        assert first.exchange.request.input_bytes == len(create())
    finally:
        gw.close()


def test_unavailable_refusals_are_final_for_codex_and_gemini_cli():
    a = refusal.unavailable("openai", "cannot record spend")
    assert a.status == 503 and refusal.for_client(a, "openai", "openai-sdk") is a  # SDKs: x-should-retry
    c = refusal.for_client(a, "openai", "codex")
    err = json.loads(c.body)["error"]
    assert c.status == 429 and err["type"] == "usage_limit_reached" and err["code"] == "gateway_unavailable"
    assert c.headers["x-codex-promo-message"] == err["message"] == "spendgate: cannot record spend"
    over = refusal.over_budget("openai", BUDGET, Decimal("6"), NOW, "codex")
    assert refusal.for_client(over, "openai", "codex") is over  # already final
    g = json.loads(refusal.unavailable("gemini", "x").body)["error"]
    assert g["code"] == 503 and g["status"] == "UNAVAILABLE"
    assert g["details"][0]["reason"] == "QUOTA_EXHAUSTED"  # Gemini CLI: terminal, not retried
    assert "details" not in json.loads(refusal.unavailable("anthropic", "x").body)["error"]
