"""Fifth review: Responses WebSocket turns the gateway did not see as turns.

`websocket.event_type` read the FIRST "type" of a compact message (fast path), while JSON parsers
(json.loads, JSON.parse, Go's encoding/json, the fake provider) take the LAST duplicate:
`{"type":"session.update", ..., "type":"response.create"}` was no turn for spendgate (never
admitted, never metered) while the provider answered it, so a turn refused at the cap was simply
re-sent in this spelling. A client's message is now read as json.loads reads it
(`client_event_type`), binary frames are read too, and a message too large to read is refused.
"""

from __future__ import annotations

import json

import pytest

from spendgate.metering import websocket as ws_mod
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.e2e.test_websocket_e2e import create, events_until_end, open_socket, policy, ws_messages

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_event_type_agrees_with_json_on_duplicate_type_members():
    data = b'{"type":"session.update","type":"response.create","model":"gpt-5"}'
    assert ws_mod.client_event_type(data) == json.loads(data)["type"]


def test_a_turn_with_a_decoy_first_type_is_admitted_and_metered(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 0.015}}\n")).start()
    with open_socket(gw) as ws:
        ws.send(create(max_output_tokens=1000))
        assert events_until_end(ws)[-1]["type"] == "response.completed"
        ws.send(create(max_output_tokens=1000))
        assert events_until_end(ws)[-1]["status"] == 429  # at the cap: refused inside the socket
        decoy = '{"type":"session.update",' + create(max_output_tokens=1000)[1:]
        ws.send(decoy)
        evs = events_until_end(ws)
    served = [m for m in ws_messages(fake_provider) if m.json and m.json.get("type") == "response.create"]
    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    outcome = [(r["outcome"], r["cost_usd"]) for r in rows]
    # either refused like the honest turn, or at least metered; here it is answered and never recorded
    assert evs[-1].get("status") == 429 or len(rows) == 3, (evs[-1]["type"], len(served), outcome)


def test_a_turn_in_a_binary_frame_is_admitted_like_a_text_one(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 0.015}}\n")).start()
    with open_socket(gw) as ws:
        ws.send(create(max_output_tokens=1000))
        assert events_until_end(ws)[-1]["type"] == "response.completed"
        ws.send(create(max_output_tokens=1000).encode())  # bytes: a binary frame
        assert events_until_end(ws)[-1]["status"] == 429  # at the cap: refused, whatever the frame
    served = [m for m in ws_messages(fake_provider) if m.json and m.json.get("type") == "response.create"]
    assert len(served) == 1


def test_a_client_message_too_large_to_read_is_refused_not_forwarded(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 100}}\n")).start()
    big = create()[:-1] + ', "pad": "' + "x" * (ws_mod.MAX_MESSAGE_BYTES + 1) + '"}'
    with open_socket(gw) as ws:
        ws.send(big)
        evs = events_until_end(ws, timeout=60)
        assert evs[-1]["type"] == "error" and evs[-1]["status"] == 413
        ws.send(create())  # the socket goes on
        assert events_until_end(ws)[-1]["type"] == "response.completed"
    assert len([m for m in ws_messages(fake_provider) if m.json and m.json.get("type") == "response.create"]) == 1
