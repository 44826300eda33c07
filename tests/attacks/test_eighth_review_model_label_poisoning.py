"""Eighth review: refused requests with made-up model names blind the per-model metrics.

`PromMetrics` keeps the first `MAX_MODELS` (200) model names it sees as label values and folds
every later one into "other" for the rest of the process (a client can send any model name).
The slots are taken by every ledger row, including rows that cost nothing: requests refused at
the cap (`blocked`), refused by a model rule, or rejected by the provider (`upstream_error`).
So an engineer already at their cap sends 200 requests naming `x0` ... `x199` (each refused,
free), and from then on every real model's requests, tokens, cost and latency series on the
gateway's /metrics (and the Grafana dashboard built on it) are "other" until a restart.

Real PromMetrics and its exposition; rows as the meter hands them over.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client.parser import text_string_to_metric_families

from spendgate.identity import Identity
from spendgate.metering.meter import Exchange
from spendgate.metering.providers import route
from spendgate.metering.providers.base import RequestInfo
from spendgate.store.ledger import LedgerRow
from spendgate.telemetry.config import TelemetrySettings
from spendgate.telemetry.metrics import MAX_MODELS, PromMetrics

HOST, PATH = "api.openai.com", "/v1/chat/completions"


def _ex(model: str) -> Exchange:
    return Exchange(request_id="r1", ts=datetime(2026, 11, 30, 12, tzinfo=UTC), started=0.0, route=route(HOST, PATH),
                    request=RequestInfo(model=model, max_output_tokens=256), host=HOST,
                    identity=Identity(user="mallory", source="proxy_auth"))


def _row(model: str, outcome: str, status: int, cost: str) -> LedgerRow:
    return LedgerRow(
        ts=datetime(2026, 11, 30, 12, tzinfo=UTC), request_id="r1", provider="openai", endpoint="chat.completions",
        model=model, user="mallory", key_fingerprint=None, client="other", session_id=None, stream=False,
        status=status, outcome=outcome, estimated=False, input_tokens=0 if outcome == "blocked" else 1000,
        cache_read_tokens=0, cache_write_tokens=0, cache_write_1h_tokens=0,
        output_tokens=0 if outcome == "blocked" else 500, reasoning_tokens=0, web_search_requests=0,
        cost_usd=Decimal(cost), price_source="genai-prices", latency_ms=5.0, ttft_ms=None, charged_usd=Decimal(cost))


def test_free_refused_requests_cannot_fold_real_models_into_other():
    m = PromMetrics(TelemetrySettings())
    for i in range(MAX_MODELS + 10):  # refused at the cap: $0, never reached the provider
        m.on_row(_ex(f"x{i}"), _row(f"x{i}", "blocked", 429, "0"))
    m.on_row(_ex("gpt-4o-mini"), _row("gpt-4o-mini", "ok", 200, "0.0009"))
    body, _ = m.payload()
    cost = {s.labels["model"]: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
            if s.name == "spendgate_cost_usd_total"}
    assert "gpt-4o-mini" in cost, f"the real model's cost is filed under {sorted(cost)}"
