"""Metrics: Prometheus (`/metrics`) always, GenAI metrics over OTLP when export is on.

Prometheus series are labelled by provider, model, outcome and client only: all bounded (the
model label keeps the first `MAX_MODELS` names and folds the rest into "other", since a client
can send any model name). Per-user and per-key series exist only when the operator opts in,
capped at `TelemetrySettings.per_user_series` values each (then "other"). Everything is
updated on the meter's worker thread; scrapes read it on the admin server's threads.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from spendgate.metering.meter import Exchange
from spendgate.store.ledger import LedgerRow
from spendgate.telemetry.config import TelemetrySettings
from spendgate.telemetry.spans import (
    PROVIDER_NAMES,
    SpanStats,
    error_type,
    operation_name,
)

log = logging.getLogger(__name__)

MAX_MODELS = 200  # distinct model label values before "other"
OTHER = "other"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)  # seconds
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # seconds
TOKEN_TYPES = ("input", "output", "cache_read", "cache_creation", "reasoning")
BUDGET_SCOPES = ("organization:", "workspace:")  # bounded by the policy; user/key scopes are not exported


class LabelCap:
    """At most `limit` distinct values of one label; later newcomers become "other"."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str | None, claim: bool = True) -> str:
        """`value` if it has a slot; a newcomer gets one only if `claim` (else "other")."""
        value = value or "unknown"
        if value in self._seen:
            return value
        if claim and len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return OTHER


def answered(row: LedgerRow) -> bool:
    """The provider answered this row's call with success, so its model name is one the provider
    knows: only such rows take a model label slot. A refused or rejected call names whatever the
    client wrote, and 200 made-up names must not fold every real model into "other" (eighth review, E7)."""
    return row.status is not None and 200 <= row.status < 300 and row.outcome not in ("blocked", "upstream_error",
                                                                                      "unmetered")


@dataclass
class Sources:
    """Where gauges read their values at scrape time (any of them may be missing)."""

    budget_status: Callable[[], list[dict[str, Any]]] | None = None  # BudgetBook.status
    ledger_stats: Callable[[], Any] | None = None  # DuckDBLedger.stats (WriterStats)
    span_stats: Callable[[], SpanStats] | None = None
    laptops: Callable[[], tuple[int, int, float]] | None = None  # a centre: (calling in, silent, longest silence s)


class _Gauges:
    """A custom collector: values computed when scraped."""

    def __init__(self, owner: PromMetrics) -> None:
        self.owner = owner

    def describe(self) -> Iterable[Any]:
        """The families without their values: registering with auto_describe calls this instead
        of `collect`, which at start-up summed every budget of the policy (0.5 s at 10,000 users)."""
        return self.collect(values=False)

    def collect(self, values: bool = True) -> Iterable[Any]:
        o = self.owner
        src = o.sources
        ratio = GaugeMetricFamily("spendgate_budget_used_ratio",
                                  "Share of a budget used (spent + reserved over limit), organization and "
                                  "workspace scopes", labels=["scope", "window"])
        if src.budget_status is not None and values:
            try:
                for b in src.budget_status():
                    if b["scope"].startswith(BUDGET_SCOPES):
                        taken = b["spent_usd"] + b.get("reserved_usd", 0.0)
                        limit = b["limit_usd"]
                        ratio.add_metric([b["scope"], b["window"]], taken / limit if limit > 0 else 1.0)
            except Exception:
                log.exception("budget status for metrics failed")
        yield ratio
        lag = GaugeMetricFamily("spendgate_ledger_lag_seconds",
                                "Age of the oldest metered request not yet committed to the ledger (0: none)")
        lag.add_metric([], o.ledger_lag())
        yield lag
        if src.ledger_stats is not None:
            st = src.ledger_stats()
            pending = GaugeMetricFamily("spendgate_ledger_pending_rows", "Rows a failed ledger write is holding")
            pending.add_metric([], float(st.pending))
            yield pending
            errors = CounterMetricFamily("spendgate_store_errors", "Failed ledger (store) writes")
            errors.add_metric([], float(getattr(st, "total_failures", st.failures)))
            yield errors
            healthy = GaugeMetricFamily("spendgate_ledger_healthy", "1 when the last ledger write succeeded")
            healthy.add_metric([], 1.0 if st.failures == 0 else 0.0)
            yield healthy
        if src.laptops is not None:
            try:
                calling, silent, longest = src.laptops()
                known = GaugeMetricFamily("spendgate_central_laptops", "Laptops known to this centre, by whether they "
                                          "called in within the silence threshold (72 h)", labels=["state"])
                known.add_metric(["reporting"], float(calling))
                known.add_metric(["silent"], float(silent))
                yield known
                quiet = GaugeMetricFamily("spendgate_central_laptop_silence_max_seconds",
                                          "Seconds since the longest-silent known laptop last called the centre")
                quiet.add_metric([], longest)
                yield quiet
            except Exception:
                log.exception("laptop roster for metrics failed")
        if src.span_stats is not None:
            ss = src.span_stats()
            spans = CounterMetricFamily("spendgate_otel_spans", "Spans handed to the OTLP exporter, by result",
                                        labels=["result"])
            spans.add_metric(["exported"], float(ss.exported))
            spans.add_metric(["dropped_queue_full"], float(ss.dropped_queue_full))
            spans.add_metric(["dropped_export_failed"], float(ss.dropped_export_failed))
            yield spans
            queued = GaugeMetricFamily("spendgate_otel_spans_queued", "Spans waiting for the collector")
            queued.add_metric([], float(ss.queued))
            yield queued


