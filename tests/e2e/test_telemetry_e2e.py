"""Telemetry end to end: official SDKs -> real mitmdump + spendgate -> fake provider, with a local
OTLP/HTTP receiver (decoding protobuf with opentelemetry-proto) and Prometheus scrapes.

Token counts and costs are the fake provider's documented usage (see test_metering_e2e for the
published prices): Anthropic input 1200 + cache read 300 + cache writes 300 = 1800 (the spec's
input includes cached), output 450, cost $0.01179; OpenAI chat prompt 1600 (cached 400), output
450 (reasoning 120), cost $0.00605.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import anthropic
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_dashboard_e2e import chromium
from tests.support import ANTHROPIC_KEY, OPENAI_KEY
from tests.support.gateway import free_port
from tests.support.otlp_receiver import OTLPReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

M = 1_000_000
ANTHROPIC_COST = 1200 * 3.00 / M + 300 * 0.30 / M + 200 * 3.75 / M + 100 * 6.00 / M + 450 * 15.00 / M  # 0.01179
CHAT_COST = (1600 - 400) * 1.25 / M + 400 * 0.125 / M + 450 * 10.00 / M  # 0.00605
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
LINK = "http://127.0.0.1:16686/trace/{trace_id}"
CLIENT_SPAN = 3  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_CLIENT
STATUS_ERROR = 2

# tester may spend $0.015 a day: the chat call ($0.00605) and one Anthropic call ($0.01179) pass,
# a second Anthropic call (estimate ~$0.0015 on top of $0.01784) is refused by the user's day budget
POLICY = """version: 1
timezone: UTC
organization: {name: acme, budgets: {month: 100}}
identity: [local_user]
defaults:
  user: {day: 0.015}
workspaces:
  platform: {members: [tester], budgets: {month: 50}}
"""


def write_policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    return p


def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of `name` samples whose labels include `labels` (0 when none)."""
    return sum(v for n, lab, v in samples(text) if n == name and all(lab.get(k) == x for k, x in labels.items()))


