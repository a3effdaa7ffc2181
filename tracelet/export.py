"""The contract every tracker exporter implements, shaped like OTel's `MetricExporter`.

An exporter receives the exact history of a run: every metric point with its
own step, value (NaN and inf included) and wall-clock time, plus params and
tags, in the order they were logged. It is driven by one tracelet thread at a
time, so implementations need no locking of their own.

Lifecycle, all on that thread::

    exporter = SomeExporter(options)        # cheap: no SDK import, no I/O
    state = exporter.start(run)             # open or resume the tracker run
    exporter.export(batch)                  # as often as there is data
    exporter.shutdown(status=RunStatus.FINISHED)
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict

__all__ = [
    "Batch",
    "ExportResult",
    "ExporterOptions",
    "MetricPoint",
    "RunInfo",
    "RunStatus",
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


@dataclass
class Batch:
    """A slice of the run's history, in logging order within each kind."""

    metrics: list[MetricPoint] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.metrics) + len(self.params) + len(self.tags)


@dataclass(frozen=True)
class RunInfo:
    """What an exporter needs to open its run.

    Attributes:
        run_id: tracelet's id of the run (also tagged on every tracker run).
        project: MLflow experiment, W&B project, ClearML project.
        name: the run name (ClearML task name).
        resume: what `start` returned for this run before, when a run is
            continued (for example by ``tracelet sync``); ``None`` for a new run.
    """

    run_id: str
    project: str
    name: str
    resume: dict[str, Any] | None = None


class ExporterOptions(BaseModel):
    """Base of each exporter's `config` options; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackerExporter(ABC):
    """Base class of the exporters found in the ``tracelet.exporters`` entry-point group.

    Subclasses set `name`, `options` (a pydantic model of what `config` may
    carry for them) and, when they need a third-party SDK, `requires` and
    `extra`; they import that SDK inside `start`, never at module import.
    """

    name: ClassVar[str]
    options: ClassVar[type[ExporterOptions]] = ExporterOptions
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None
    #: Most metric points one `export` call should receive.
    max_batch_points: ClassVar[int] = 1000

    def __init__(self, options: ExporterOptions | None = None) -> None:
        self.config = options if options is not None else self.options()

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

    @abstractmethod
    def shutdown(
        self, timeout_millis: float = 30_000, status: RunStatus = RunStatus.FINISHED, **kwargs: Any
    ) -> None:
        """Close the tracker run with `status`. Must accept extra keyword arguments."""
