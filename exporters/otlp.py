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
An export that fails is not retried past its timeout: this channel carries
latest values, the exact history goes to the trackers.

Without a collector (none listening, a wrong endpoint) the user reads one
line, ``tracelet: no OTLP collector answers at localhost:4317 ...; telemetry
for this run is dropped``, instead of the SDK's retry and shutdown messages
(those go to DEBUG, shown when the ``opentelemetry`` loggers are set to
DEBUG). And the end of such a run waits on OTLP for `UNANSWERED_FLUSH_SECONDS`
at most instead of the exporters' whole timeout: the SDK retries an export
with backoff until that timeout (10 s by default), which without a collector
only delays the end. A collector that has answered keeps the whole timeout.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from tracelet.export import ExporterOptions, TelemetryBackend, TelemetryContext

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExporter

_log = logging.getLogger("tracelet.exporters.otlp")

#: How long the end of a run waits on exports to a collector that has not
#: answered this run yet, or failed the last time: enough for one export to
#: a collector that is up, far less than the SDK's retries (10 s by default).
UNANSWERED_FLUSH_SECONDS = 2.0
#: The SDK exporters' loggers (gRPC and HTTP, metrics and traces, the shared client).
SDK_LOGGERS = "opentelemetry.exporter.otlp"

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
        self._exporters: list[_Quiet] = []
        self._timeout_millis = 1000 * max(
            timeout_seconds("metrics", os.environ), timeout_seconds("traces", os.environ)
        )
        self.collector = _Collector()

    @property
    def flush_timeout_millis(self) -> float:  # type: ignore[override]
        """The end-of-run flush budget: the exporters' timeout once the collector
        has answered (and did not fail since), else `UNANSWERED_FLUSH_SECONDS`."""
        if self.collector.answering:
            return self._timeout_millis
        return min(self._timeout_millis, 1000 * UNANSWERED_FLUSH_SECONDS)

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
        exporter = _quiet_metrics()(
            OTLPMetricExporter(
                preferred_temporality={
                    _Gauge: AggregationTemporality.CUMULATIVE,
                    ObservableGauge: AggregationTemporality.CUMULATIVE,
                },
                **self._kwargs(protocol, "metrics"),
            ),
            self.collector,
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
        exporter = _quiet_spans()(
            OTLPSpanExporter(**self._kwargs(protocol, "traces")), self.collector
        )
        self._exporters.append(exporter)
        return [BatchSpanProcessor(exporter)]

    @property
    def dropping(self) -> bool:  # type: ignore[override]
        """True once the user was told that no collector answers (one line a run)."""
        return self.collector.reported

    def abort(self) -> None:
        # The SDK exporters stop retrying once shut down; the providers' own
        # shutdown then finds them closed and returns at once.
        for exporter in self._exporters:
            exporter.close()


class _Collector:
    """What this run knows of its collector, shared by its metric and span exporters.

    `answering` is True from an export that reached it until one that failed.
    The first failure is told to the user once, in one line, as soon as the
    SDK reports it (`reported`), before its retries and the end-of-run flush.
    """

    def __init__(self) -> None:
        self.answering = False
        self.reported = False
        self._lock = threading.Lock()

    def failed(self, endpoint: str, signal: str, sdk_message: str) -> None:
        """The SDK said an export of `signal` to `endpoint` failed (or is retried)."""
        with self._lock:
            self.answering = False
            if self.reported:
                return
            self.reported = True
        code = re.search(r"StatusCode\.(\w+)", sdk_message)
        reason = code.group(1) if code else sdk_message[:120]
        if reason in ("UNAVAILABLE", "DEADLINE_EXCEEDED") or "onnect" in reason:
            _log.warning(
                "no OTLP collector answers at %s; telemetry for this run is dropped "
                "while none does (the trackers still get every point)",
                endpoint,
            )
        else:
            _log.warning(
                "the OTLP collector at %s refused this run's %s (%s); telemetry "
                "for this run is dropped while it does (the trackers still get every point)",
                endpoint,
                signal,
                reason,
            )

    def exported(self, ok: bool, endpoint: str) -> None:
        """An export came back: `ok` when the collector took it."""
        with self._lock:
            again = ok and not self.answering and self.reported
            self.answering = ok
        if again:
            _log.info("the OTLP collector at %s answers again", endpoint)


_quiet = threading.local()


class _SdkLogFilter(logging.Filter):
    """Keeps the SDK exporters' warnings about tracelet's own exports out of the terminal.

    Only records logged inside a `_Quiet` call (on that thread) are touched:
    they go to the run's `_Collector`, and pass on at DEBUG when the SDK
    logger is enabled for DEBUG. The user's own OTLP exporters are left alone.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exporter: _Quiet | None = getattr(_quiet, "exporter", None)
        if exporter is None or record.levelno < logging.WARNING:
            return True
        exporter.collector.failed(exporter.endpoint, exporter.signal, record.getMessage())
        if logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return True
        return False


_FILTER = _SdkLogFilter()


def _install_filter() -> None:
    # A logger's filters see only what is logged on it, so each SDK logger gets one;
    # they exist once the SDK exporter modules are imported (before this is called).
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith(SDK_LOGGERS) and isinstance(logger, logging.Logger):
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)


class _Quiet:
    """What the metric and span wrappers share: quiet calls, outcome to the collector."""

    def __init__(self, inner: Any, collector: _Collector, signal: str) -> None:
        self.inner = inner
        self.collector = collector
        self.signal = signal
        # The SDK exporters keep their resolved endpoint there (no public accessor).
        self.endpoint = str(getattr(inner, "_endpoint", None) or "the OTLP endpoint")
        self.closed = False
        _install_filter()

    @contextmanager
    def quiet(self) -> Iterator[None]:
        previous = getattr(_quiet, "exporter", None)
        _quiet.exporter = self
        try:
            yield
        finally:
            _quiet.exporter = previous

    def send(self, data: Any, **kwargs: Any) -> Any:
        with self.quiet():
            result = self.inner.export(data, **kwargs)
        self.collector.exported(result.name == "SUCCESS", self.endpoint)
        return result

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with self.quiet():
                if self.signal == "spans":  # the HTTP span exporter's shutdown takes no timeout
                    self.inner.shutdown()
                else:
                    self.inner.shutdown(timeout_millis=0)

    def flush(self, timeout_millis: float) -> bool:
        with self.quiet():
            return bool(self.inner.force_flush(timeout_millis=timeout_millis))


@functools.cache
def _quiet_metrics() -> type[Any]:
    """A `MetricExporter` that wraps the SDK's (defined on first use: the SDK loads late)."""
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class QuietMetrics(_Quiet, MetricExporter):
        def __init__(self, inner: MetricExporter, collector: _Collector) -> None:
            _Quiet.__init__(self, inner, collector, "metrics")
            # The reader takes its temporality and aggregation from the exporter.
            MetricExporter.__init__(
                self,
                preferred_temporality=inner._preferred_temporality,
                preferred_aggregation=inner._preferred_aggregation,
            )

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kw: Any) -> Any:
            if self.closed:
                return MetricExportResult.FAILURE
            return self.send(metrics_data, timeout_millis=timeout_millis, **kw)

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return self.flush(timeout_millis)

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            self.close()

    return QuietMetrics


@functools.cache
def _quiet_spans() -> type[Any]:
    """A `SpanExporter` that wraps the SDK's."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class QuietSpans(_Quiet, SpanExporter):
        def __init__(self, inner: SpanExporter, collector: _Collector) -> None:
            _Quiet.__init__(self, inner, collector, "spans")

        def export(self, spans: Any) -> Any:
            if self.closed:
                return SpanExportResult.FAILURE
            return self.send(spans)

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return self.flush(timeout_millis)

        def shutdown(self) -> None:
            self.close()

    return QuietSpans