def wait_until(fn, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def discovery(gw) -> dict:
    return json.loads(Path(str(gw.db) + ".gateway.json").read_text())


def traffic(gw, *, traceparent: bool = True) -> tuple[dict, dict, dict]:
    """A streamed OpenAI chat call, an Anthropic call (with the client's traceparent), a refused one."""
    import openai

    oc = openai.OpenAI(api_key=OPENAI_KEY, http_client=gw.http_client(), max_retries=0)
    stream = oc.chat.completions.create(model="gpt-5", max_tokens=100, stream=True,
                                        stream_options={"include_usage": True},
                                        messages=[{"role": "user", "content": "hi"}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    ac = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
    headers = {"traceparent": TRACEPARENT} if traceparent else {}
    msg = ac.messages.create(model="claude-sonnet-4-5", max_tokens=100, extra_headers=headers,
                             messages=[{"role": "user", "content": "hi"}])
    assert msg.usage.output_tokens == 450
    gw.ledger(wait_for=2)  # both settled: the day budget now holds $0.01784 of $0.015
    with pytest.raises(anthropic.RateLimitError):
        ac.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    rows = gw.ledger(wait_for=3)
    chat = next(r for r in rows if r["provider"] == "openai")
    ok = next(r for r in rows if r["provider"] == "anthropic" and r["outcome"] == "ok")
    blocked = next(r for r in rows if r["outcome"] == "blocked")
    return chat, ok, blocked


def ts_ns(row: dict) -> int:
    t = dt.datetime.fromisoformat(row["ts"].replace("Z", "+00:00"))
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def test_spans_links_and_metrics_end_to_end(tmp_path, gateway_factory, fake_provider):
    metrics_port = free_port()
    with OTLPReceiver() as rx:
        gw = gateway_factory(policy=write_policy(tmp_path), extra_args=[
            "--set", "spendgate_otel=true", "--set", f"spendgate_otel_endpoint={rx.url}",
            "--set", f"spendgate_trace_url={LINK}", "--set", f"spendgate_metrics_port={metrics_port}",
        ]).start()
        chat, ok, blocked = traffic(gw)
        spans = {s.attributes["spendgate.request_id"]: s for s in rx.wait_for_spans(3)}
        assert len(spans) == 3 and not rx.errors

        # -- the Anthropic call: joins the client's trace, exact usage, our facts, no text --
        s = spans[ok["request_id"]]
        assert (s.name, s.kind, s.trace_id, s.parent_span_id) == ("chat claude-sonnet-4-5", CLIENT_SPAN, TRACE, PARENT)
        a = s.attributes
        expected = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic", "gen_ai.system": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.response.model": "claude-sonnet-4-5",
            "gen_ai.request.max_tokens": 100, "gen_ai.request.stream": False,
            "gen_ai.response.finish_reasons": ["end_turn"],
            "gen_ai.usage.input_tokens": 1800, "gen_ai.usage.output_tokens": 450,
            "gen_ai.usage.cache_read.input_tokens": 300, "gen_ai.usage.cache_creation.input_tokens": 300,
            "gen_ai.usage.reasoning.output_tokens": 0, "gen_ai.usage.prompt_tokens": 1800,
            "gen_ai.usage.completion_tokens": 450, "server.address": "api.anthropic.com", "server.port": 443,
            "http.response.status_code": 200, "spendgate.outcome": "ok", "spendgate.user": "tester",
            "spendgate.workspace": "platform", "spendgate.key_fingerprint": ok["key_fingerprint"],
            "spendgate.client": "anthropic-sdk", "spendgate.price_source": ok["price_source"],
            "spendgate.estimated": False, "spendgate.endpoint": "messages",
        }  # fmt: skip
        assert {k: a.get(k) for k in expected} == expected
        assert a["spendgate.cost_usd"] == pytest.approx(ANTHROPIC_COST, rel=1e-9)
        assert a["spendgate.charged_usd"] == pytest.approx(ANTHROPIC_COST, rel=1e-9)
        assert "error.type" not in a and s.status_code != STATUS_ERROR
        assert not [k for k in a if k.startswith(("gen_ai.prompt", "gen_ai.completion", "gen_ai.input", "gen_ai.output"))]
        assert not [v for v in a.values() if isinstance(v, str) and ANTHROPIC_KEY in v]
        assert s.resource["service.name"] == "spendgate" and s.schema_url.endswith("/1.44.0")
        # the exchange's own timestamps: start when the request arrived, end after the measured latency
        assert abs(s.start_ns - ts_ns(ok)) < 2_000
        assert abs((s.end_ns - s.start_ns) - ok["latency_ms"] * 1e6) < 2_000
        assert (ok["trace_id"], ok["span_id"]) == (TRACE, s.span_id)

        # -- the streamed chat call: a new trace, first-chunk event, reasoning tokens --
        c = spans[chat["request_id"]]
        assert c.name == "chat gpt-5" and c.parent_span_id == "" and c.trace_id != TRACE
        assert (chat["trace_id"], chat["span_id"]) == (c.trace_id, c.span_id)
        ca = c.attributes
        assert {k: ca.get(k) for k in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                                       "gen_ai.usage.cache_read.input_tokens",
                                       "gen_ai.usage.cache_creation.input_tokens",
                                       "gen_ai.usage.reasoning.output_tokens", "gen_ai.response.finish_reasons",
                                       "gen_ai.request.stream", "gen_ai.provider.name", "server.address")} == {
            "gen_ai.usage.input_tokens": 1600, "gen_ai.usage.output_tokens": 450,
            "gen_ai.usage.cache_read.input_tokens": 400, "gen_ai.usage.cache_creation.input_tokens": 0,
            "gen_ai.usage.reasoning.output_tokens": 120, "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.request.stream": True, "gen_ai.provider.name": "openai", "server.address": "api.openai.com"}
        assert ca["spendgate.cost_usd"] == pytest.approx(CHAT_COST, rel=1e-9)
        assert [name for name, _ in c.events] == ["gen_ai.first_chunk"]

        # -- the refused call: which budget refused, an error, no usage --
        b = spans[blocked["request_id"]]
        ba = b.attributes
        assert (ba["spendgate.outcome"], ba["error.type"], ba["spendgate.refused_by.scope"],
                ba["spendgate.refused_by.window"], ba["http.response.status_code"]) == (
            "blocked", "spendgate.budget_exceeded", "user:tester", "day", 429)
        assert b.status_code == STATUS_ERROR and not [k for k in ba if k.startswith("gen_ai.usage.")]

        # -- trace links: the CLI's table, through the running gateway's admin API --
        out = gw.cli("ledger", check=True).stdout
        assert LINK.format(trace_id=TRACE) in out and LINK.format(trace_id=c.trace_id) in out
        info = discovery(gw)
        status, body = http_get(f"{info['url']}/api/overview", info["token"])
        latest = {r["request_id"]: r for r in json.loads(body)["latest"]}
        assert latest[ok["request_id"]]["trace_url"] == LINK.format(trace_id=TRACE)
        # the dashboard draws it as a link, in a real browser
        dom = chromium(f"{info['url']}/#token={info['token']}", tmp_path / "chromium", "--dump-dom")
        assert 'data-ready="1"' in dom, dom[-3000:]
        assert f'href="{LINK.format(trace_id=TRACE)}"' in dom and 'rel="noopener noreferrer"' in dom

        # -- Prometheus: admin port needs the token; the own port does not --
        assert http_get(f"{info['url']}/metrics")[0] == 401
        status, text = http_get(f"{info['url']}/metrics", info["token"])
        assert status == 200
        a_lab = dict(provider="anthropic", model="claude-sonnet-4-5", client="anthropic-sdk")
        o_lab = dict(provider="openai", model="gpt-5", client=chat["client"])
        assert value(text, "spendgate_requests_total", **a_lab, outcome="ok") == 1
        assert value(text, "spendgate_requests_total", **a_lab, outcome="blocked") == 1
        assert value(text, "spendgate_requests_total", **o_lab, outcome="ok") == 1
        assert value(text, "spendgate_tokens_total", **a_lab, type="input") == 1800
        assert value(text, "spendgate_tokens_total", **a_lab, type="cache_read") == 300
        assert value(text, "spendgate_tokens_total", **a_lab, type="cache_creation") == 300
        assert value(text, "spendgate_tokens_total", **a_lab, type="output") == 450
        assert value(text, "spendgate_tokens_total", **o_lab, type="reasoning") == 120
        assert value(text, "spendgate_cost_usd_total", **a_lab) == pytest.approx(ANTHROPIC_COST, rel=1e-9)
        assert value(text, "spendgate_cost_usd_total", **o_lab) == pytest.approx(CHAT_COST, rel=1e-9)
        assert value(text, "spendgate_blocked_requests_total", **a_lab, budget="user", window="day") == 1
        assert value(text, "spendgate_request_duration_seconds_count", **a_lab, outcome="ok") == 1
        assert value(text, "spendgate_time_to_first_token_seconds_count", **o_lab, outcome="ok") == 1
        assert value(text, "spendgate_budget_used_ratio", scope="workspace:platform", window="month") == \
            pytest.approx((ANTHROPIC_COST + CHAT_COST) / 50, rel=1e-6)
        assert value(text, "spendgate_budget_used_ratio", scope="organization:acme", window="month") == \
            pytest.approx((ANTHROPIC_COST + CHAT_COST) / 100, rel=1e-6)
        assert not [lab for _, lab, _ in samples(text) if "user" in lab or "key" in lab]  # no per-user series
        assert not [n for n, _, _ in samples(text) if n.startswith(("spendgate_user_", "spendgate_key_"))]
        own = f"http://127.0.0.1:{metrics_port}/metrics"
        assert wait_until(lambda: value(http_get(own)[1], "spendgate_otel_spans_total", result="exported") == 3)
        assert value(http_get(own)[1], "spendgate_ledger_lag_seconds") == 0

        # -- GenAI metrics over OTLP: the last export happens at shutdown --
        assert gw.stop() == 0
        usage = rx.metric_points("gen_ai.client.token.usage")
        by = {(p[0]["gen_ai.provider.name"], p[0]["gen_ai.token.type"]): p[1] for p in usage}
        assert (by[("anthropic", "input")].sum, by[("anthropic", "input")].count) == (1800, 1)
        assert (by[("anthropic", "output")].sum, by[("openai", "input")].sum) == (450, 1600)
        durations = rx.metric_points("gen_ai.client.operation.duration")
        assert sum(p.count for _, p in durations) == 3
        assert any(a.get("error.type") == "spendgate.budget_exceeded" for a, _ in durations)
        first = rx.metric_points("gen_ai.client.operation.time_to_first_chunk")
        assert [(a["gen_ai.provider.name"], p.count) for a, p in first] == [("openai", 1)]
        assert "Traceback" not in gw.log_text()  # shutdown closed telemetry, then the ledger, cleanly


def test_export_off_sends_nothing_but_rows_keep_the_clients_trace(tmp_path, gateway_factory, fake_provider):
    with OTLPReceiver() as rx:
        gw = gateway_factory(policy=write_policy(tmp_path),
                             extra_args=["--set", f"spendgate_otel_endpoint={rx.url}"]).start()
        chat, ok, blocked = traffic(gw)
        assert (ok["trace_id"], ok["span_id"]) == (TRACE, None)  # the agent's own trace, for links
        assert chat["trace_id"] is None and blocked["trace_id"] is None
        info = discovery(gw)
        status, text = http_get(f"{info['url']}/metrics", info["token"])
        assert status == 200 and "spendgate_otel_spans" not in text
        assert gw.stop() == 0  # the process is gone: anything it would send was sent
        assert rx.spans == [] and rx.metrics == [] and rx.headers == []
    # the file, read without a gateway: the link comes from --trace-url
    out = gw.cli("ledger", "--trace-url", "https://tempo.example/trace/{trace_uuid}", check=True).stdout
    assert "https://tempo.example/trace/4bf92f35-77b3-4da6-a3ce-929d0e0e4736" in out
    bad = gw.cli("ledger", "--trace-url", "javascript:alert({trace_id})")
    assert bad.returncode == 2 and "http" in bad.stderr


def test_dead_collector_never_fails_traffic_and_drops_are_counted(tmp_path, gateway_factory, fake_provider):
    """A collector that accepts connections and never answers: exports time out on their own thread."""
    metrics_port = free_port()
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)  # never accepted, never answered
        gw = gateway_factory(extra_args=[
            "--set", "spendgate_otel=true", "--set", f"spendgate_otel_endpoint=http://127.0.0.1:{hole.getsockname()[1]}",
            "--set", "spendgate_otel_timeout_ms=500", "--set", "spendgate_otel_queue=2",
            "--set", f"spendgate_metrics_port={metrics_port}",
        ]).start()
        ac = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
        n = 6
        for _ in range(n):
            msg = ac.messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                     messages=[{"role": "user", "content": "hi"}])
            assert msg.usage.output_tokens == 450
        rows = gw.ledger(wait_for=n)
        assert [r["outcome"] for r in rows] == ["ok"] * n and all(r["span_id"] for r in rows)
        own = f"http://127.0.0.1:{metrics_port}/metrics"

        def dropped() -> float:
            text = http_get(own)[1]
            return value(text, "spendgate_otel_spans_total", result="dropped_queue_full") + \
                value(text, "spendgate_otel_spans_total", result="dropped_export_failed")

        assert wait_until(lambda: dropped() == n), http_get(own)[1]
        text = http_get(own)[1]
        assert value(text, "spendgate_otel_spans_total", result="exported") == 0
        assert value(text, "spendgate_requests_total", outcome="ok") == n
        assert gw.stop() == 0
        assert "Traceback" not in gw.log_text()
