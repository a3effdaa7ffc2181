"""OTLP backend: the run's metrics and spans to an OpenTelemetry collector.

Backend ``"otlp"`` (extra ``otlp``). It hands the run's providers the OTel
SDK's own exporters — ``OTLPMetricExporter`` behind a
``PeriodicExportingMetricReader`` and ``OTLPSpanExporter`` behind a
``BatchSpanProcessor`` — over gRPC (the default) or HTTP/protobuf.

Every standard ``OTEL_EXPORTER_OTLP_*`` variable keeps its meaning, because
the SDK exporters read them themselves: endpoint and per-signal endpoints,
headers, timeout, insecure, compression, certificates, temporality
preference. tracelet passes only what ``config`` sets explicitly:

- ``endpoint``: like ``OTEL_EXPORTER_OTLP_ENDPOINT`` (for HTTP the base URL,
  ``/v1/metrics`` and ``/v1/traces`` are appended); it wins over the variables.
- ``headers``: replace ``OTEL_EXPORTER_OTLP_HEADERS`` when given.
- ``protocol``: ``"grpc"`` or ``"http/protobuf"``; else
  ``OTEL_EXPORTER_OTLP_{METRICS,TRACES}_PROTOCOL``, ``OTEL_EXPORTER_OTLP_PROTOCOL``,
  then gRPC.

Metrics are pushed every ``metrics_interval`` seconds, unless
``OTEL_METRIC_EXPORT_INTERVAL`` is set. Gauges are always exported with
CUMULATIVE temporality (a gauge keeps reporting its latest value), whatever
``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` says for counters.
An export that fails is logged by the SDK and not retried past its timeout:
this channel carries latest values, the exact history goes to the trackers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from tracelet.export import ExporterOptions, TelemetryBackend, TelemetryContext

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["OTLPBackend", "OTLPOptions", "protocol_for", "timeout_seconds"]

Protocol = Literal["grpc", "http/protobuf"]
PROTOCOLS: tuple[str, ...] = ("grpc", "http/protobuf")
Signal = Literal["metrics", "traces"]


def protocol_for(signal: Signal, configured: str | None, environ: Mapping[str, str]) -> Protocol:
    """The transport of one signal: `configured`, else the OTel variables, else gRPC.

    Raises:
        ValueError: a protocol other than ``grpc`` or ``http/protobuf``.
    """
    source, value = "config['protocol']", configured
    if value is None:
        names = (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        for name in names:
            if environ.get(name, "").strip():
                source, value = name, environ[name].strip()
                break
    if value is None:
        return "grpc"
    if value not in PROTOCOLS:
        raise ValueError(
            f"{source}={value!r} is not supported by tracelet's otlp backend; "
            f"use one of {', '.join(map(repr, PROTOCOLS))}"
        )
    return value  # type: ignore[return-value]


def timeout_seconds(signal: Signal, environ: Mapping[str, str]) -> float:
    """How long the SDK exporter of `signal` may spend on one export (its own rule: seconds)."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        try:
            return float(environ[name])
        except (KeyError, ValueError):
            continue
    return 10.0


def signal_endpoint(protocol: Protocol, endpoint: str | None, signal: Signal) -> str | None:
    """The ``endpoint`` argument of a signal's SDK exporter for a ``config`` endpoint.

    gRPC takes the endpoint as it is; OTLP/HTTP exporters take a full URL,
    so the signal path is appended as the SDK does for ``OTEL_EXPORTER_OTLP_ENDPOINT``.
    """
    if endpoint is None or protocol == "grpc":
        return endpoint
    return f"{endpoint.rstrip('/')}/v1/{signal}"


class OTLPOptions(ExporterOptions):
    """What ``config`` may carry for the otlp backend (the rest comes from ``OTEL_*``)."""

    #: Collector address, e.g. ``http://127.0.0.1:4317`` (gRPC) or
    #: ``http://127.0.0.1:4318`` (HTTP); wins over ``OTEL_EXPORTER_OTLP_*ENDPOINT``.
    endpoint: str | None = Field(default=None, min_length=1)
    #: Request headers (e.g. an auth token); replace ``OTEL_EXPORTER_OTLP_HEADERS``.
    headers: dict[str, str] | None = None
    #: ``"grpc"`` or ``"http/protobuf"``; else the ``OTEL_EXPORTER_OTLP_*PROTOCOL`` variables.
    protocol: Protocol | None = None

    @model_validator(mode="after")
    def _env_protocols_are_supported(self) -> OTLPOptions:
        # Checked with the config, before the run starts, so a typo in the
        # environment is an error at start_logging and not a silent gap later.
        for signal in ("metrics", "traces"):
            protocol_for(signal, self.protocol, os.environ)
        return self

    def __repr_args__(self) -> Any:  # headers may hold secrets: never in a repr or a log
        for key, value in super().__repr_args__():
            yield key, ("<redacted>" if key == "headers" and value else value)


class OTLPBackend(TelemetryBackend):
    """Backend ``"otlp"``: metrics and traces to an OTLP endpoint."""

    name = "otlp"
    options = OTLPOptions
    requires = ("opentelemetry.exporter.otlp.proto.grpc", "opentelemetry.exporter.otlp.proto.http")
    extra = "otlp"
    config: OTLPOptions

    def __init__(self, options: ExporterOptions | None = None) -> None:
        super().__init__(options)
        self._exporters: list[MetricExporter | SpanExporter] = []
        self.flush_timeout_millis = 1000 * max(
            timeout_seconds("metrics", os.environ), timeout_seconds("traces", os.environ)
        )

    def _kwargs(self, protocol: Protocol, signal: Signal) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        endpoint = signal_endpoint(protocol, self.config.endpoint, signal)
        if endpoint is not None:
            kwargs["endpoint"] = endpoint
        if self.config.headers is not None:
            kwargs["headers"] = dict(self.config.headers)
        return kwargs

    def metric_readers(self, context: TelemetryContext) -> Sequence[MetricReader]:
        from opentelemetry.sdk.metrics import ObservableGauge, _Gauge
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            PeriodicExportingMetricReader,
        )

        protocol = protocol_for("metrics", self.config.protocol, os.environ)
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
                OTLPMetricExporter,
            )
        # Gauges stay CUMULATIVE whatever the temporality preference says
        # (facts-otel §10): a latest value must be reported at every export.
        exporter = OTLPMetricExporter(
            preferred_temporality={
                _Gauge: AggregationTemporality.CUMULATIVE,
                ObservableGauge: AggregationTemporality.CUMULATIVE,
            },
            **self._kwargs(protocol, "metrics"),
        )
        self._exporters.append(exporter)
        return [
            PeriodicExportingMetricReader(
                exporter, export_interval_millis=context.export_interval_millis
            )
        ]

    def span_processors(self, context: TelemetryContext) -> Sequence[SpanProcessor]:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        protocol = protocol_for("traces", self.config.protocol, os.environ)
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
        exporter = OTLPSpanExporter(**self._kwargs(protocol, "traces"))
        self._exporters.append(exporter)
        return [BatchSpanProcessor(exporter)]

    def abort(self) -> None:
        from opentelemetry.sdk.trace.export import SpanExporter

        # The SDK exporters stop retrying once shut down; the providers' own
        # shutdown then finds them closed and returns at once.
        for exporter in self._exporters:
            if getattr(exporter, "_shutdown", False):
                continue
            if isinstance(exporter, SpanExporter):  # no timeout: the HTTP one takes no argument
                exporter.shutdown()
            else:
                exporter.shutdown(timeout_millis=0)
