"""Seventh review: a Realtime response cancelled at the cap was never counted on the budgets.

`_started_admitted` -> `SocketSession.over_cap` keeps the refused server-started response metered
("charged what it used", docs/security.md C4), but admission refused it, so it holds no
reservation: `Admission.settle` takes the `else: self.book.record(row)` branch and the budget
counters never see its cost (only a restart's replay of the ledger would). The row says
charged_usd = its cost; the live budget does not.
Fixed: `Admission.settle` charges it to the budgets like batch results (spend that happened).
"""

from __future__ import annotations

import base64
import json

import pytest

from tests.attacks.test_fifth_review_realtime_vad import _vad_server
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)
from tests.e2e.test_websocket_e2e import events_until_end, open_socket, policy

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_a_response_cancelled_at_the_cap_counts_on_the_budget(tmp_path, gateway_factory, fake_provider, monkeypatch):
    responses: list[dict] = []
    monkeypatch.setattr(fake_provider, "_websocket", _vad_server(fake_provider, responses))
    cap = 0.07
    gw = gateway_factory(policy=policy(tmp_path, f"defaults: {{user: {{day: {cap}}}}}\n")).start()
    speak = [json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0" * 3200).decode()}),
             json.dumps({"type": "input_audio_buffer.commit"})]
    with open_socket(gw, path="/v1/realtime?model=gpt-realtime") as ws:
        ws.recv(timeout=5)
        ws.send(json.dumps({"type": "response.create"}))
        assert events_until_end(ws)[-1]["type"] == "response.done"
        for m in speak:
            ws.send(m)
        evs = events_until_end(ws)
        assert evs[-1]["type"] == "error" and evs[-1]["status"] == 429
        done = events_until_end(ws)
        assert done[-1]["response"]["status"] == "cancelled"
    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    spent = sum(float(r["charged_usd"] or 0) for r in rows)
    assert float(rows[1]["cost_usd"]) > 0.005  # the cancelled response cost something (its 2k input at least)
    # what the live budget counts: the remaining header of a tiny admitted call
    with gw.http_client() as c:
        r = c.post("https://api.openai.com/v1/chat/completions", headers={"authorization": "Bearer sk-test-SECRET456"},
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert r.status_code == 200, r.text
    remaining = float(r.headers["x-spendgate-remaining-usd"])
    # the budget must hold both responses: remaining <= cap - (first + cancelled) (a tiny call's estimate aside)
    assert remaining <= cap - spent + 0.0005, (remaining, cap - spent, [(r["cost_usd"], r["charged_usd"]) for r in rows])
