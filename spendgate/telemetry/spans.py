"""One OpenTelemetry span per provider call, following the GenAI semantic conventions.

Conventions followed: the GenAI attributes of OpenTelemetry semantic conventions v1.44.0 (as
shipped in opentelemetry-semantic-conventions 0.66b2, where they are still "Development" and
marked as moving to the semantic-conventions-genai repository). Names that consumers still read
from older versions are emitted as well (`gen_ai.system`, `gen_ai.usage.prompt_tokens`,
`gen_ai.usage.completion_tokens`). Our own facts go under `spendgate.*`. Prompt and completion
text never: the gateway does not keep it.

The span is built after the fact, on the meter's worker thread, from the exchange's real
timestamps (start = when the request reached the gateway, end = start + measured latency), and
handed to a BatchSpanProcessor whose own thread exports it over OTLP/HTTP. Its bounded queue
means a dead or slow collector costs dropped spans (counted in `SpanStats`), never latency.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from spendgate.metering.meter import Exchange
from spendgate.store.ledger import LedgerRow
from spendgate.telemetry.config import TelemetrySettings
from spendgate.telemetry.links import parse_traceparent

log = logging.getLogger(__name__)

SEMCONV_VERSION = "1.44.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
INSTRUMENTATION = "spendgate"

# gen_ai.operation.name per endpoint (semconv well-known values where one fits)
OPERATIONS = {
    "messages": "chat",
    "chat.completions": "chat",
    "responses": "chat",
    "generateContent": "generate_content",
    "streamGenerateContent": "generate_content",
    "embedContent": "embeddings",  # OpenTelemetry GenAI's well-known operation name
    "batchEmbedContents": "embeddings",
}
# gen_ai.provider.name (current) and gen_ai.system (older values) per spendgate provider
PROVIDER_NAMES = {"anthropic": "anthropic", "openai": "openai", "gemini": "gcp.gemini"}
SYSTEM_NAMES = {"anthropic": "anthropic", "openai": "openai", "gemini": "gemini"}


def operation_name(endpoint: str) -> str:
    return OPERATIONS.get(endpoint, endpoint)


def _usd(value: Decimal | None) -> float | None:
    return float(value) if value is not None else None


def error_type(ex: Exchange, row: LedgerRow) -> str | None:
    """`error.type`: the provider's error kind, else the HTTP status, for calls that failed."""
    result = ex.response
    if row.outcome == "blocked":
        return "spendgate.budget_exceeded" if ex.extra.get("refused_by") is not None else "spendgate.refused"
    if row.outcome in ("upstream_error", "interrupted") or (row.status or 0) >= 400:
        if result is not None and result.error:
            return result.error
        if row.status and row.status >= 400:
            return str(row.status)
        return row.outcome
    return None


def span_attributes(ex: Exchange, row: LedgerRow) -> dict[str, Any]:
    """Every attribute of the span for one ledger row (None values left out)."""
    req, result = ex.request, ex.response
    refused = ex.extra.get("refused_by")
    usage_known = row.outcome not in ("blocked", "upstream_error", "unmetered")
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation_name(row.endpoint),
        "gen_ai.provider.name": PROVIDER_NAMES.get(row.provider, row.provider),
        "gen_ai.system": SYSTEM_NAMES.get(row.provider, row.provider),
        "gen_ai.request.model": req.model,
        "gen_ai.response.model": result.model if result is not None and result.model else None,
        "gen_ai.request.max_tokens": req.max_output_tokens,
        "gen_ai.request.stream": row.stream,
        "gen_ai.response.finish_reasons": list(result.finish_reasons) if result and result.finish_reasons else None,
        "gen_ai.conversation.id": row.session_id,
        "server.address": ex.host or None,
        "server.port": 443 if ex.host else None,
        "http.response.status_code": row.status,
        "error.type": error_type(ex, row),
        "spendgate.request_id": row.request_id,
        "spendgate.endpoint": row.endpoint,
        "spendgate.outcome": row.outcome,
        "spendgate.estimated": row.estimated,
        "spendgate.cost_usd": _usd(row.cost_usd),
        "spendgate.charged_usd": _usd(row.charged_usd),
        "spendgate.price_source": row.price_source,
        "spendgate.user": row.user,
        "spendgate.workspace": row.workspace,
        "spendgate.key_fingerprint": row.key_fingerprint,
        "spendgate.client": row.client,
        "spendgate.identity_source": row.identity_source,
        "spendgate.refused_by.scope": refused.scope if refused is not None else None,
        "spendgate.refused_by.window": refused.window if refused is not None else None,
        "spendgate.ttft_ms": row.ttft_ms,
    }
    if usage_known:
        attrs.update({
            # input includes cache reads and writes (the spec: "SHOULD include all types of input tokens")
            "gen_ai.usage.input_tokens": row.input_tokens,
            "gen_ai.usage.output_tokens": row.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": row.cache_read_tokens,
            "gen_ai.usage.cache_creation.input_tokens": row.cache_write_tokens,
            "gen_ai.usage.reasoning.output_tokens": row.reasoning_tokens,
            # older names, still read by OpenLLMetry-style consumers
            "gen_ai.usage.prompt_tokens": row.input_tokens,
            "gen_ai.usage.completion_tokens": row.output_tokens,
            "spendgate.usage.cache_creation_1h.input_tokens": row.cache_write_1h_tokens,
            "spendgate.usage.web_search_requests": row.web_search_requests,
        })  # fmt: skip
    return {k: v for k, v in attrs.items() if v is not None}