class PromMetrics:
    """Prometheus metrics of metered traffic, in a registry of their own."""

    def __init__(self, settings: TelemetrySettings, sources: Sources | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.sources = sources or Sources()
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        base = ["provider", "model", "client"]
        self.requests = Counter("spendgate_requests", "Provider calls the gateway metered, by outcome",
                                [*base, "outcome"], registry=r)
        self.tokens = Counter("spendgate_tokens", "Tokens by type (input includes cache reads and writes; "
                              "output includes reasoning)", [*base, "type"], registry=r)
        self.cost = Counter("spendgate_cost_usd", "Provider cost of metered calls (USD, list price)", base,
                            registry=r)
        self.charged = Counter("spendgate_charged_usd", "What budgets were charged (USD)", base, registry=r)
        self.blocked = Counter("spendgate_blocked_requests", "Requests refused before reaching the provider, by the "
                               "kind of budget that refused (policy: unpriced model or store failure)",
                               [*base, "budget", "window"], registry=r)
        self.duration = Histogram("spendgate_request_duration_seconds", "Time from request to the end of the "
                                  "response, as the gateway saw it", [*base, "outcome"], buckets=DURATION_BUCKETS,
                                  registry=r)
        self.ttft = Histogram("spendgate_time_to_first_token_seconds", "Time from request to the first response "
                              "byte of a streamed answer", [*base, "outcome"], buckets=TTFT_BUCKETS, registry=r)
        self.sink_deliveries = Counter("spendgate_sink_deliveries", "Alert sink deliveries by outcome "
                                       "(failed and dropped are sink errors)", ["sink", "outcome"], registry=r)
        self.per_user = settings.per_user_series
        if self.per_user:
            self.user_cost = Counter("spendgate_user_cost_usd", "Cost per user (opt-in, capped series)", ["user"],
                                     registry=r)
            self.user_requests = Counter("spendgate_user_requests", "Requests per user (opt-in, capped series)",
                                         ["user"], registry=r)
            self.key_cost = Counter("spendgate_key_cost_usd", "Cost per API key fingerprint (opt-in, capped "
                                    "series)", ["key"], registry=r)
            self._users = LabelCap(self.per_user)
            self._keys = LabelCap(self.per_user)
        self._models = LabelCap(MAX_MODELS)
        self._sinks = LabelCap(64)
        self._children: dict[tuple, Any] = {}  # bounded: every label is capped or a fixed set
        self._uncommitted: collections.deque[float] = collections.deque()  # when rows went to the ledger
        self._lag_lock = threading.Lock()
        r.register(_Gauges(self))

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: the lookup is most of a row's cost otherwise."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- the row listener (meter worker thread) --
    def on_row(self, ex: Exchange, row: LedgerRow) -> None:
        labels = (row.provider, self._models(row.model or ex.request.model, answered(row)), row.client)
        child = self._child
        child(self.requests, *labels, row.outcome).inc()
        if row.outcome not in ("blocked", "upstream_error", "unmetered"):
            for kind, n in zip(TOKEN_TYPES, (row.input_tokens, row.output_tokens, row.cache_read_tokens,
                                             row.cache_write_tokens, row.reasoning_tokens)):
                if n:
                    child(self.tokens, *labels, kind).inc(n)
        if row.cost_usd:
            child(self.cost, *labels).inc(float(row.cost_usd))
        if row.charged_usd:
            child(self.charged, *labels).inc(float(row.charged_usd))
        if row.outcome == "blocked":
            refused = ex.extra.get("refused_by")
            kind = refused.scope.partition(":")[0] if refused is not None else "policy"
            child(self.blocked, *labels, kind, refused.window if refused is not None else "").inc()
        if row.latency_ms is not None:
            child(self.duration, *labels, row.outcome).observe(row.latency_ms / 1000)
        if row.ttft_ms is not None and row.stream:
            child(self.ttft, *labels, row.outcome).observe(row.ttft_ms / 1000)
        if self.per_user:
            user = self._users(row.user)
            self.user_requests.labels(user).inc()
            if row.cost_usd:
                self.user_cost.labels(user).inc(float(row.cost_usd))
                if row.key_fingerprint:
                    self.key_cost.labels(self._keys(row.key_fingerprint)).inc(float(row.cost_usd))
        with self._lag_lock:
            self._uncommitted.append(self.clock())

    def rows_written(self, rows: list[LedgerRow]) -> None:
        """The ledger committed these rows (its writer thread): they no longer lag."""
        with self._lag_lock:
            for _ in range(min(len(rows), len(self._uncommitted))):
                self._uncommitted.popleft()

    def ledger_lag(self) -> float:
        with self._lag_lock:
            return max(self.clock() - self._uncommitted[0], 0.0) if self._uncommitted else 0.0

    def sink_delivery(self, delivery: Any) -> None:
        self.sink_deliveries.labels(self._sinks(delivery.sink), delivery.outcome).inc()

    # -- exposition --
    def payload(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when `accept` asks for it) and its content type."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


class GenAIMetrics:
    """The GenAI semantic-convention metrics, exported over OTLP/HTTP by the SDK's own thread."""

    def __init__(self, settings: TelemetrySettings) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter,
        )
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        from spendgate.telemetry.spans import (
            SCHEMA_URL,
            otel_resource,
            parse_headers,
            signal_endpoint,
        )

        exporter = OTLPMetricExporter(
            endpoint=signal_endpoint(settings.otlp_endpoint, "metrics"),
            headers=parse_headers(settings.otlp_headers) if settings.otlp_headers else None,
            timeout=settings.otlp_timeout,
        )
        self.provider = MeterProvider(resource=otel_resource(), metric_readers=[PeriodicExportingMetricReader(exporter)])
        meter = self.provider.get_meter("spendgate", schema_url=SCHEMA_URL)
        # bucket boundaries the GenAI conventions advise
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=[1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576,
                                                 4194304, 16777216, 67108864])
        seconds = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=seconds)
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=seconds)
        self.cost = meter.create_counter("spendgate.client.cost", unit="USD",
                                         description="Provider cost of metered calls (list price).")
        self._models = LabelCap(MAX_MODELS)

    def on_row(self, ex: Exchange, row: LedgerRow) -> None:
        real = answered(row)
        model = self._models(ex.request.model or row.model, real)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation_name(row.endpoint),
            "gen_ai.provider.name": PROVIDER_NAMES.get(row.provider, row.provider),
            "gen_ai.request.model": model,
        }
        if row.model:
            attrs["gen_ai.response.model"] = self._models(row.model, real)
        if ex.host:
            attrs["server.address"] = ex.host
        err = error_type(ex, row)
        if err:
            attrs["error.type"] = err
        if row.latency_ms is not None:
            self.duration.record(row.latency_ms / 1000, attrs)
        if row.ttft_ms is not None and row.stream:
            self.first_chunk.record(row.ttft_ms / 1000, attrs)
        if row.outcome not in ("blocked", "upstream_error", "unmetered"):
            self.token_usage.record(row.input_tokens, {**attrs, "gen_ai.token.type": "input"})
            self.token_usage.record(row.output_tokens, {**attrs, "gen_ai.token.type": "output"})
        if row.cost_usd:
            self.cost.add(float(row.cost_usd), {**attrs, "spendgate.client": row.client})

    def close(self, timeout: float = 3.0) -> None:
        """Export the last values; a dead collector holds shutdown at most `timeout` seconds."""
        from spendgate.telemetry.spans import bounded

        if not bounded(lambda: self.provider.shutdown(timeout_millis=timeout * 1000), timeout):
            log.warning("spendgate: the OTLP collector did not take the last metrics within %.0f s", timeout)
