"""The contract every tracker exporter implements, shaped like OTel's `MetricExporter`.

An exporter receives the exact history of a run: every metric point with its
own step, value (NaN and inf included) and wall-clock time, plus params and
tags, in the order they were logged. It is driven by one tracelet thread at a
time, so implementations need no locking of their own.

Lifecycle, all on that thread::

    exporter = SomeExporter(options)        # cheap: no SDK import, no I/O
    state = exporter.start(run)             # open or resume the tracker run
    exporter.export(batch)                  # as often as there is data
    exporter.force_flush()                  # then the cursor may pass what it accepted,
    exporter.resume_state()                 #   saved with the state to resume from
    exporter.shutdown(status=RunStatus.FINISHED)
"""

from __future__ import annotations

import enum
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace import SpanProcessor

    from tracelet._options import ExporterOptions

__all__ = [
    "Artifact",
    "ArtifactFile",
    "Batch",
    "ExportResult",
    "ExporterOptions",
    "MetricPoint",
    "RunInfo",
    "RunStatus",
    "TelemetryBackend",
    "TelemetryContext",
    "TrackerExporter",
]


class ExportResult(enum.Enum):
    """Outcome of `TrackerExporter.export`, like OTel's `MetricExportResult`."""

    SUCCESS = 0
    FAILURE = 1


class RunStatus(str, enum.Enum):
    """How a run ended."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class MetricPoint(NamedTuple):
    """One logged metric value."""

    name: str
    value: float
    step: int
    timestamp_ns: int


class ArtifactFile(NamedTuple):
    """One file of an artifact, as captured in the run directory."""

    #: Path inside the artifact, ``/``-separated; ``""`` for a single-file artifact.
    path: str
    #: SHA-256 of the content (hex).
    sha256: str
    size: int
    #: Name of the captured copy in the run's ``artifacts`` folder (``""``: the hash).
    blob: str = ""


#: The folder of the run directory holding the captured files.
ARTIFACTS_DIR = "artifacts"


@dataclass(frozen=True)
class Artifact:
    """A file, directory or media item logged with the run (``Experiment.log_artifact`` ...).

    Its content was captured when it was logged: each file is a read-only copy
    in the run directory, named by its SHA-256, so an exporter uploads exactly
    what the file held at the call, whatever happened to the original since.

    Attributes:
        name: its path inside the run, ``/``-separated (``"model/weights.pt"``).
        kind: ``file``, ``dir``, ``text``, ``dict``, ``figure`` or ``image``.
        files: the captured files (one for every kind but ``dir``).
        step: the iteration of a figure or image logged with one, else None.
        media_type: e.g. ``image/png``, ``application/json``; None when unknown.
        timestamp_ns: wall-clock time of the call.
        root: the run directory the captured copies are in (set on delivery).
    """

    name: str
    kind: str
    files: tuple[ArtifactFile, ...]
    step: int | None = None
    media_type: str | None = None
    timestamp_ns: int = 0
    root: str = ""

    @property
    def size(self) -> int:
        """Bytes of all its files."""
        return sum(f.size for f in self.files)

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_image(self) -> bool:
        """True for an image or figure: trackers show it as media."""
        return self.kind in ("image", "figure")

    def local_path(self, file: ArtifactFile | None = None) -> str:
        """Where the captured copy of `file` (default: the only file) lies."""
        f = file if file is not None else self.files[0]
        return os.path.join(self.root, ARTIFACTS_DIR, f.blob or f.sha256)

    def to_json(self) -> dict[str, Any]:
        """The journal form (``{"a": ...}`` frames)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "files": [list(f) if f.blob else list(f[:3]) for f in self.files],
            "step": self.step,
            "media_type": self.media_type,
            "time": self.timestamp_ns,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            files=tuple(
                ArtifactFile(str(f[0]), str(f[1]), int(f[2]), str(f[3]) if len(f) > 3 else "")
                for f in data["files"]
            ),
            step=None if data.get("step") is None else int(data["step"]),
            media_type=data.get("media_type"),
            timestamp_ns=int(data.get("time") or 0),
        )


@dataclass
class Batch:
    """A slice of the run's history, in logging order within each kind.

    A batch that holds an artifact holds nothing else (`tracelet._journal`),
    so an exporter can upload it, and be retried, without touching points.
    """

    metrics: list[MetricPoint] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags) + len(self.artifacts)


@dataclass(frozen=True)
class RunInfo:
    """What an exporter needs to open its run.

    Attributes:
        run_id: tracelet's id of the run (also tagged on every tracker run).
        project: MLflow experiment, W&B project, ClearML project.
        name: the run name (ClearML task name).
        resume: what `start` returned for this run before, when a run is
            continued (for example by ``tracelet sync``); ``None`` for a new run.
        attach: how to find the tracker run when `resume` is ``None``:
            ``"new"`` opens one; ``"continue"`` continues the tracker run
            tagged with `run_id` when there is one (a job's id, given or from
            its launcher; `tracelet._resume`), else opens it; ``"join"``:
            another process (global rank 0) opens it, so find it, and fail
            (to be retried) until it exists.
        rank: in the all-ranks mode (``ranks="all"``), the global rank whose
            points this exporter receives (their names carry ``rank<N>/``);
            ``None`` when one process writes the run.
    """

    run_id: str
    project: str
    name: str
    resume: dict[str, Any] | None = None
    attach: str = "new"
    rank: int | None = None


