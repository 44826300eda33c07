"""Fifth review: Realtime responses the server starts on its own (server voice detection, or
`input_audio_buffer.commit` with `turn_detection.create_response`) were never admitted.

`websocket.SocketSession` admitted only `response.create`; a response the server started itself was
metered afterwards, so a voice client at its cap kept being answered for as long as it talked. Now
the gateway admits such a response when it starts; at the cap it sends the provider
`response.cancel` (the response is charged what it used) and the client an error event, and
withholds the client's audio from then on (the server would start the next response) until a
`response.create` is admitted.

The fake here does what the Realtime API does: a response takes a while (40 deltas, 20 ms apart),
`response.cancel` stops it with `response.done` status `cancelled` and the usage so far, and a
commit starts a response only when audio was heard since the last one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import pytest

from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.e2e.test_websocket_e2e import events_until_end, open_socket, policy
from tests.support.fake_provider import WS_GUID, ReceivedRequest, Scenario, _WSResponder, ws_frame, ws_read_message

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

DELTAS, INPUT_TOKENS, TOKENS_PER_DELTA = 40, 2000, 10


def _vad_server(fake, responses: list[dict]):
    """A Realtime socket with server voice detection and response.cancel (see the module doc)."""
    async def ws(host, route, path, headers, reader, writer, scenario):
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + WS_GUID).encode()).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                     b"sec-websocket-accept: " + accept + b"\r\n\r\n")
        await writer.drain()
        r = _WSResponder(writer, Scenario())
        await r.send({"type": "session.created", "event_id": "e0",
                      "session": {"object": "realtime.session", "model": "gpt-realtime"}})
        running: asyncio.Task | None = None
        heard = 0

        async def respond(rid: str) -> None:
            await r.send({"type": "response.created", "event_id": f"{rid}-c", "response": {
                "object": "realtime.response", "id": rid, "status": "in_progress", "output": [], "usage": None}})
            sent, status = 0, "completed"
            try:
                for i in range(DELTAS):
                    await asyncio.sleep(0.02)
                    await r.send({"type": "response.output_text.delta", "event_id": f"{rid}-{i}", "response_id": rid,
                                  "item_id": "item", "output_index": 0, "content_index": 0, "delta": "word " * 5})
                    sent += 1
            except asyncio.CancelledError:
                status = "cancelled"
            out = sent * TOKENS_PER_DELTA
            responses.append({"id": rid, "status": status, "deltas": sent})
            await r.send({"type": "response.done", "event_id": f"{rid}-d", "response": {
                "object": "realtime.response", "id": rid, "status": status, "output": [],
                "usage": {"total_tokens": INPUT_TOKENS + out, "input_tokens": INPUT_TOKENS, "output_tokens": out,
                          "input_token_details": {"text_tokens": INPUT_TOKENS, "audio_tokens": 0, "cached_tokens": 0},
                          "output_token_details": {"text_tokens": out, "audio_tokens": 0}}}})

        while (msg := await ws_read_message(reader)) is not None:
            opcode, payload = msg
            if opcode == 0x8:
                writer.write(ws_frame(0x8, payload[:2]))
                await writer.drain()
                return
            if opcode != 1:  # pings
                continue
            data = json.loads(payload)
            fake.requests.append(ReceivedRequest(host=host, method="WS", path=path, headers=dict(headers),
                                                 body=payload, json=data, scenario=Scenario()))
            kind = data.get("type")
            if kind == "input_audio_buffer.append":
                heard += 1
            elif kind == "response.cancel" and running is not None:
                running.cancel()
            elif kind == "response.create" or (kind == "input_audio_buffer.commit" and heard):
                heard = 0
                running = asyncio.create_task(respond(f"resp_{len(fake.requests)}"))
    return ws


def test_server_started_realtime_responses_cannot_run_past_the_cap(tmp_path, gateway_factory, fake_provider,
                                                                   monkeypatch):
    responses: list[dict] = []
    monkeypatch.setattr(fake_provider, "_websocket", _vad_server(fake_provider, responses))
    # gpt-realtime: $4 / $16 per million text tokens. A response's estimate is its input and 4,096
    # output tokens ($0.066 for the first); the first costs $0.0144, and the second's estimate (re-reading
    # the first's 2,400 tokens: $0.075) no longer fits under $0.07
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 0.07}}\n")).start()
    speak = [json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0" * 3200).decode()}),
             json.dumps({"type": "input_audio_buffer.commit"})]
    with open_socket(gw, path="/v1/realtime?model=gpt-realtime") as ws:
        ws.recv(timeout=5)  # session.created
        ws.send(json.dumps({"type": "response.create"}))
        first = events_until_end(ws)
        assert first[-1]["type"] == "response.done", first[-3:]
        for m in speak:  # server voice detection starts a response nobody admitted: over the cap
            ws.send(m)
        evs = events_until_end(ws)
        assert evs[-1]["type"] == "error" and evs[-1]["status"] == 429, [e["type"] for e in evs]
        done = events_until_end(ws)  # the provider cancels it
        assert done[-1]["type"] == "response.done" and done[-1]["response"]["status"] == "cancelled"
        for _ in range(5):  # the user keeps talking: the server hears none of it, so it answers nothing
            for m in speak:
                ws.send(m)
        ws.send(json.dumps({"type": "session.update", "session": {}}))  # passes: only audio is withheld
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1)
    assert [r["status"] for r in responses] == ["completed", "cancelled"]
    assert responses[1]["deltas"] < DELTAS // 2  # cancelled early, not at its end
    heard = [m.json["type"] for m in fake_provider.requests if m.method == "WS"]
    assert heard.count("input_audio_buffer.append") == 1 and heard[-1] == "session.update"
    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    assert [r["outcome"] for r in rows] == ["ok", "ok"]
    assert rows[1]["output_tokens"] == responses[1]["deltas"] * TOKENS_PER_DELTA  # charged what it used
    assert "cancelled at the cap: " in rows[1]["note"] and "budget" in rows[1]["note"]
    # over the cap by what the cancelled response used, not by every response of the conversation
    assert float(rows[0]["cost_usd"]) == pytest.approx(0.0144)
    assert float(rows[1]["cost_usd"]) < 0.0144 * 0.75
