"""A real OTLP receiver for the tests: gRPC and HTTP/protobuf on 127.0.0.1.

- gRPC: a grpcio server with the official ``opentelemetry-proto`` Metrics and
  Trace services.
- HTTP: an ``http.server`` answering ``POST /v1/metrics`` and ``/v1/traces``,
  decoding the protobuf bodies (gzip or not) with the same messages.

Every request is kept with the headers (gRPC metadata) it came with, and
helpers turn them into plain Python values to assert on.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as mpb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mgrpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _point_value(point: Any) -> Any:
    if "value" in point.DESCRIPTOR.oneofs_by_name:  # gauges and sums
        kind = point.WhichOneof("value")
        return None if kind is None else getattr(point, kind)
    return point.count  # histograms: the count


@dataclass
class Received:
    """One export request: the transport, the signal, its headers, the decoded message."""

    transport: str  # "grpc" | "http"
    signal: str  # "metrics" | "traces"
    headers: dict[str, str]
    message: Any


@dataclass
class OTLPReceiver:
    """Start with `start_grpc` / `start_http`; stop with `stop`."""

    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _grpc: Any = None
    _http: ThreadingHTTPServer | None = None
    grpc_endpoint: str | None = None
    http_endpoint: str | None = None

    # -- servers ----------------------------------------------------------------

    def _keep(self, transport: str, signal: str, headers: dict[str, str], message: Any) -> None:
        with self._lock:
            self.requests.append(Received(transport, signal, headers, message))

    def start_grpc(self) -> str:
        """Start the gRPC server; returns ``http://127.0.0.1:<port>``."""
        receiver = self

        class Metrics(mgrpc.MetricsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                receiver._keep("grpc", "metrics", dict(context.invocation_metadata()), request)
                return mpb.ExportMetricsServiceResponse()

        class Traces(tgrpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                receiver._keep("grpc", "traces", dict(context.invocation_metadata()), request)
                return tpb.ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        mgrpc.add_MetricsServiceServicer_to_server(Metrics(), server)
        tgrpc.add_TraceServiceServicer_to_server(Traces(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server
        self.grpc_endpoint = f"http://127.0.0.1:{port}"
        return self.grpc_endpoint

    def start_http(self) -> str:
        """Start the OTLP/HTTP server; returns its base URL ``http://127.0.0.1:<port>``."""
        receiver = self
        routes: dict[str, tuple[str, Any, Any]] = {
            "/v1/metrics": (
                "metrics",
                mpb.ExportMetricsServiceRequest,
                mpb.ExportMetricsServiceResponse,
            ),
            "/v1/traces": ("traces", tpb.ExportTraceServiceRequest, tpb.ExportTraceServiceResponse),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                route = routes.get(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if route is None or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404 if route is None else 415)
                    self.end_headers()
                    return
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                signal, request_type, response_type = route
                message = request_type()
                message.ParseFromString(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._keep("http", signal, headers, message)
                payload = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._http.serve_forever, name="otlp-http", daemon=True).start()
        self.http_endpoint = f"http://127.0.0.1:{self._http.server_port}"
        return self.http_endpoint

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # -- what arrived -----------------------------------------------------------

    def of(self, signal: str, transport: str | None = None) -> list[Received]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.signal == signal and (transport is None or r.transport == transport)
            ]

    def resources(self, signal: str = "metrics") -> list[dict[str, Any]]:
        """The resource attributes of every resource that sent `signal`."""
        field_name = "resource_metrics" if signal == "metrics" else "resource_spans"
        return [
            attributes(rm.resource.attributes)
            for r in self.of(signal)
            for rm in getattr(r.message, field_name)
        ]

    def metrics(self) -> list[tuple[str, Any, Any]]:
        """Every ``(name, metric, point)`` received, in arrival order."""
        out = []
        for r in self.of("metrics"):
            for rm in r.message.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            out.append((metric.name, metric, point))
        return out

    def latest(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """``{metric: [(attributes, value), ...]}`` from the last export that had each metric."""
        last: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for r in self.of("metrics"):
            current: dict[str, list[tuple[dict[str, Any], Any]]] = {}
            for rm in r.message.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        kind = metric.WhichOneof("data")
                        current[metric.name] = [
                            (attributes(p.attributes), _point_value(p))
                            for p in getattr(metric, kind).data_points
                        ]
            last.update(current)
        return last

    def series(self) -> set[tuple[str, tuple[tuple[str, Any], ...]]]:
        """Distinct ``(metric name, attributes)`` pairs over every export received."""
        return {
            (name, tuple(sorted((k, str(v)) for k, v in attributes(point.attributes).items())))
            for name, _, point in self.metrics()
        }

    def spans(self) -> list[dict[str, Any]]:
        """Every span received, as a dict of its ids (hex), name, attributes, status, events."""
        out = []
        for r in self.of("traces"):
            for rs in r.message.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append(
                            {
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "attributes": attributes(span.attributes),
                                "status": span.status.code,
                                "events": [e.name for e in span.events],
                                "event_attributes": [attributes(e.attributes) for e in span.events],
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                            }
                        )
        return out
