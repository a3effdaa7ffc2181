"""Test doubles for tracelet's users and its own tests.

- `InMemoryExporter` (backend name ``"memory"``) keeps every run it receives in
  `InMemoryExporter.runs`, keyed by tracelet run id.
- `capture_telemetry` attaches an in-memory OTel reader to the runs started
  inside it, to read what the telemetry channel holds.
- `read_wandb_run` and `read_clearml_session` read back what W&B and ClearML
  stored locally (a ``.wandb`` file, an offline session), to check delivery
  without a server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader

from tracelet import _otel
from tracelet._journal import JournalBatch, points_of
from tracelet._readback import ClearMLSession, WandbRun, read_clearml_session, read_wandb_run
from tracelet.export import (
    Artifact,
    Batch,
    ExporterOptions,
    ExportResult,
    MetricPoint,
    RunInfo,
    RunStatus,
    TrackerExporter,
)

__all__ = [
    "ClearMLSession",
    "InMemoryExporter",
    "MemoryRun",
    "TelemetryCapture",
    "WandbRun",
    "capture_telemetry",
    "offline_env",
    "read_clearml_session",
    "read_wandb_run",
]


@dataclass
class MemoryRun:
    """Everything one run delivered to an `InMemoryExporter`."""

    info: RunInfo
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    status: RunStatus | None = None
    batches: int = 0
    #: Artifacts received, each with the content of its files (read at delivery).
    artifacts: list[tuple[Artifact, dict[str, bytes]]] = field(default_factory=list)
    # What delivery brought and `metrics` has not built into points yet: a
    # journal frame's columns, or a list of points. Points are built when
    # read, in the reader's thread: the run's delivery, in the training
    # process, only appends here.
    _pending: list[Any] = field(default_factory=list, repr=False, compare=False)
    _points: list[MetricPoint] = field(default_factory=list, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def metrics(self) -> list[MetricPoint]:
        """Every point received, in delivery order."""
        with self._lock:
            pending, self._pending = self._pending, []
            for chunk in pending:
                self._points.extend(chunk if isinstance(chunk, list) else points_of(chunk))
            return self._points

    def history(self, name: str) -> list[tuple[int, float]]:
        """``(step, value)`` of one metric, in delivery order."""
        return [(p.step, p.value) for p in self.metrics if p.name == name]

    def _receive(self, batch: Batch) -> None:
        if isinstance(batch, JournalBatch) and not batch.built:
            chunks: list[Any] = [frame.columns for frame in batch.frames]
        else:
            chunks = [list(batch.metrics)]
        with self._lock:
            self._pending += chunks


class InMemoryOptions(ExporterOptions):
    tags: dict[str, str] | list[str] | None = None


class InMemoryExporter(TrackerExporter):
    """A tracker that keeps runs in memory: backend ``"memory"``."""

    name = "memory"
    options = InMemoryOptions
    runs: ClassVar[dict[str, MemoryRun]] = {}

    def start(self, run: RunInfo) -> dict[str, Any]:
        self.run = InMemoryExporter.runs.setdefault(run.run_id, MemoryRun(run))
        tags = self.config.tags  # type: ignore[attr-defined]
        if tags:  # config tags, as the real trackers apply them: a list is labels
            items = tags.items() if isinstance(tags, dict) else ((t, "") for t in tags)
            self.run.tags.update((str(k), str(v)) for k, v in items)
        return {"run_id": run.run_id}

    def export(self, batch: Batch, timeout_millis: float = 10_000, **kwargs: Any) -> ExportResult:
        self.run._receive(batch)
        self.run.params.update(batch.params)
        self.run.tags.update(batch.tags)
        for artifact in batch.artifacts:
            content = {}
            for f in artifact.files:
                with open(artifact.local_path(f), "rb") as data:
                    content[f.path] = data.read()
            self.run.artifacts.append((artifact, content))
        self.run.batches += 1
        return ExportResult.SUCCESS

    def shutdown(
        self, timeout_millis: float = 30_000, status: RunStatus = RunStatus.FINISHED, **kwargs: Any
    ) -> None:
        self.run.status = status


class TelemetryCapture:
    """What the OTel side of the runs started under `capture_telemetry` holds."""

    def __init__(self) -> None:
        self.readers: list[InMemoryMetricReader] = []

    def _new_reader(self) -> MetricReader:
        reader = InMemoryMetricReader()
        self.readers.append(reader)
        return reader

    def collect(self) -> tuple[dict[str, Any], dict[str, list[tuple[dict[str, Any], Any]]]]:
        """Collect the latest run's metrics now.

        Returns:
            ``(resource_attributes, {instrument: [(attributes, value), ...]})``.
        """
        if not self.readers:
            raise RuntimeError("no run was started inside capture_telemetry()")
        data = self.readers[-1].get_metrics_data()
        resource: dict[str, Any] = {}
        series: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for rm in data.resource_metrics if data is not None else []:
            resource = dict(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    points = series.setdefault(metric.name, [])
                    for dp in metric.data.data_points:
                        points.append((dict(dp.attributes or {}), getattr(dp, "value", None)))
        return resource, series

    def latest(self) -> dict[str, Any]:
        """``{instrument name: value}`` for instruments with one point."""
        _, series = self.collect()
        return {name: pts[-1][1] for name, pts in series.items() if len(pts) == 1}


@contextmanager
def capture_telemetry() -> Iterator[TelemetryCapture]:
    """Attach an in-memory OTel metric reader to every run started inside the block."""
    capture = TelemetryCapture()
    _otel._extra_readers.append(capture._new_reader)
    try:
        yield capture
    finally:
        _otel._extra_readers.remove(capture._new_reader)


def offline_env(directory: str | Path) -> dict[str, str]:
    """Environment variables that run W&B and ClearML offline, writing under `directory`.

    W&B gets lean settings (no git, code, console or system-stats capture, no
    error reporting); its runs land in ``directory/wandb``, ClearML's offline
    sessions in ``directory/clearml/offline``. Set them before either SDK starts.
    """
    directory = Path(directory)
    return {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(directory),
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB__DISABLE_STATS": "true",
        "WANDB__DISABLE_META": "true",
        "WANDB__SAVE_REQUIREMENTS": "false",
        "CLEARML_OFFLINE_MODE": "1",
        "CLEARML_CACHE_DIR": str(directory / "clearml"),
    }
