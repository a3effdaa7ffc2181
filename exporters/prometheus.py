"""Prometheus backend: a scrape endpoint serving the run's metrics.

Backend ``"prometheus"`` (extra ``otlp``). The OTel SDK's
``PrometheusMetricReader`` translates the run's instruments, and
``prometheus_client.start_http_server`` serves them at
``http://<host>:<port>/metrics`` while the run is active; the server stops
when the run ends. Each run has its own registry, so runs started one after
another in a process never see each other's series.

- ``host``: ``config["host"]``, else ``OTEL_EXPORTER_PROMETHEUS_HOST``, else
  ``127.0.0.1`` (loopback only: open it to the network on purpose, e.g. ``0.0.0.0``).
- ``port``: ``config["port"]``, else ``OTEL_EXPORTER_PROMETHEUS_PORT``, else
  **9464 + the local rank** (9464, the OTel Prometheus exporter's usual port,
  for a single process; 9464-9471 for eight ranks on one host). ``0`` picks a
  free port (see `PrometheusBackend.url`).
- ``resource_labels``: the resource attributes copied as labels onto every
  series, so a query can filter one run without joining ``target_info``.

A port that cannot be bound is logged as an error and the run goes on
without the endpoint (its trackers are not affected).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from tracelet.export import ExporterOptions, TelemetryBackend, TelemetryContext

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader

__all__ = ["DEFAULT_PORT", "PrometheusBackend", "PrometheusOptions", "listen_address"]

_log = logging.getLogger("tracelet")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
#: Resource attributes put on every series by default: what a dashboard filters and joins on.
DEFAULT_RESOURCE_LABELS = (
    "tracelet.run_id",
    "tracelet.project",
    "tracelet.experiment",
    "host.name",
    "tracelet.rank",
    "tracelet.local_rank",
    "k8s.pod.name",
)


def listen_address(
    host: str | None, port: int | None, environ: Mapping[str, str]
) -> tuple[str, int]:
    """Where the scrape endpoint listens (see the module docstring for the rules)."""
    host = host or environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "").strip() or DEFAULT_HOST
    if port is None:
        raw = environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "").strip()
        if raw:
            if not raw.isdigit() or int(raw) > 65535:
                raise ValueError(
                    f"OTEL_EXPORTER_PROMETHEUS_PORT={raw!r} is not a port number (0-65535)"
                )
            port = int(raw)
        else:
            local_rank = environ.get("LOCAL_RANK", "").strip()
            port = DEFAULT_PORT + (int(local_rank) if local_rank.isdigit() else 0)
    return host, port


class PrometheusOptions(ExporterOptions):
    """What ``config`` may carry for the prometheus backend."""

    #: Address to listen on; default ``OTEL_EXPORTER_PROMETHEUS_HOST`` or ``127.0.0.1``.
    host: str | None = Field(default=None, min_length=1)
    #: Port; default ``OTEL_EXPORTER_PROMETHEUS_PORT`` or 9464 + local rank; 0 = any free port.
    port: int | None = Field(default=None, ge=0, le=65535)
    #: Resource attributes copied as labels onto every series.
    resource_labels: list[str] = Field(default_factory=lambda: list(DEFAULT_RESOURCE_LABELS))

    @model_validator(mode="after")
    def _address_is_valid(self) -> PrometheusOptions:
        listen_address(self.host, self.port, os.environ)  # a bad variable fails at start_logging
        return self


class PrometheusBackend(TelemetryBackend):
    """Backend ``"prometheus"``: serves ``/metrics`` for a Prometheus server to scrape."""

    name = "prometheus"
    options = PrometheusOptions
    requires = ("opentelemetry.exporter.prometheus", "prometheus_client")
    extra = "otlp"
    config: PrometheusOptions

    def __init__(self, options: ExporterOptions | None = None) -> None:
        super().__init__(options)
        self._server: Any = None
        self._thread: Any = None
        #: Where the endpoint listens once started: ``(host, port)``.
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str | None:
        """The scrape URL, e.g. ``http://127.0.0.1:9464/metrics`` (``None`` when not serving)."""
        if self.address is None:
            return None
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def metric_readers(self, context: TelemetryContext) -> Sequence[MetricReader]:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server

        host, port = listen_address(self.config.host, self.config.port, os.environ)
        registry = CollectorRegistry(auto_describe=False)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            _log.error(
                "the prometheus backend cannot listen on %s:%d (%s); run %s has no "
                "scrape endpoint. Set config={'prometheus': {'port': ...}} or "
                "OTEL_EXPORTER_PROMETHEUS_PORT to a free port.",
                host,
                port,
                exc,
                context.run.run_id,
            )
            return []
        self.address = (host, int(self._server.server_port))
        labels = frozenset(self.config.resource_labels)
        reader = PrometheusMetricReader(
            registry=registry, resource_attribute_filter=labels.__contains__
        )
        _log.info("run %s metrics at %s", context.run.run_id, self.url)
        return [reader]

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # stops serve_forever
        server.server_close()  # frees the port
        self._thread.join(timeout_millis / 1000)
        self.address = None