def __getattr__(name: str) -> Any:
    # ExporterOptions is a pydantic model: imported when first asked for (PEP 562),
    # so that importing this contract does not import pydantic.
    if name == "ExporterOptions":
        from tracelet._options import ExporterOptions

        return ExporterOptions
    raise AttributeError(f"module 'tracelet.export' has no attribute {name!r}")


class _BaseOptions:
    """The `options` of a backend class that sets none: `ExporterOptions`, imported on first use."""

    def __get__(self, obj: object, owner: type | None = None) -> type[ExporterOptions]:
        from tracelet._options import ExporterOptions

        return ExporterOptions


class _Backend:
    """What every backend class declares, tracker or telemetry (see `TrackerExporter`)."""

    name: ClassVar[str]
    if TYPE_CHECKING:
        options: ClassVar[type[ExporterOptions]]
    else:
        options = _BaseOptions()
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

    def __init__(self, options: ExporterOptions | None = None) -> None:
        self.config = options if options is not None else self.options()


class TrackerExporter(_Backend, ABC):
    """Base class of the exporters found in the ``tracelet.exporters`` entry-point group.

    Subclasses set `name`, `options` (a pydantic model of what `config` may
    carry for them) and, when they need a third-party SDK, `requires` and
    `extra`; they import that SDK inside `start`, never at module import.
    """

    #: Most metric points one `export` call should receive.
    max_batch_points: ClassVar[int] = 1000

    @abstractmethod
    def start(self, run: RunInfo) -> dict[str, Any]:
        """Open (or, with ``run.resume``, reopen) the tracker run.

        Returns:
            A small JSON-able dict that lets a later process resume this run
            (for example ``{"run_id": ...}``); it is kept in the run directory.
        """

    @abstractmethod
    def export(self, batch: Batch, timeout_millis: float = 10_000, **kwargs: Any) -> ExportResult:
        """Deliver one batch. Raise or return FAILURE to have it retried."""

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Push anything the SDK buffers; True when done."""
        return True

    def resume_state(self) -> dict[str, Any] | None:
        """The resume state as of now, saved with the durable cursor.

        Called right after a `force_flush` that returned True, when everything
        exported so far is stored. An exporter whose backend does not
        de-duplicate returns here what it needs to recognise, when resumed
        after a crash, the points past that cursor it already stored (W&B: the
        row the cursor stands at). None keeps what `start` returned.
        """
        return None

    @abstractmethod
    def shutdown(
        self, timeout_millis: float = 30_000, status: RunStatus = RunStatus.FINISHED, **kwargs: Any
    ) -> None:
        """Close the tracker run with `status`. Must accept extra keyword arguments."""


@dataclass(frozen=True)
class TelemetryContext:
    """What a `TelemetryBackend` is told about the run it serves.

    Attributes:
        run: the run's identity.
        export_interval_millis: how often a push backend should export
            metrics: the ``metrics_interval`` setting, or ``None`` when
            ``OTEL_METRIC_EXPORT_INTERVAL`` is set (the OTel SDK then reads it).
    """

    run: RunInfo
    export_interval_millis: float | None


class TelemetryBackend(_Backend, ABC):
    """Base class of the telemetry backends (``otlp``, ``prometheus``).

    They are selected with the same ``backend=`` names and registered in the
    same ``tracelet.exporters`` entry-point group as the trackers, but they do
    not receive the run's history: they hand the run's OTel providers the
    SDK's own metric readers and span processors, which read the telemetry
    channel (latest values, progress, health, spans). Options, `requires`
    and `extra` work as for `TrackerExporter`; the SDK is imported inside
    `metric_readers` / `span_processors`, never at module import.

    Lifecycle, on the thread that starts and ends the run::

        backend = SomeBackend(options)           # cheap: no import, no I/O
        readers = backend.metric_readers(ctx)    # attached to the run's MeterProvider
        processors = backend.span_processors(ctx)  # attached to its TracerProvider
        ...                                      # the run
        backend.shutdown()                       # after the providers have shut down
    """

    #: Longest the end-of-run flush may wait on this backend before `abort`
    #: is called (milliseconds); ``None`` for a backend that never waits.
    flush_timeout_millis: float | None = None
    #: True once the backend has told the user itself why this run's telemetry
    #: is not exported (no collector): an end-of-run flush cut short then adds
    #: no second warning.
    dropping: bool = False

    @abstractmethod
    def metric_readers(self, context: TelemetryContext) -> Sequence[MetricReader]:
        """The metric readers to attach to the run's ``MeterProvider``."""

    def span_processors(self, context: TelemetryContext) -> Sequence[SpanProcessor]:
        """The span processors to add to the run's ``TracerProvider`` (none by default)."""
        return ()

    def abort(self) -> None:
        """Cut short exports still waiting or retrying (the end-of-run flush ran out of time).

        Called from another thread while the providers flush; must be safe at
        any time and more than once. Does nothing by default.
        """
        return None

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Release what the backend holds besides its readers and processors (a server).

        Called once, after the run's providers have flushed and shut down.
        Must accept extra keyword arguments.
        """
        return None
