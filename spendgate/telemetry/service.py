"""Telemetry wired into a running gateway: row listeners, ledger and sink hooks, the metrics port.

`Telemetry.attach(gateway)` is the whole integration: it appends its listeners to the meter's
settlement listeners (after budgets settled, before the ledger stores the row, so the row gets
its trace and span ids), chains the ledger's on_written hook (ledger lag) and the sink
dispatcher's record hook (sink errors), and starts the optional metrics port.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from spendgate.metering.meter import Exchange
from spendgate.store.ledger import LedgerRow
from spendgate.telemetry.config import TelemetrySettings
from spendgate.telemetry.metrics import GenAIMetrics, PromMetrics, Sources
from spendgate.telemetry.spans import SpanRecorder

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self, settings: TelemetrySettings, sources: Sources | None = None) -> None:
        self.settings = settings
        self.spans = SpanRecorder(settings)
        sources = sources or Sources()
        if self.spans.exporting:
            sources.span_stats = lambda: self.spans.stats
        self.metrics = PromMetrics(settings, sources)
        self.genai: GenAIMetrics | None = None
        if settings.otlp_metrics_on:
            try:
                self.genai = GenAIMetrics(settings)
            except Exception:
                log.exception("spendgate: OTLP metrics unavailable; spans and Prometheus metrics continue")
        self._server: Any = None
        self._thread: Any = None

    @classmethod
    def attach(cls, gw: Any, settings: TelemetrySettings) -> Telemetry:
        """Build telemetry for `gw` (a spendgate.gateway.Gateway) and hook it in."""
        roster = getattr(getattr(gw, "ingest", None), "roster", None)  # a centre's laptops (spendgate.central)
        t = cls(settings, Sources(budget_status=gw.book.status, ledger_stats=lambda: gw.ledger.stats,
                                  laptops=(lambda: roster.counts(datetime.now(UTC))) if roster is not None else None))
        gw.meter.listeners.append(t.on_row)
        written = gw.ledger.on_written

        def on_written(rows: list[LedgerRow]) -> None:
            try:
                t.metrics.rows_written(rows)
            finally:
                if written:
                    written(rows)

        gw.ledger.on_written = on_written
        dispatcher = getattr(getattr(gw, "workflow", None), "dispatcher", None)
        if dispatcher is not None:
            record = dispatcher.record

            def on_delivery(delivery: Any) -> None:
                try:
                    t.metrics.sink_delivery(delivery)
                except Exception:
                    log.exception("sink metrics failed")
                record(delivery)

            dispatcher.record = on_delivery
        t.start_metrics_port()
        if t.spans.exporting:
            log.info("spendgate: exporting OTLP spans%s", " and GenAI metrics" if t.genai else "")
        return t

    def on_row(self, ex: Exchange, row: LedgerRow) -> None:
        """The settlement listener (meter worker thread). Spans first: they set the row's trace ids."""
        for part in (self.spans, self.metrics, self.genai):
            if part is None:
                continue
            try:
                part.on_row(ex, row)
            except Exception:
                log.exception("telemetry %s failed for %s", type(part).__name__, row.request_id)

    # -- Prometheus --
    def metrics_payload(self, accept: str = "") -> tuple[bytes, str]:
        return self.metrics.payload(accept)

    def start_metrics_port(self) -> None:
        """Serve /metrics on its own port for scrapers (no auth: bind it where only scrapers reach)."""
        if self.settings.metrics_port < 0:
            return
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(
                self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.metrics.registry
            )
        except OSError as e:  # an error logged at start-up stops mitmdump: the operator asked for this port
            log.error("spendgate: cannot serve metrics on %s:%s (%s); change spendgate_metrics_port",
                      self.settings.metrics_host, self.settings.metrics_port, e.strerror or e)
            return
        log.info("spendgate: Prometheus metrics at %s", self.metrics_url)

    @property
    def metrics_url(self) -> str | None:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        """After the meter drained: export what is left (bounded wait), stop the port. Never raises:
        the gateway closes its ledger after this."""
        closers = [self.spans.close, self.genai.close if self.genai else None, self._stop_metrics_port]
        for close in closers:
            if close is None:
                continue
            try:
                close()
            except Exception:
                log.exception("closing telemetry")

    def _stop_metrics_port(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
