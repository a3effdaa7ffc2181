"""Fake exporters for fault injection only: a backend that stalls (never to prove delivery)."""

from __future__ import annotations

import threading
from typing import Any

from tracelet.export import Batch, ExportResult, RunInfo, RunStatus, TrackerExporter


class StallingExporter(TrackerExporter):
    """Starts, then blocks in every `export` until `release` is set (a hung network call)."""

    name = "stalled"
    release = threading.Event()
    entered = threading.Event()

    def start(self, run: RunInfo) -> dict[str, Any]:
        return {}

    def export(self, batch: Batch, timeout_millis: float = 10_000, **kwargs: Any) -> ExportResult:
        StallingExporter.entered.set()
        StallingExporter.release.wait()
        return ExportResult.SUCCESS

    def shutdown(
        self, timeout_millis: float = 30_000, status: RunStatus = RunStatus.FINISHED, **kwargs: Any
    ) -> None:
        pass
