"""The composition root without mitmproxy: admission, store failures, unpriced models, recovery."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.budgets.journal import Journal
from spendgate.gateway import Gateway, Settings
from spendgate.reports.queries import ledger as ledger_rows

BODY = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
HEADERS = {"x-api-key": "sk-ant-unit-secret", "user-agent": "Anthropic/Python 2.14.0"}


def make(tmp_path: Path, policy: str) -> Gateway:
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\n" + policy)
    return Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=-1, reload_interval=0))


def begin(gw: Gateway, model: str = "claude-sonnet-4-5"):
    body = BODY.replace("claude-sonnet-4-5", model).encode()
    return gw.meter.begin("api.anthropic.com", "/v1/messages", HEADERS, body)


@pytest.mark.parametrize("mode,admitted", [("fail_closed", False), ("fail_open", True)])
def test_store_failure_follows_on_store_error(tmp_path, mode, admitted):
    gw = make(tmp_path, f"on_store_error: {mode}\ndefaults: {{user: {{day: 10}}}}\n")
    try:
        gw.journal.close()
        gw.journal = gw.admission.journal = Journal(Path("/dev/full"))  # every write fails with ENOSPC, like a full disk
        answer = gw.admission.admit(begin(gw))
        assert (answer is None) is admitted
        if not admitted:
            assert answer.status == 503 and answer.headers["x-should-retry"] == "false"
            assert "cannot record spend" in json.loads(answer.body)["error"]["message"]
    finally:
        gw.close()


def test_ledger_write_failure_closes_the_gate(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    try:
        gw.ledger.stats.failures = 1  # what the writer thread sets when a batch cannot be written
        gw.ledger.stats.last_error = "IOException: No space left on device"
        answer = gw.admission.admit(begin(gw))
        assert answer is not None and answer.status == 503
    finally:
        gw.ledger.stats.failures = 0
        gw.close()


@pytest.mark.parametrize(
    "unpriced,expect",
    [("block", "refused"), ("allow", Decimal(0)), ("{charge_per_mtok: {input: 15, output: 75}}", "fallback")],
)
def test_unpriced_models_follow_the_policy(tmp_path, unpriced, expect):
    gw = make(tmp_path, f"unpriced: {unpriced}\ndefaults: {{user: {{day: 10}}}}\n")
    try:
        ex = begin(gw, model="claude-imaginary-9")
        answer = gw.admission.admit(ex)
        if expect == "refused":
            assert answer is not None and "no known price" in answer.body.decode()
            return
        assert answer is None
        ex.status = 200
        result = ex.route.adapter.parse_response(json.dumps({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-imaginary-9",
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 1000, "output_tokens": 1000},
        }).encode())
        gw.meter.finish(ex, result)
        gw.meter.flush()
        (row,) = ledger_rows(gw.ledger.cursor())
        assert row["outcome"] == "unpriced" and row["cost_usd"] is None
        want = 0.0 if expect == Decimal(0) else (1000 * 15 + 1000 * 75) / 1e6
        assert row["charged_usd"] == pytest.approx(want)
        day = next(b for b in gw.book.status() if b["scope"] == "user:unit" and b["window"] == "day")
        assert day["spent_usd"] == pytest.approx(want) and day["reserved_usd"] == 0
    finally:
        gw.close()


def test_open_reservations_are_charged_once_at_start(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    ex = begin(gw)
    assert gw.admission.admit(ex) is None
    amount = ex.extra["reservation"].amount
    # simulate a crash: nothing settles, the process just goes away
    gw.meter._inflight.clear()
    gw.ledger.close()
    gw.journal.close()
    gw2 = Gateway(gw.settings)
    try:
        (row,) = ledger_rows(gw2.ledger.cursor())
        assert row["request_id"] == ex.request_id and row["outcome"] == "interrupted"
        assert row["charged_usd"] == pytest.approx(float(amount))
        day = next(b for b in gw2.book.status() if b["scope"] == "user:unit" and b["window"] == "day")
        assert day["spent_usd"] == pytest.approx(float(amount))
    finally:
        gw2.close()
    gw3 = Gateway(gw.settings)  # and never twice
    try:
        assert len(ledger_rows(gw3.ledger.cursor())) == 1
    finally:
        gw3.close()
