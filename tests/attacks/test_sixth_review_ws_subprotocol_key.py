"""Sixth review: the Realtime API key carried in the WebSocket subprotocol is a credential the
fifth review's `identity.credentials` does not see.

OpenAI documents browser (and any client's) Realtime auth as a subprotocol:
`Sec-WebSocket-Protocol: realtime, openai-insecure-api-key.<KEY>, openai-beta.realtime-v1`
(the `openai-insecure-api-key.` prefix also carries ephemeral `ek_` keys). api.openai.com reads
it; the gateway does not. Sent with a decoy `x-api-key` (which OpenAI never reads, the very case
the fix is about), the socket's turns are charged to the decoy's key and user, and the real
key's `keys:` budget (here: nothing left) never applies. Without the decoy the turns carry no key
at all.
Fixed: `credentials` reads the `openai-insecure-api-key.` subprotocol entry.
"""

from __future__ import annotations

import json
import socket

import pytest
from websockets.sync.client import connect

from spendgate.identity import fingerprint
from tests.attacks.test_fifth_review_decoy_key import key_capped_policy
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.e2e.test_websocket_e2e import events_until_end
from tests.support import OPENAI_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

HOST = "api.openai.com"


def _socket(gw, headers: dict):
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    raw.sendall(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += raw.recv(4096)
    return connect(f"wss://{HOST}/v1/realtime?model=gpt-realtime", sock=raw, ssl=gw.websocket_ssl_context(),
                   additional_headers={"User-Agent": "rt", **headers}, open_timeout=10, close_timeout=2,
                   max_size=None)


def _turn(gw, headers: dict) -> dict:
    with _socket(gw, headers) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
        ws.send(json.dumps({"type": "response.create", "response": {"instructions": "hi"}}))
        return events_until_end(ws)[-1]


def test_a_subprotocol_api_key_is_a_credential(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=key_capped_policy(tmp_path, OPENAI_KEY)).start()
    last = _turn(gw, {"Authorization": f"Bearer {OPENAI_KEY}"})
    assert last["type"] == "error" and last["status"] == 429  # the real key has no budget left
    browser = {"Sec-WebSocket-Protocol": f"realtime, openai-insecure-api-key.{OPENAI_KEY}, openai-beta.realtime-v1",
               "x-api-key": "decoy-1"}
    last = _turn(gw, browser)
    rows = [(r["outcome"], r["key_fingerprint"], r["user"]) for r in gw.ledger(wait_for=2)]
    # the same key, carried where OpenAI reads it: refused (its budget, or two credentials)
    assert last["type"] == "error" and last["status"] in (403, 429), (last["type"], rows)
