"""The telemetry channel: the run's OTel Resource, MeterProvider and instruments.

Low cardinality by construction: one observable gauge per logged metric name
reporting its latest value when a reader collects, plus run-level progress
instruments. No step or other unbounded value ever becomes an attribute; the
run is identified by the Resource.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor

from tracelet._logs import brief
from tracelet._tracing import RunTracing, SpanScope
from tracelet._version import __version__
from tracelet.export import TelemetryBackend, TelemetryContext

if TYPE_CHECKING:
    from tracelet._history import History

_log = logging.getLogger("tracelet")

#: Factories of extra metric readers attached to every new run: the private seam
#: behind `tracelet.testing.capture_telemetry`, which tests and users go through.
_extra_readers: list[Callable[[], MetricReader]] = []

#: Tag written to every tracker run when the run's traces are exported.
TRACE_ID_TAG = "tracelet.trace_id"
#: Most latest-value gauges (distinct metric names) one run exports.
MAX_GAUGES = 2000
#: Most params the ``tracelet.run.info`` gauge and the run span carry, and
#: the longest string value they keep.
MAX_PARAM_ATTRIBUTES, MAX_PARAM_VALUE = 128, 256

_INVALID = re.compile(r"[^A-Za-z0-9_./-]")


class BackendCounts(Protocol):
    """What the per-backend instruments read: a `Delivery`, or a backend the agent delivers."""

    @property
    def backend(self) -> str: ...

    @property
    def delivered(self) -> int: ...

    @property
    def failures(self) -> int: ...


class RunProgress(Protocol):
    """What the run-level instruments read when a reader collects (`tracelet._run.Run`)."""

    @property
    def step(self) -> int:
        """The highest step logged, -1 before the first point."""

    @property
    def points(self) -> int:
        """Metric points logged."""

    @property
    def params(self) -> Mapping[str, Any]:
        """The params logged so far."""

    @property
    def history(self) -> History: ...

    @property
    def deliveries(self) -> Sequence[BackendCounts]: ...


def instrument_name(name: str) -> str:
    """Map a tracker-style metric name to a valid OTel instrument name.

    OTel allows ``[A-Za-z][A-Za-z0-9_./-]{0,254}``: ``train/loss`` stays as it
    is; any other character becomes ``_``; a name that does not start with a
    letter gets the prefix ``m_``; the result is cut to 255 characters.
    """
    mapped = _INVALID.sub("_", name)
    if not mapped[:1].isalpha() or not mapped[:1].isascii():
        mapped = "m_" + mapped
    return mapped[:255]


def resource_attributes(run_id: str, project: str, name: str) -> dict[str, Any]:
    """The attributes that identify a run, merged over ``OTEL_RESOURCE_ATTRIBUTES``."""
    attrs: dict[str, Any] = {
        "service.instance.id": run_id,
        "tracelet.run_id": run_id,
        "tracelet.project": project,
        "tracelet.experiment": name,
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
    }
    env_attrs = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in env_attrs:
        attrs["service.name"] = "tracelet"
    # Detected values never override what OTEL_RESOURCE_ATTRIBUTES says.
    given = env_resource_keys(env_attrs)
    for key, value in {**launcher_attributes(os.environ), **k8s_attributes(os.environ)}.items():
        if key not in given:
            attrs[key] = value
    return attrs


#: Resource attribute → launcher variables, first one set wins: torchrun /
#: torch.distributed, Open MPI, MPICH/Intel MPI (PMI), then SLURM.
LAUNCHER_VARIABLES: dict[str, tuple[str, ...]] = {
    "tracelet.rank": ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"),
    "tracelet.local_rank": (
        "LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ),
    "tracelet.world_size": ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"),
}
SLURM_JOB_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOBID")

#: Resource attribute (OTel semantic conventions) → environment variables a
#: pod spec sets from the Kubernetes downward API. The ``K8S_*`` names are
#: read anywhere; the short ones only inside a pod (``KUBERNETES_SERVICE_HOST`` set).
K8S_VARIABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "k8s.pod.name": (("K8S_POD_NAME",), ("POD_NAME",)),
    "k8s.namespace.name": (("K8S_NAMESPACE_NAME", "K8S_POD_NAMESPACE"), ("POD_NAMESPACE",)),
    "k8s.node.name": (("K8S_NODE_NAME",), ("NODE_NAME",)),
    "k8s.pod.uid": (("K8S_POD_UID",), ("POD_UID",)),
}


def launcher_attributes(environ: Mapping[str, str]) -> dict[str, Any]:
    """Rank, local rank, world size and SLURM job id from launcher variables.

    Ranks are ints (a value that is not one is ignored); see
    `LAUNCHER_VARIABLES` for the variables read, in order.
    """
    attrs: dict[str, Any] = {}
    for key, names in LAUNCHER_VARIABLES.items():
        for name in names:
            raw = environ.get(name, "").strip()
            if raw.isdigit():
                attrs[key] = int(raw)
                break
    job = next((environ[n].strip() for n in SLURM_JOB_VARIABLES if environ.get(n, "").strip()), "")
    if job:
        attrs["tracelet.slurm.job_id"] = job
    return attrs


def k8s_attributes(environ: Mapping[str, str]) -> dict[str, str]:
    """Kubernetes pod, namespace, node (and pod uid) from downward-API variables.

    Inside a pod without an explicit pod name, ``HOSTNAME`` (which Kubernetes
    sets to the pod name) is used. See `K8S_VARIABLES`.
    """
    in_pod = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    attrs: dict[str, str] = {}
    for key, (anywhere, in_pod_only) in K8S_VARIABLES.items():
        for name in anywhere + (in_pod_only if in_pod else ()):
            value = environ.get(name, "").strip()
            if value:
                attrs[key] = value
                break
    if in_pod and "k8s.pod.name" not in attrs and environ.get("HOSTNAME", "").strip():
        attrs["k8s.pod.name"] = environ["HOSTNAME"].strip()
    return attrs


def env_resource_keys(value: str) -> set[str]:
    """The keys an ``OTEL_RESOURCE_ATTRIBUTES`` value sets (``k1=v1,k2=v2``)."""
    return {part.split("=", 1)[0].strip() for part in value.split(",") if "=" in part}


def export_interval_millis(metrics_interval: float, environ: Mapping[str, str]) -> float | None:
    """The push interval of the metric readers: ``metrics_interval`` seconds,
    or ``None`` when ``OTEL_METRIC_EXPORT_INTERVAL`` is set (the SDK reads it then)."""
    if environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip():
        return None
    return metrics_interval * 1000.0


def param_attributes(params: Mapping[str, Any]) -> dict[str, Any]:
    """Run params as OTel attributes: ``opt/lr`` → ``tracelet.param.opt.lr``.

    Bounded: the first `MAX_PARAM_ATTRIBUTES` params in logging order, strings
    cut to `MAX_PARAM_VALUE` characters; values that are not bool, int,
    float or str become strings.
    """
    attrs: dict[str, Any] = {}
    for key, value in params.items():
        if len(attrs) >= MAX_PARAM_ATTRIBUTES:
            break
        if not isinstance(value, (bool, int, float, str)):
            value = str(value)
        if isinstance(value, str):
            value = value[:MAX_PARAM_VALUE]
        attrs["tracelet.param." + str(key).replace("/", ".")] = value
    return attrs


class Telemetry:
    """The run's MeterProvider and TracerProvider, and the instruments fed from the history channel.

    Telemetry backends (``otlp``, ``prometheus``) contribute their metric
    readers and span processors here; a backend that cannot start is logged
    and left out, so telemetry never costs the run its trackers.
    """

    def __init__(
        self,
        attributes: Mapping[str, Any],
        latest: Mapping[str, float],
        run: RunProgress,
        readers: Iterable[MetricReader] = (),
        *,
        backends: Mapping[str, TelemetryBackend] | None = None,
        context: TelemetryContext | None = None,
    ) -> None:
        self.resource = Resource.create(dict(attributes))
        self.backends = dict(backends or {})
        backend_readers: list[MetricReader] = []
        processors: list[SpanProcessor] = []
        for name, backend in list(self.backends.items()):
            assert context is not None, "telemetry backends need a TelemetryContext"
            try:
                new_readers = list(backend.metric_readers(context))
                processors.extend(backend.span_processors(context))
                backend_readers.extend(new_readers)
            except Exception as exc:
                _log.error(
                    "telemetry backend %r could not start (%s); the run goes on "
                    "without it (trackers are not affected)",
                    name,
                    brief(exc),
                )
                _log.debug("telemetry backend %r could not start", name, exc_info=exc)
                del self.backends[name]
        self.readers = [
            *readers,
            *backend_readers,
            *(factory() for factory in _extra_readers),
        ]
        #: True when some backend exports the run's spans.
        self.exports_traces = bool(processors)
        # Owned by the run, never set as the global provider; tracelet closes it
        # itself (after the history has drained), so no atexit hook of its own.
        self.provider = MeterProvider(
            resource=self.resource, metric_readers=self.readers, shutdown_on_exit=False
        )
        self.meter = self.provider.get_meter("tracelet", __version__)
        self._latest = latest
        self._names: set[str] = set()
        self._capped = False

        self._run = run
        self._last_params: Mapping[str, Any] = {}
        self._aborted = False
        run_attrs = {
            k: v
            for k, v in self.resource.attributes.items()
            if k in ("tracelet.run_id", "tracelet.project", "tracelet.experiment")
        }
        self.tracing = RunTracing(self.resource, processors, self.meter, run_attrs)
        self._run_instruments()

    @property
    def trace_id(self) -> str:
        """The run's trace id (32 hex digits)."""
        return self.tracing.trace_id

    def span(self, name: str, attributes: Mapping[str, Any]) -> SpanScope:
        """A phase span under the run span (see `Experiment.span`)."""
        return self.tracing.span(name, attributes)

    def _run_instruments(self) -> None:
        """The run's progress, the history channel's health and the run's params, as
        observable instruments read from the run when a reader collects."""
        meter, run = self.meter, self._run

        def step(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(max(run.step, 0))

        def points(_: CallbackOptions) -> Iterable[Observation]:
            yield Observation(run.points)

        meter.create_observable_gauge(
            "tracelet.step", [step], unit="1", description="Highest step logged in the run."
        )
        meter.create_observable_counter(
            "tracelet.points", [points], unit="1", description="Metric points logged in the run."
        )

        def gauge(name: str, unit: str, description: str, read: Callable[[], Any]) -> None:
            meter.create_observable_gauge(
                name, [lambda _: [Observation(read())]], unit=unit, description=description
            )

        def counter(name: str, unit: str, description: str, read: Callable[[], Any]) -> None:
            meter.create_observable_counter(
                name, [lambda _: [Observation(read())]], unit=unit, description=description
            )

        gauge(
            "tracelet.history.backlog",
            "{record}",
            "Records logged and not yet written to the run journal.",
            lambda: len(run.history.queue),
        )
        counter(
            "tracelet.history.journaled",
            "{point}",
            "Metric points written to the run journal (the local copy every backend reads).",
            lambda: run.history.points,
        )
        counter(
            "tracelet.history.waits",
            "{wait}",
            "Times log_metric waited for the journal writer because the in-memory bound was hit.",
            lambda: run.history.blocked,
        )
        counter(
            "tracelet.history.write_errors",
            "{error}",
            "Failed writes of the run journal (each is retried; nothing is dropped).",
            lambda: getattr(run.history, "write_errors", 0),
        )

        def per_backend(read: Callable[[BackendCounts], int]) -> Callable[[CallbackOptions], Any]:
            return lambda _: [
                Observation(read(d), {"tracelet.backend": d.backend}) for d in run.deliveries
            ]

        meter.create_observable_counter(
            "tracelet.export.delivered",
            [per_backend(lambda d: d.delivered)],
            unit="{point}",
            description="Metric points each tracker backend has accepted.",
        )
        meter.create_observable_gauge(
            "tracelet.export.undelivered",
            [per_backend(lambda d: max(0, run.points - d.delivered))],
            unit="{point}",
            description="Metric points logged that a tracker backend has not accepted yet.",
        )
        meter.create_observable_counter(
            "tracelet.export.failures",
            [per_backend(lambda d: d.failures)],
            unit="{failure}",
            description="Failed attempts to start, export to or close a tracker backend.",
        )

        def info(_: CallbackOptions) -> Iterable[Observation]:
            params = self._current_params()
            if params:  # no series until there are params to show
                yield Observation(1, param_attributes(params))

        meter.create_observable_gauge(
            "tracelet.run.info",
            [info],
            unit="1",
            description="Always 1; the run's params as attributes (tracelet.param.<name>).",
        )

    def _current_params(self) -> Mapping[str, Any]:
        try:
            self._last_params = dict(self._run.params)
        except RuntimeError:  # changed size while copied: use the previous copy this time
            pass
        return self._last_params

    def observe(self, names: Iterable[str]) -> None:
        """Create a latest-value gauge for each metric name not seen before."""
        for name in names:
            otel_name = instrument_name(name)
            if otel_name in self._names:
                continue
            if len(self._names) >= MAX_GAUGES:
                if not self._capped:
                    self._capped = True
                    _log.warning(
                        "more than %d metric names; %r and later ones get no OTel "
                        "gauge (trackers still receive every point)",
                        MAX_GAUGES,
                        name,
                    )
                continue
            self._names.add(otel_name)
            self.meter.create_observable_gauge(
                otel_name, [self._callback(name)], description=f"Latest value of {name!r}."
            )

    def reserve(self, names: Iterable[str]) -> None:
        """History names that get no latest-value gauge: series that other
        instruments already carry (the ``system/`` series, see `tracelet._system`)."""
        self._names.update(instrument_name(name) for name in names)

    def _callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        latest = self._latest

        def observe(_: CallbackOptions) -> Iterable[Observation]:
            value = latest.get(name)
            # The SDK drops NaN/inf with a warning on every collection; the exact
            # value is in the history channel, the gauge simply skips it.
            if value is not None and math.isfinite(value):
                yield Observation(value)

        return observe

    def shutdown(self, timeout_millis: float, status: str = "FINISHED") -> None:
        """End the run span, flush and shut both providers, then the backends.

        The flush waits at most `timeout_millis`, and at most the longest
        `TelemetryBackend.flush_timeout_millis`; past that the backends are
        told to `TelemetryBackend.abort` (an unreachable collector costs the
        end of the run that long, never more).
        """
        self.tracing.end(status, param_attributes(self._current_params()))
        limits = [b.flush_timeout_millis for b in self.backends.values()]
        budget = min([timeout_millis, *(limit for limit in limits if limit is not None)])
        timer = threading.Timer(budget / 1000, self._abort)
        timer.daemon = True
        timer.start()
        try:
            self.tracing.provider.force_flush(timeout_millis=int(budget))
            if self.readers:
                self.provider.force_flush(timeout_millis=budget)
            self.tracing.provider.shutdown()
            self.provider.shutdown(timeout_millis=budget)
        finally:
            timer.cancel()
            for name, backend in self.backends.items():
                try:
                    backend.shutdown(timeout_millis=budget)
                except Exception as exc:
                    _log.warning("telemetry backend %r did not shut down: %r", name, exc)

    def _abort(self) -> None:
        late = [n for n, b in self.backends.items() if b.flush_timeout_millis and not b.dropping]
        if not self._aborted and late:
            _log.warning(
                "telemetry backend(s) %s did not finish exporting in time; the "
                "last telemetry of this run is not exported (trackers are not affected)",
                ", ".join(map(repr, late)),
            )
        self._aborted = True
        for backend in self.backends.values():
            try:
                backend.abort()
            except Exception as exc:
                _log.debug("abort failed: %r", exc)
