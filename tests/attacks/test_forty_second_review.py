"""Forty-second review (a fresh attacker helper, 2026-12-05).

F1 (Critical): any request naming websocket in its Upgrade header skipped metering, admission and
the ledger. The proxy edge took it for a WebSocket handshake (whose turns are metered one by one,
not the request) and let it through, yet mitmproxy makes a WebSocket only of a 101 to a version-13
handshake: a POST /v1/responses with `Upgrade: websocket` was an ordinary model call that nobody
metered, answered after the cap, and a paid Realtime offer (blocked in every mode) reached the
provider. Fixed: only a GET with no body at version 13 is a handshake (`websocket.is_handshake`),
routed with its method; every other request is metered and admitted as one call, and a provider
that switches protocols on anything but a handshake carried on as a metered WebSocket gets its 101
replaced by a 502 (`addons/gateway.py`, `_refuse_unmetered_switch`).

F2 (Medium): a compressed request body small on the wire was decoded and read on the event loop
however large it decoded (a 132-byte brotli body to 60 MiB stalled every flow ~0.2 s), and the
size limit was applied to the compressed bytes only. Fixed: a body is decoded on the loop only
while it stays under DECODED_ON_LOOP_BYTES, else decoded and read on a worker thread; past
spendgate_max_request_bytes decoded it gets the 413.
"""

from __future__ import annotations

import base64
import json
import os

import brotli
import pytest

from tests.attacks.test_fifth_review_decoy_key import key_capped_policy
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.support import OPENAI_KEY
from tests.support.fake_provider import OPENAI_HOST

pytestmark = pytest.mark.e2e

RESPONSES = "https://api.openai.com/v1/responses"
AUTH = {"authorization": f"Bearer {OPENAI_KEY}"}
HANDSHAKE = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13",
             "sec-websocket-key": base64.b64encode(os.urandom(16)).decode()}


def test_an_upgrade_header_never_takes_a_model_call_past_the_budget(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=key_capped_policy(tmp_path, OPENAI_KEY)).start()  # the key has no room left
    body = {"model": "gpt-5", "input": "hello " * 50}
    with gw.http_client() as c:
        asked = {
            "plain": c.post(RESPONSES, json=body, headers=AUTH),
            "upgrade": c.post(RESPONSES, json=body, headers={**AUTH, "upgrade": "websocket"}),
            "odd upgrade": c.post(RESPONSES, json=body, headers={**AUTH, "upgrade": "not-a-websocket"}),
            "handshake headers": c.post(RESPONSES, json=body, headers={**AUTH, **HANDSHAKE}),
            "streamed": c.post(RESPONSES, json={**body, "stream": True}, headers={**AUTH, "upgrade": "websocket"}),
            "a GET with a body": c.request("GET", RESPONSES, content=json.dumps(body).encode(),
                                           headers={**AUTH, **HANDSHAKE, "content-type": "application/json"}),
        }
    got = {name: r.status_code for name, r in asked.items()}
    assert got == dict.fromkeys(asked, 429), got
    rows = gw.ledger(wait_for=len(asked))
    assert [r["outcome"] for r in rows] == ["blocked"] * len(asked)
    assert not [r for r in fake_provider.requests_to(OPENAI_HOST) if r.method != "WS"]  # none reached the provider


