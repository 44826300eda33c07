"""Telemetry pieces without a proxy: trace context, link templates, settings, span attributes,
Prometheus label caps, and the ledger's trace columns (end to end: tests/e2e/test_telemetry_e2e.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendgate.budgets.book import Budget
from spendgate.identity import Identity
from spendgate.metering.meter import Exchange
from spendgate.metering.providers import route
from spendgate.metering.providers.base import RequestInfo, ResponseResult
from spendgate.reports import queries
from spendgate.store.ledger import MIGRATIONS, LedgerRow, migrate
from spendgate.telemetry import links
from spendgate.telemetry.config import (
    MAX_PER_USER_SERIES,
    TelemetryError,
    TelemetrySettings,
    settings_from,
)
from spendgate.telemetry.metrics import OTHER, LabelCap, PromMetrics, Sources
from spendgate.telemetry.spans import span_attributes, span_name

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


# -- W3C trace context (client-sent: untrusted) --


@pytest.mark.parametrize("header,expected", [
    (f"00-{TRACE}-00f067aa0ba902b7-01", (TRACE, "00f067aa0ba902b7", True)),
    (f"00-{TRACE}-00f067aa0ba902b7-00", (TRACE, "00f067aa0ba902b7", False)),
    (f"  00-{TRACE}-00f067aa0ba902b7-01 ", (TRACE, "00f067aa0ba902b7", True)),
    (f"01-{TRACE}-00f067aa0ba902b7-01-future", (TRACE, "00f067aa0ba902b7", True)),  # later versions may add fields
    (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),  # version 00 has exactly four fields
    (f"ff-{TRACE}-00f067aa0ba902b7-01", None),  # forbidden version
    (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),  # upper-case hex is invalid
    (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),  # all-zero trace id
    (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
    (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),
    ("garbage", None), ("", None), (None, None), ("00-" + "a" * 600, None),
])  # fmt: skip
def test_traceparent_parsing(header, expected):
    assert links.parse_traceparent(header) == expected


# -- trace URL templates --


def test_trace_url_placeholders():
    assert links.trace_url("http://jaeger:16686/trace/{trace_id}", TRACE) == f"http://jaeger:16686/trace/{TRACE}"
    assert links.trace_url("https://smith.example/r?trace={trace_uuid}&span={span_id}", TRACE, "00f067aa0ba902b7") == (
        "https://smith.example/r?trace=4bf92f35-77b3-4da6-a3ce-929d0e0e4736&span=00f067aa0ba902b7")
    assert links.trace_url("https://x/{trace_id}/{span_id}", TRACE, None) == f"https://x/{TRACE}/"
    assert links.trace_url("https://x/{trace_id}", None) is None  # untraced row
    assert links.trace_url("https://x/{trace_id}", "not-hex" * 4) is None
    assert links.trace_url(None, TRACE) is None
    assert links.trace_url("javascript:alert({trace_id})", TRACE) is None  # never a non-http link


@pytest.mark.parametrize("template,why", [
    ("ftp://x/{trace_id}", "http"), ("https://x/{user}", "user"), ("https://x/", "needs"),
    ("https://x/{trace_id", "trace URL template"),
])  # fmt: skip
def test_bad_templates_say_why(template, why):
    with pytest.raises(links.TemplateError, match=why):
        links.check_template(template)


# -- settings --


def test_settings_off_by_default_and_standard_variables():
    s = settings_from(env={})
    assert (s.otlp, s.metrics_port, s.per_user_series, s.trace_url) == (False, -1, 0, None)
    assert settings_from(env={"OTEL_TRACES_EXPORTER": "otlp"}).otlp is True
    assert settings_from(otlp=True, env={"OTEL_TRACES_EXPORTER": "none"}).otlp is False
    assert settings_from(otlp=True, env={"OTEL_SDK_DISABLED": "true"}).otlp is False
    assert settings_from(otlp=True, env={"OTEL_METRICS_EXPORTER": "none"}).otlp_metrics_on is False
    assert settings_from(env={links.ENV: "https://t/{trace_id}"}).trace_url == "https://t/{trace_id}"
    assert settings_from(trace_url="https://o/{trace_id}", env={links.ENV: "https://t/{trace_id}"}).trace_url == \
        "https://o/{trace_id}"
    assert "secret" not in repr(settings_from(headers="x-api-key=secret", env={}))


@pytest.mark.parametrize("kw,msg", [
    (dict(queue=0), "queue"), (dict(timeout=0), "timeout"), (dict(endpoint="collector:4318"), "http"),
    (dict(per_user_series=MAX_PER_USER_SERIES + 1), "per_user"), (dict(metrics_port=70000), "metrics_port"),
    (dict(trace_url="https://x/{nope}"), "nope"),
])  # fmt: skip
def test_bad_settings_are_refused(kw, msg):
    with pytest.raises(TelemetryError, match=msg):
        settings_from(env={}, **kw)


# -- span attributes --


def exchange(host: str, path: str, model: str | None, **extra) -> Exchange:
    return Exchange(request_id="r1", ts=datetime(2026, 11, 30, 12, tzinfo=UTC), started=0.0, route=route(host, path),
                    request=RequestInfo(model=model, max_output_tokens=256), host=host,
                    identity=Identity(user="alice", source="local_user"), **extra)


def ledger_row(**kw) -> LedgerRow:
    base = dict(
        ts=datetime(2026, 11, 30, 12, tzinfo=UTC), request_id="r1", provider="gemini", endpoint="generateContent",
        model="gemini-2.5-flash", user="alice", key_fingerprint=None, client="gemini-cli", session_id="sess-1",
        stream=False, status=200, outcome="ok", estimated=False, input_tokens=3000, cache_read_tokens=1000,
        cache_write_tokens=0, cache_write_1h_tokens=0, output_tokens=800, reasoning_tokens=200,
        web_search_requests=0, cost_usd=Decimal("0.00263"), price_source="genai-prices", latency_ms=12.0,
        ttft_ms=None, charged_usd=Decimal("0.00263"),
    )
    return LedgerRow(**{**base, **kw})


def test_gemini_span_names_and_usage():
    ex = exchange("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:generateContent",
                  "gemini-2.5-flash")
    ex.response = ResponseResult(model="gemini-2.5-flash", finish_reasons=("STOP",))
    row = ledger_row()
    a = span_attributes(ex, row)
    assert span_name(row, ex) == "generate_content gemini-2.5-flash"
    assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.system"]) == (
        "generate_content", "gcp.gemini", "gemini")
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.cache_read.input_tokens"],
            a["gen_ai.usage.reasoning.output_tokens"], a["gen_ai.conversation.id"]) == (3000, 1000, 200, "sess-1")
    assert a["gen_ai.response.finish_reasons"] == ["STOP"] and "error.type" not in a
    assert "spendgate.workspace" not in a  # None values are left out, never sent as empty strings


def test_refused_and_failed_spans_carry_error_type_and_no_usage():
    ex = exchange("api.anthropic.com", "/v1/messages", "claude-sonnet-4-5")
    ex.extra["refused_by"] = Budget("workspace:platform", "month", Decimal(5), ex.ts, ex.ts)
    a = span_attributes(ex, ledger_row(provider="anthropic", endpoint="messages", outcome="blocked", status=429,
                                       input_tokens=0, output_tokens=0))
    assert (a["error.type"], a["spendgate.refused_by.scope"], a["spendgate.refused_by.window"]) == (
        "spendgate.budget_exceeded", "workspace:platform", "month")
    assert not [k for k in a if k.startswith("gen_ai.usage")]
    ex2 = exchange("api.openai.com", "/v1/chat/completions", "gpt-5")
    ex2.response = ResponseResult(error="overloaded_error")
    a2 = span_attributes(ex2, ledger_row(provider="openai", endpoint="chat.completions", outcome="upstream_error",
                                         status=529))
    assert a2["error.type"] == "overloaded_error" and a2["gen_ai.operation.name"] == "chat"
    a3 = span_attributes(exchange("api.openai.com", "/v1/chat/completions", "gpt-5"),
                         ledger_row(provider="openai", endpoint="chat.completions", outcome="upstream_error",
                                    status=503))
    assert a3["error.type"] == "503"


# -- Prometheus --


def scrape(m: PromMetrics) -> list[tuple[str, dict[str, str], float]]:
    body, ctype = m.payload()
    assert ctype.startswith("text/plain")
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(body.decode()) for s in f.samples]


def test_no_user_series_by_default_and_a_hard_cap_when_asked():
    ex = exchange("api.openai.com", "/v1/chat/completions", "gpt-5")
    plain = PromMetrics(TelemetrySettings())
    capped = PromMetrics(TelemetrySettings(per_user_series=2))
    for i in range(5):
        row = ledger_row(provider="openai", endpoint="chat.completions", model="gpt-5", user=f"u{i}",
                         key_fingerprint=f"sha256:{i:012d}", cost_usd=Decimal("0.5"))
        plain.on_row(ex, row)
        capped.on_row(ex, row)
    assert not [s for s in scrape(plain) if "user" in s[1] or "key" in s[1]]
    users = {lab["user"]: v for n, lab, v in scrape(capped) if n == "spendgate_user_cost_usd_total"}
    assert users == {"u0": 0.5, "u1": 0.5, OTHER: 1.5}
    keys = {lab["key"] for n, lab, v in scrape(capped) if n == "spendgate_key_cost_usd_total"}
    assert keys == {"sha256:000000000000", "sha256:000000000001", OTHER}
    assert sum(v for n, lab, v in scrape(capped) if n == "spendgate_requests_total") == 5


def test_label_cap_and_ledger_lag():
    cap = LabelCap(2)
    assert [cap(m) for m in ("a", "b", "c", "a", None)] == ["a", "b", OTHER, "a", OTHER]
    now = [100.0]
    m = PromMetrics(TelemetrySettings(), Sources(), clock=lambda: now[0])
    ex = exchange("api.openai.com", "/v1/chat/completions", "gpt-5")
    m.on_row(ex, ledger_row())
    m.on_row(ex, ledger_row())
    now[0] = 102.5
    assert m.ledger_lag() == 2.5
    m.rows_written([ledger_row()])
    assert m.ledger_lag() == 2.5  # one row still waits
    m.rows_written([ledger_row()])
    assert m.ledger_lag() == 0.0


# -- the ledger's trace columns --


def test_trace_columns_migration_and_older_files(tmp_path):
    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    migrate(con, MIGRATIONS[:-1])  # a ledger from before the trace columns
    assert queries.ledger(con, trace_url="https://t/{trace_id}") == []  # reads it without the new columns
    migrate(con)
    cols = {r[0] for r in con.execute("DESCRIBE requests").fetchall()}
    assert {"trace_id", "span_id"} <= cols


def test_grafana_dashboard_uses_only_metrics_we_export():
    """docs/grafana-spendgate.json: every series it queries exists in a scrape (typos show here)."""
    import json
    import re
    from pathlib import Path
    from types import SimpleNamespace

    from spendgate.telemetry.spans import SpanStats

    dash = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-spendgate.json").read_text())
    used = {name for p in dash["panels"] for t in p["targets"] for name in re.findall(r"spendgate_[a-z_]+", t["expr"])}
    budgets = [{"scope": "organization:acme", "window": "month", "limit_usd": 10.0, "spent_usd": 1.0, "reserved_usd": 0.0}]
    m = PromMetrics(TelemetrySettings(), Sources(
        budget_status=lambda: budgets, span_stats=SpanStats,
        ledger_stats=lambda: SimpleNamespace(pending=0, failures=0, total_failures=0)))
    ex = exchange("api.openai.com", "/v1/chat/completions", "gpt-5")
    ex.extra["refused_by"] = Budget("workspace:platform", "month", Decimal(5), ex.ts, ex.ts)
    m.on_row(ex, ledger_row(stream=True, ttft_ms=5.0))
    m.on_row(ex, ledger_row(outcome="blocked"))
    m.sink_delivery(SimpleNamespace(sink="log", outcome="failed"))
    exported = {n for n, _, _ in scrape(m)}
    assert used and used <= exported, used - exported
    ratio = [v for n, lab, v in scrape(m) if n == "spendgate_budget_used_ratio"]
    assert ratio == [0.1]


def test_metrics_route_needs_the_admin_token():
    from spendgate.web.app import WebApp, WebRequest
    from spendgate.web.server import Caller

    m = PromMetrics(TelemetrySettings())
    app = WebApp(routes={}, post_routes={}, tokens=lambda: ["tok"], metrics=m.payload)
    assert app.handle(WebRequest("GET", "/metrics", {})).status == 401
    assert app.handle(WebRequest("GET", "/metrics", {"authorization": "Bearer nope"})).status == 401
    engineer = app.handle(WebRequest("GET", "/metrics", {}, ambient=Caller("alice", admin=False)))
    assert engineer.status == 403  # an engineer through the proxy's virtual host
    ok = app.handle(WebRequest("GET", "/metrics", {"authorization": "Bearer tok"}))
    assert ok.status == 200 and b"spendgate_requests" in ok.body
    assert ok.headers["Content-Type"].startswith("text/plain")
    om = app.handle(WebRequest("GET", "/metrics", {"authorization": "Bearer tok",
                                                   "accept": "application/openmetrics-text; version=1.0.0"}))
    assert om.headers["Content-Type"].startswith("application/openmetrics-text") and om.body.endswith(b"# EOF\n")


def test_attach_chains_the_gateway_hooks_it_uses():
    """Telemetry.attach: a settlement listener, the ledger's on_written (lag) and the sink record (errors)."""
    from types import SimpleNamespace

    from spendgate.telemetry.service import Telemetry
    from spendgate.workflow.sinks import Delivery

    written, delivered = [], []
    gw = SimpleNamespace(
        meter=SimpleNamespace(listeners=["settle"]),
        ledger=SimpleNamespace(on_written=written.append,
                               stats=SimpleNamespace(pending=0, failures=0, total_failures=2)),
        workflow=SimpleNamespace(dispatcher=SimpleNamespace(record=delivered.append)),
        book=SimpleNamespace(status=lambda: []),
    )
    t = Telemetry.attach(gw, TelemetrySettings())
    assert gw.meter.listeners == ["settle", t.on_row]  # after budgets settled the row
    ex = exchange("api.openai.com", "/v1/chat/completions", "gpt-5")
    row = ledger_row()
    t.on_row(ex, row)
    assert t.metrics.ledger_lag() >= 0 and len(t.metrics._uncommitted) == 1
    gw.ledger.on_written([row])
    assert written == [[row]] and len(t.metrics._uncommitted) == 0
    failed = Delivery("team-hook", "threshold", "failed", 3, "HTTP 500", "user:alice", None)
    gw.workflow.dispatcher.record(failed)
    assert delivered == [failed]
    text = {(n, tuple(sorted(lab.items()))): v for n, lab, v in scrape(t.metrics)}
    assert text[("spendgate_sink_deliveries_total", (("outcome", "failed"), ("sink", "team-hook")))] == 1
    assert text[("spendgate_store_errors_total", ())] == 2
    t.close()


def test_registering_the_gauges_does_not_sum_every_budget():
    """The budget gauge's values are computed when scraped, not at start-up (a 10,000-user policy
    spent half a second there): registering describes the families only."""
    calls = []
    budgets = [{"scope": "organization:acme", "window": "month", "limit_usd": 10.0, "spent_usd": 2.5, "reserved_usd": 0.0}]
    m = PromMetrics(TelemetrySettings(), Sources(budget_status=lambda: calls.append(1) or budgets))
    assert calls == []
    assert [v for n, _, v in scrape(m) if n == "spendgate_budget_used_ratio"] == [0.25]
    assert calls == [1]
