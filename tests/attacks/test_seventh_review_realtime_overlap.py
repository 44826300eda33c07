"""Seventh review: a server-started Realtime response that overlapped an open turn was neither
admitted nor metered.

`SocketSession._server_message` makes a server-started turn only when no turn is open; events go
to `self.open[0]` in order. Realtime lets an out-of-band response (`response.create` with
`response.conversation: "none"`) run while the server's voice detection starts the conversation's
own response. The voice response's `response.created` then lands on the client's turn (never
admitted: `_admit_started` is not called), the first `response.done` finishes that turn, and every
later event of the other response, its usage included, arrives with no open turn and is dropped.
The fake (fifth review's) runs responses concurrently like the real API.
Fixed: Realtime events are routed to their turn by response id; a `response.created` no waiting
`response.create` accounts for starts a turn that is admitted then.
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.attacks.test_fifth_review_realtime_vad import DELTAS, _vad_server
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.e2e.test_websocket_e2e import open_socket, policy

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_a_voice_response_overlapping_an_out_of_band_one_is_metered(tmp_path, gateway_factory, fake_provider,
                                                                     monkeypatch):
    responses: list[dict] = []
    monkeypatch.setattr(fake_provider, "_websocket", _vad_server(fake_provider, responses))
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 10}}\n")).start()
    with open_socket(gw, path="/v1/realtime?model=gpt-realtime") as ws:
        ws.recv(timeout=5)  # session.created
        ws.send(json.dumps({"type": "response.create", "response": {"conversation": "none"}}))
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0" * 3200).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # the server starts the conversation's response
        done = 0
        while done < 2:
            ev = json.loads(ws.recv(timeout=10))
            done += ev["type"] == "response.done"
    assert [r["status"] for r in responses] == ["completed", "completed"]
    rows = gw.ledger(wait_for=2)
    # two responses ran at the provider ($0.0144 each): both must be on the ledger
    assert len(rows) == 2, [(r["endpoint"], r["output_tokens"], r["cost_usd"]) for r in rows]