def test_a_paid_realtime_offer_with_an_upgrade_header_stays_blocked(gateway_factory, fake_provider):
    gw = gateway_factory().start()
    with gw.http_client() as c:
        r = c.post("https://api.openai.com/v1/realtime?model=gpt-realtime", content=b"v=0\r\n",
                   headers={**AUTH, "content-type": "application/sdp", "upgrade": "websocket"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "unmetered_endpoint_blocked", r.text
    assert not fake_provider.requests_to(OPENAI_HOST, "/v1/realtime")


@pytest.mark.parametrize("upgrade", ["websocket", "h2c"])
def test_a_provider_switching_protocols_on_a_metered_call_gets_a_502(gateway_factory, fake_provider, upgrade):
    """A 101 to a call metered as one request would carry a socket (or a raw TCP pipe) nobody meters."""
    gw = gateway_factory().start()
    fake_provider.serve_raw(OPENAI_HOST, "/v1/responses", b"", "application/json", status=101,
                            headers=[("upgrade", upgrade), ("connection", "Upgrade")])
    with gw.http_client() as c:
        switched = c.post(RESPONSES, json={"model": "gpt-5", "input": "hi"}, headers={**AUTH, **HANDSHAKE})
        after = c.post(RESPONSES, json={"model": "gpt-5", "input": "hi"}, headers=AUTH)
    assert switched.status_code == 502, switched.text
    assert switched.json()["error"]["code"] == "unexpected_protocol_switch"
    assert after.status_code == 200, after.text  # the next call is metered as ever
    rows = gw.ledger(wait_for=2)
    assert sorted((r["status"], r["outcome"]) for r in rows) == [(200, "ok"), (502, "upstream_error")], rows


def _json(model: str, text_bytes: int) -> bytes:
    return json.dumps({"model": model, "input": "a" * text_bytes}).encode()


def _brotli_json(model: str, text_bytes: int) -> bytes:
    return brotli.compress(_json(model, text_bytes), quality=5)


def test_a_small_compressed_body_that_decodes_large_is_read_off_the_loop_and_bounded(tmp_path, gateway_factory,
                                                                                     fake_provider):
    pol = tmp_path / "p.yaml"
    pol.write_text('version: 1\nmodels:\n  - {scope: defaults, deny: ["gpt-5-pro*"]}\ndefaults: {user: {day: 50}}\n')
    gw = gateway_factory(policy=pol, extra_args=["--set", "spendgate_max_request_bytes=8000000"]).start()
    hdrs = {**AUTH, "content-type": "application/json", "content-encoding": "br"}
    bomb = _brotli_json("gpt-5", 60 * 2**20)
    assert len(bomb) < 1000  # tiny on the wire, under every on-the-wire limit
    with gw.http_client() as c:
        too_big = c.post(RESPONSES, content=bomb, headers=hdrs)
        denied = c.post(RESPONSES, content=_brotli_json("gpt-5-pro", 2 * 2**20), headers=hdrs)
        allowed = c.post(RESPONSES, content=_brotli_json("gpt-5", 2 * 2**20), headers=hdrs)
    assert too_big.status_code == 413 and "decoded (br)" in too_big.json()["error"]["message"], too_big.text
    assert denied.status_code == 403, denied.text  # read whole on the worker: the model rule applies
    assert allowed.status_code == 200, allowed.text
    rows = {r["model"]: r for r in gw.ledger(wait_for=2)}
    assert rows["gpt-5-pro"]["outcome"] == "blocked" and rows["gpt-5"]["outcome"] == "ok"
    assert [r.body for r in fake_provider.requests_to(OPENAI_HOST, "/v1/responses")] == [_json("gpt-5", 2 * 2**20)]


STEP_DOWN = ("version: 1\ntimezone: UTC\ndefaults: {user: {day: 100}}\n"
             "step_down:\n  - {scope: defaults, at: 1, window: day, models: {'gpt-4.1': gpt-4.1-mini}}\n")


def test_a_step_down_of_a_large_compressed_body_is_rewritten_and_compressed_again_off_the_loop(
        tmp_path, gateway_factory, fake_provider):
    """The reviewer's follow-up: past a step-down threshold a tiny brotli body that decodes to 3.5 MiB
    was read whole again and compressed again on the event loop (~0.13 s a request). Both now run on
    a worker thread (`_admit_and_encode`); what reaches the provider is the stepped-down request,
    compressed as it came."""
    pol = tmp_path / "p.yaml"
    pol.write_text(STEP_DOWN)
    gw = gateway_factory(policy=pol).start()
    chat = "https://api.openai.com/v1/chat/completions"
    with gw.http_client() as c:  # past 1% of the day: one costly call first
        assert c.post(chat, json={"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
                      headers={**AUTH, "x-fake-usage": json.dumps({"prompt_tokens": 600_000,
                                                                   "completion_tokens": 10_000})}).status_code == 200
        gw.ledger(wait_for=1)
        plain = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "a"}] * 110_000}).encode()
        r = c.post(chat, content=brotli.compress(plain, quality=5),
                   headers={**AUTH, "content-type": "application/json", "content-encoding": "br"})
    assert r.status_code == 200, r.text
    rows = gw.ledger(wait_for=2)
    assert [(x["requested_model"], x["model"]) for x in rows if x["requested_model"]] == [("gpt-4.1", "gpt-4.1-mini")]
    sent = fake_provider.requests_to(OPENAI_HOST, "/v1/chat/completions")[-1]
    assert sent.headers["content-encoding"] == "br"  # compressed again, and the fake decoded it
    assert sent.json["model"] == "gpt-4.1-mini" and len(sent.json["messages"]) == 110_000
