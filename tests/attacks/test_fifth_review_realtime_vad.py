"""Fifth review: Realtime responses the server starts on its own (server VAD, or
`input_audio_buffer.commit` with `turn_detection.create_response`) are never admitted.

`websocket.SocketSession` only admits `response.create`; a response the server starts by itself
is begun with `admitted=False` and metered afterwards. A Realtime client at its cap therefore
keeps being answered for as long as it talks: each committed audio buffer gets a full response,
each is charged after the fact, and the budget is exceeded without bound.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import pytest

from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.e2e.test_websocket_e2e import INPUT, events_until_end, open_socket, policy
from tests.support.fake_provider import WS_GUID, ReceivedRequest, Scenario, _WSResponder, ws_frame, ws_read_message

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CAP = 0.04


def _vad_server(fake):
    """The fake's Realtime socket, plus what server VAD does: a committed audio buffer starts a response."""
    async def ws(host, route, path, headers, reader, writer, scenario):
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + WS_GUID).encode()).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                     b"sec-websocket-accept: " + accept + b"\r\n\r\n")
        await writer.drain()
        r = _WSResponder(writer, Scenario())
        await r.send({"type": "session.created", "event_id": "e0",
                      "session": {"object": "realtime.session", "model": "gpt-realtime"}})
        while (msg := await ws_read_message(reader)) is not None:
            opcode, payload = msg
            if opcode == 0x8:
                writer.write(ws_frame(0x8, payload[:2]))
                await writer.drain()
                return
            if opcode != 1:
                continue
            data = json.loads(payload)
            fake.requests.append(ReceivedRequest(host=host, method="WS", path=path, headers=dict(headers),
                                                 body=payload, json=data, scenario=Scenario()))
            if data.get("type") in ("response.create", "input_audio_buffer.commit"):
                await fake._realtime_turn(r, data)
    return ws


def test_server_started_realtime_responses_cannot_run_past_the_cap(tmp_path, gateway_factory, fake_provider,
                                                                   monkeypatch):
    monkeypatch.setattr(fake_provider, "_websocket", _vad_server(fake_provider))
    gw = gateway_factory(policy=policy(tmp_path, f"defaults: {{user: {{day: {CAP}}}}}\n")).start()
    with open_socket(gw, path="/v1/realtime?model=gpt-realtime") as ws:
        ws.recv(timeout=5)  # session.created
        ws.send(json.dumps({"type": "response.create", "response": {"instructions": INPUT, "max_output_tokens": 700}}))
        assert events_until_end(ws)[-1]["type"] == "response.done"
        ws.send(json.dumps({"type": "response.create", "response": {"instructions": INPUT, "max_output_tokens": 700}}))
        assert events_until_end(ws)[-1]["type"] == "error"  # at the cap: refused
        answered = 0
        for _ in range(5):  # the user keeps talking; server VAD commits the buffer and answers
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0" * 3200).decode()}))
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            answered += events_until_end(ws)[-1]["type"] == "response.done"
    rows = gw.ledger(wait_for=2 + answered)
    spent = sum(float(r["cost_usd"] or 0) for r in rows)
    outcomes = [(r["outcome"], r["cost_usd"]) for r in sorted(rows, key=lambda r: r["ts"])]
    # a budget may be overrun by one request's estimate error, not by every response of a conversation
    assert spent <= CAP + 0.02, (answered, round(spent, 4), outcomes)
