"""A local OTLP/HTTP receiver for tests: decodes what exporters POST with opentelemetry-proto.

    with OTLPReceiver() as rx:                      # 127.0.0.1, a free port
        ... run a gateway with spendgate_otel_endpoint=rx.url ...
        spans = rx.wait_for_spans(2)                # [Span(name, trace_id, attributes, ...)]
        points = rx.metric_points("gen_ai.client.token.usage")

Speaks what the OTLP/HTTP spec asks of a receiver: POST /v1/traces and /v1/metrics with
``application/x-protobuf`` bodies (gzip when Content-Encoding says so), 200 with an empty
Export*ServiceResponse. Request headers are kept so tests can check what exporters send.
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind: 3 is CLIENT
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    resource: dict[str, Any]
    scope: str
    schema_url: str
    events: list[tuple[str, int]] = field(default_factory=list)


class OTLPReceiver:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.metrics: list[Any] = []  # ResourceMetrics protos
        self.headers: list[dict[str, str]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> OTLPReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        rx = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                try:
                    if self.path == "/v1/traces":
                        reply = rx._traces(body).SerializeToString()
                    elif self.path == "/v1/metrics":
                        reply = rx._metrics(body).SerializeToString()
                    else:
                        self.send_error(404)
                        return
                except Exception as e:  # a test failure, not a hang
                    rx.errors.append(f"{self.path}: {type(e).__name__}: {e}")
                    self.send_error(400)
                    return
                with rx._lock:
                    rx.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        return H

    def _traces(self, body: bytes) -> ExportTraceServiceResponse:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        got = []
        for rs in req.resource_spans:
            resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(Span(
                        name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), kind=s.kind, start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano, attributes={kv.key: any_value(kv.value) for kv in s.attributes},
                        status_code=s.status.code, resource=resource, scope=ss.scope.name,
                        schema_url=ss.schema_url or rs.schema_url,
                        events=[(e.name, e.time_unix_nano) for e in s.events],
                    ))
        with self._lock:
            self.spans.extend(got)
        return ExportTraceServiceResponse()

    def _metrics(self, body: bytes) -> ExportMetricsServiceResponse:
        req = ExportMetricsServiceRequest()
        req.ParseFromString(body)
        with self._lock:
            self.metrics.extend(req.resource_metrics)
        return ExportMetricsServiceResponse()

    def wait_for_spans(self, n: int, timeout: float = 20.0) -> list[Span]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.spans) >= n:
                    return list(self.spans)
            time.sleep(0.05)
        raise AssertionError(f"receiver got {len(self.spans)} spans, expected {n}; errors: {self.errors}")

    def metric_points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of every point of metric `name` received so far."""
        out = []
        with self._lock:
            for rm in self.metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.name != name:
                            continue
                        data = getattr(m, m.WhichOneof("data"))
                        for p in data.data_points:
                            out.append(({kv.key: any_value(kv.value) for kv in p.attributes}, p))
        return out
