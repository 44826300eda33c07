"""Telemetry: OpenTelemetry GenAI spans and metrics over OTLP, Prometheus metrics, trace links.

Everything here hangs off the meter's settlement listeners (`Meter.listeners`): a row listener
runs on the meter's worker thread after budgets settled the row and before the ledger stores it,
so nothing here ever runs on the proxy's event loop. Export happens on the OpenTelemetry SDK's
own threads. See docs/telemetry.md.

`links` is dependency-free (reports and the CLI import it); `spans` and `metrics` import the
OpenTelemetry SDK and prometheus_client only when built.
"""
