"""Delivery threads suppress OTel instrumentation around exports, as the OTel SDK's readers do.

So a user's auto-instrumented HTTP client (requests, urllib3, grpc) does not
trace tracelet's uploads to the trackers as spans of the user's own.
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

import tracelet
from tests._helpers import QUIET
from tracelet.export import Batch, ExportResult, RunStatus
from tracelet.testing import InMemoryExporter


def suppressed() -> bool:
    return bool(otel_context.get_value(_SUPPRESS_INSTRUMENTATION_KEY))


def test_exporters_run_with_instrumentation_suppressed(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, list[bool]] = {"export": [], "shutdown": []}
    export, shutdown = InMemoryExporter.export, InMemoryExporter.shutdown

    def probe_export(self: InMemoryExporter, batch: Batch, *args: Any, **kw: Any) -> ExportResult:
        seen["export"].append(suppressed())
        return export(self, batch, *args, **kw)

    def probe_shutdown(self: InMemoryExporter, *args: Any, **kw: Any) -> None:
        seen["shutdown"].append(suppressed())
        shutdown(self, *args, **kw)

    monkeypatch.setattr(InMemoryExporter, "export", probe_export)
    monkeypatch.setattr(InMemoryExporter, "shutdown", probe_shutdown)
    with tracelet.start_logging("suppressed", "p", backend="memory", settings=QUIET) as exp:
        for i in range(10):
            exp.log_metric("loss", 1.0 / (i + 1), iteration=i)
        assert not suppressed()  # the training thread's own calls stay instrumented
    run = InMemoryExporter.runs[exp.run_id]
    assert run.history("loss") == [(i, 1.0 / (i + 1)) for i in range(10)]
    assert run.status is RunStatus.FINISHED
    assert seen["export"] and all(seen["export"]), seen
    assert seen["shutdown"] == [True]
    assert not suppressed()