def span_name(row: LedgerRow, ex: Exchange) -> str:
    model = row.model or ex.request.model
    op = operation_name(row.endpoint)
    return f"{op} {model}" if model else op


@dataclass
class SpanStats:
    """What became of the spans handed to the exporter (counts since start)."""

    queued: int = 0  # waiting in the processor's queue now
    exported: int = 0
    dropped_queue_full: int = 0  # the queue was full (collector slower than traffic)
    dropped_export_failed: int = 0  # the collector refused or did not answer in time

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_export_failed


class _RateLimitedLogs(logging.Filter):
    """One line per distinct message per 30 seconds: a dead collector must not flood the log."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every = every
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = f"{record.name}:{record.msg}"
        if now - self._last.get(key, -self.every) < self.every:
            return False
        if len(self._last) > 256:
            self._last.clear()
        self._last[key] = now
        return True


_QUIET = _RateLimitedLogs()
for _name in ("opentelemetry.sdk._shared_internal", "opentelemetry.exporter.otlp.proto.http",
              "opentelemetry.exporter.otlp.proto.http.trace_exporter",
              "opentelemetry.exporter.otlp.proto.http.metric_exporter"):
    logging.getLogger(_name).addFilter(_QUIET)


def parse_headers(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` as in OTEL_EXPORTER_OTLP_HEADERS (values URL-decoded); bad pairs skipped."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            out[unquote(key.strip()).lower()] = unquote(value.strip())
    return out


def signal_endpoint(base: str, signal: str) -> str | None:
    """The OTLP/HTTP URL of `signal` ('traces', 'metrics') under a base endpoint option."""
    if not base:
        return None  # the exporter reads OTEL_EXPORTER_OTLP_[SIGNAL_]ENDPOINT itself
    return base.rstrip("/") + f"/v1/{signal}"


def otel_resource():
    import os

    from opentelemetry.sdk.resources import Resource

    from spendgate import __version__

    return Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "spendgate",
                            "service.version": __version__})


class SpanRecorder:
    """The row listener that makes spans, and keeps trace ids for the ledger.

    With export off it only reads the client's `traceparent`, so ledger rows still carry the
    trace id of the agent's own trace (a link can open it); no SDK is loaded.
    """

    def __init__(self, settings: TelemetrySettings) -> None:
        self.settings = settings
        self.stats = SpanStats()
        self._lock = threading.Lock()
        self._tracer = None
        self._processor = None
        self._propagator = None
        if settings.otlp_traces:
            self._start()

    @property
    def exporting(self) -> bool:
        return self._tracer is not None

    def _start(self) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )

        s = self.settings
        stats, lock = self.stats, self._lock

        class CountingExporter(SpanExporter):
            """Counts what the collector took and what it did not."""

            def __init__(self, inner: SpanExporter) -> None:
                self.inner = inner

            def export(self, spans):  # the processor's thread
                with lock:
                    stats.queued = max(stats.queued - len(spans), 0)
                try:
                    result = self.inner.export(spans)
                except Exception:
                    log.exception("span export failed")
                    result = SpanExportResult.FAILURE
                with lock:
                    if result == SpanExportResult.SUCCESS:
                        stats.exported += len(spans)
                    else:
                        stats.dropped_export_failed += len(spans)
                return result

            def shutdown(self) -> None:
                self.inner.shutdown()

            def force_flush(self, timeout_millis: int = 30000) -> bool:
                return self.inner.force_flush(timeout_millis)

        class CountingProcessor(BatchSpanProcessor):
            """BatchSpanProcessor that counts the spans its bounded queue drops."""

            def on_end(self, span) -> None:
                if span.context is not None and span.context.trace_flags.sampled:
                    with lock:
                        if stats.queued >= s.otlp_queue:
                            stats.dropped_queue_full += 1  # the SDK's deque drops its oldest span
                        else:
                            stats.queued += 1
                super().on_end(span)

        exporter = OTLPSpanExporter(
            endpoint=signal_endpoint(s.otlp_endpoint, "traces"),
            headers=parse_headers(s.otlp_headers) if s.otlp_headers else None,
            timeout=s.otlp_timeout,
        )
        self._processor = CountingProcessor(
            CountingExporter(exporter), max_queue_size=s.otlp_queue,
            max_export_batch_size=min(512, s.otlp_queue), schedule_delay_millis=s.otlp_delay_ms,
        )
        provider = TracerProvider(resource=otel_resource())  # sampler: OTEL_TRACES_SAMPLER, parent-based by default
        provider.add_span_processor(self._processor)
        self._provider = provider
        self._tracer = provider.get_tracer(INSTRUMENTATION, schema_url=SCHEMA_URL)
        self._propagator = TraceContextTextMapPropagator()

    # -- the row listener (meter worker thread) --
    def on_row(self, ex: Exchange, row: LedgerRow) -> None:
        parent = parse_traceparent(ex.traceparent)
        if self._tracer is None:
            if parent is not None:
                row.trace_id = parent[0]  # the agent's own trace: the row can still link to it
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        carrier: Mapping[str, str] = {}
        if parent is not None:
            carrier = {"traceparent": ex.traceparent.strip()}
            if ex.tracestate and len(ex.tracestate) <= 512:
                carrier["tracestate"] = ex.tracestate
        context = self._propagator.extract(carrier) if carrier else None
        start_ns = int(ex.ts.timestamp() * 1e9)
        end_ns = start_ns + int((row.latency_ms or 0.0) * 1e6)
        attrs = span_attributes(ex, row)
        span = self._tracer.start_span(
            span_name(row, ex), context=context, kind=SpanKind.CLIENT, attributes=attrs, start_time=start_ns
        )
        if row.ttft_ms is not None and row.stream:
            span.add_event("gen_ai.first_chunk", timestamp=start_ns + int(row.ttft_ms * 1e6))
        if "error.type" in attrs:
            span.set_status(Status(StatusCode.ERROR, attrs["error.type"]))
        span.end(end_time=end_ns)
        sc = span.get_span_context()
        row.trace_id = format(sc.trace_id, "032x")
        row.span_id = format(sc.span_id, "016x") if sc.trace_flags.sampled else None

    def flush(self, timeout: float = 5.0) -> bool:
        if self._processor is None:
            return True
        return self._processor.force_flush(int(timeout * 1000))

    def close(self, timeout: float = 3.0) -> None:
        """Export what is queued, waiting at most `timeout` seconds (a dead collector cannot hold shutdown)."""
        if self._processor is not None:
            processor, self._processor, self._tracer = self._processor, None, None
            if not bounded(processor.shutdown, timeout):
                log.warning("spendgate: the OTLP collector did not take the last spans within %.0f s", timeout)


def bounded(fn, timeout: float) -> bool:
    """Run `fn` on a daemon thread, waiting at most `timeout` seconds; False if it is still running.

    The SDK's shutdowns wait for the exporter (up to its timeout per batch, and 30 s in all):
    the gateway's own shutdown must not.
    """
    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("telemetry shutdown failed")

    t = threading.Thread(target=run, name="spendgate-otel-shutdown", daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive()
