"""The OTel side of a run: its Resource and latest-value instruments, never a step attribute."""

from __future__ import annotations

import math
import os
import socket

import pytest

import tracelet
from tests._helpers import QUIET
from tracelet._otel import instrument_name
from tracelet.testing import capture_telemetry


def test_resource_identifies_the_run_and_gauges_hold_latest_values() -> None:
    with capture_telemetry() as telemetry:
        exp = tracelet.start_logging("e1", "p1", backend="memory", settings=QUIET)
        for i in range(3000):
            exp.log_metric("train/loss", 1 / (i + 1), iteration=i)
        exp.log_metric("val acc", 0.5, iteration=1)
        exp.log_metric("diverged", math.nan)
        exp.end()
        resource, series = telemetry.collect()
    assert resource["service.name"] == "tracelet"
    assert resource["service.instance.id"] == exp.run_id
    assert resource["tracelet.run_id"] == exp.run_id
    assert resource["tracelet.project"] == "p1"
    assert resource["tracelet.experiment"] == "e1"
    assert resource["host.name"] == socket.gethostname()
    assert resource["process.pid"] == os.getpid()
    assert series["train/loss"] == [({}, 1 / 3000)]
    assert series["val_acc"] == [({}, 0.5)]
    assert "diverged" not in series  # NaN is kept in the history, skipped by the gauge
    assert series["tracelet.step"] == [({}, 2999)]
    assert series["tracelet.points"] == [({}, 3002)]
    # No step or other unbounded value as an attribute: only the tracker name on the
    # per-backend health instruments, and the params on tracelet.run.info.
    assert {key for points in series.values() for attrs, _ in points for key in attrs} <= {
        "tracelet.backend"
    }
    assert series["tracelet.export.delivered"] == [({"tracelet.backend": "memory"}, 3002)]


def test_otel_service_name_and_resource_attributes_are_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "trainer")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=dev")
    with capture_telemetry() as telemetry:
        exp = tracelet.start_logging(backend="memory", settings=QUIET)
        exp.log_metric("loss", 1.0)
        resource, _ = telemetry.collect()
    assert resource["service.name"] == "trainer"
    assert resource["deployment.environment"] == "dev"


def test_run_never_touches_the_global_meter_provider() -> None:
    from opentelemetry import metrics

    before = metrics.get_meter_provider()
    exp = tracelet.start_logging(backend="memory", settings=QUIET)
    assert metrics.get_meter_provider() is before
    assert exp.telemetry.provider is not before


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("train/loss", "train/loss"),
        ("val acc", "val_acc"),
        ("1st", "m_1st"),
        ("loss@top-1", "loss_top-1"),
        ("é", "m__"),
        ("x" * 300, "x" * 255),
    ],
)
def test_instrument_name_mapping(name: str, expected: str) -> None:
    assert instrument_name(name) == expected


def test_capture_telemetry_reads_only_the_runs_started_inside_it() -> None:
    from tracelet import _otel

    with capture_telemetry() as telemetry:
        exp = tracelet.start_logging("inside", backend="memory", settings=QUIET)
        exp.log_metric("loss", 0.25)
        exp.end()
        assert telemetry.collect()[1]["loss"] == [({}, 0.25)]
    after = tracelet.start_logging("after", backend="memory", settings=QUIET)
    after.log_metric("loss", 0.5)
    after.end()
    assert len(telemetry.readers) == 1  # the run after the block got no reader of its own
    assert _otel._extra_readers == []  # the seam is left as it was found
