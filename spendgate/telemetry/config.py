"""Telemetry settings: what the addon's options and the standard OTEL_* variables ask for."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from spendgate.telemetry import links

MAX_PER_USER_SERIES = 1000  # hard cap of the per-user / per-key metrics opt-in, whatever is asked
DEFAULT_QUEUE = 2048  # spans waiting for the collector before the oldest are dropped


class TelemetryError(ValueError):
    """A setting we cannot start with; the message says what to fix."""


@dataclass(frozen=True)
class TelemetrySettings:
    """Off by default: no export, no own metrics port, no per-user series.

    OTLP endpoint, headers, timeout, TLS and the sampler come from the standard OTEL_* variables
    unless the options below set them (endpoint as a base URL: /v1/traces, /v1/metrics appended).
    """

    otlp: bool = False  # export spans and GenAI metrics over OTLP/HTTP
    otlp_endpoint: str = ""  # base URL, e.g. http://collector:4318; "" -> OTEL_EXPORTER_OTLP_ENDPOINT
    otlp_headers: str = field(default="", repr=False)  # "k=v,k=v"; may hold an API key: never logged
    otlp_timeout: float = 10.0  # seconds per export request (on the exporter's thread)
    otlp_queue: int = DEFAULT_QUEUE
    otlp_delay_ms: int = 1000  # how long spans wait to be batched
    otlp_metrics: bool = True  # also GenAI metrics (OTEL_METRICS_EXPORTER=none turns them off)
    trace_url: str | None = None  # link template (see spendgate.telemetry.links)
    metrics_port: int = -1  # own port for Prometheus scrapers: -1 off, 0 any free port
    metrics_host: str = "127.0.0.1"
    per_user_series: int = 0  # 0: no user/key labels; N: up to N users and N keys, then "other"

    @property
    def otlp_traces(self) -> bool:
        return self.otlp

    @property
    def otlp_metrics_on(self) -> bool:
        return self.otlp and self.otlp_metrics


def settings_from(
    *,
    otlp: bool = False,
    endpoint: str = "",
    headers: str = "",
    timeout: float = 10.0,
    queue: int = DEFAULT_QUEUE,
    trace_url: str = "",
    metrics_port: int = -1,
    metrics_host: str = "127.0.0.1",
    per_user_series: int = 0,
    env: Mapping[str, str] | None = None,
) -> TelemetrySettings:
    """Settings from option values plus the environment; TelemetryError when unusable.

    Export is on when asked by option or by the standard ``OTEL_TRACES_EXPORTER=otlp``;
    ``OTEL_SDK_DISABLED=true`` and ``OTEL_TRACES_EXPORTER=none`` turn it off.
    """
    env = os.environ if env is None else env
    traces_exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    on = (otlp or traces_exporter == "otlp") and traces_exporter != "none"
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        on = False
    if queue < 1:
        raise TelemetryError(f"spendgate_otel_queue must be at least 1 (got {queue})")
    if timeout <= 0:
        raise TelemetryError(f"spendgate_otel_timeout_ms must be positive (got {timeout * 1000:g} ms)")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise TelemetryError(f"spendgate_otel_endpoint must be an http(s) URL (got {endpoint!r})")
    if not 0 <= per_user_series <= MAX_PER_USER_SERIES:
        raise TelemetryError(f"spendgate_metrics_per_user must be 0..{MAX_PER_USER_SERIES} (got {per_user_series})")
    if metrics_port < -1 or metrics_port > 65535:
        raise TelemetryError(f"spendgate_metrics_port must be -1 (off), 0 (any) or a port (got {metrics_port})")
    try:
        template = links.template_from({"option": trace_url, "env": env.get(links.ENV, "")})
    except links.TemplateError as e:
        raise TelemetryError(str(e)) from None
    return TelemetrySettings(
        otlp=on,
        otlp_endpoint=endpoint,
        otlp_headers=headers,
        otlp_timeout=timeout,
        otlp_queue=queue,
        otlp_metrics=env.get("OTEL_METRICS_EXPORTER", "").strip().lower() != "none",
        trace_url=template,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        per_user_series=per_user_series,
    )
