"""Several backends: each gets every point; one failing costs the others nothing.

Delivery is proven by reading the real backends back (MLflow's sqlite store,
W&B's .wandb file, ClearML's offline session). Faults are injected by making
one SDK call raise (monkeypatch) or by a fake exporter that stalls, in this
process: the backends run on delivery threads here (``delivery="thread"``), the
same deliveries the delivery agent runs in its own process.
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pytest

import tracelet
from tests._faulty import StallingExporter
from tests._helpers import wait_for
from tests._trackers import read_back, same_series, starts_seen
from tracelet import TraceletSettings, _registry

pytestmark = pytest.mark.usefixtures("offline_trackers")


#: Seconds `end()` gives the backends once all healthy ones have started; the
#: broken one holds `end()` that long (the deadline is the only thing it costs).
CLOSE_TIMEOUT = 8


def settings(**kw: Any) -> TraceletSettings:
    return TraceletSettings(
        track_system=False, track_git=False, track_env=False, delivery="thread", **kw
    )


def log_run(exp: tracelet.Experiment, n: int) -> dict[str, list[tuple[int, float]]]:
    """`n` points per metric: train every step, val every 10th step and going back."""
    logged: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
    for i in range(n):
        exp.log_metric("train/loss", 1.0 / (i + 1), iteration=i)
        logged["train/loss"].append((i, 1.0 / (i + 1)))
        if i % 10 == 9:
            step = (n - i) // 10  # val steps go backwards
            exp.log_metric("val/loss", i / 7, iteration=step)
            logged["val/loss"].append((step, i / 7))
    return logged


def backend_records(caplog: pytest.LogCaptureFixture, backend: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "tracelet" and r.levelno >= logging.WARNING and repr(backend) in r.getMessage()
    ]


def assert_received_everything(exp: tracelet.Experiment, backend: str, logged: Any) -> None:
    stored = read_back(exp.run_dir, backend)
    assert set(stored.series) == set(logged)
    for name, points in logged.items():
        assert same_series(backend, stored.series[name], points), (backend, name)
    assert stored.status == "FINISHED"


@pytest.mark.slow
def test_a_backend_that_cannot_start_costs_the_others_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mlflow_uri: str
) -> None:
    import wandb

    def broken_init(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("W&B is unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level(logging.WARNING, logger="tracelet"), starts_seen(monkeypatch) as started:
        exp = tracelet.start_logging(
            exp_name="fanout",
            project="p",
            backend=["mlflow", "wandb", "clearml"],
            config={"mlflow": {"tracking_uri": mlflow_uri}},
            settings=settings(close_timeout=CLOSE_TIMEOUT),
        )
        logged = log_run(exp, 2000)  # never raises, whatever a backend does
        for _ in range(2):  # MLflow and ClearML; the close deadline is for delivery only
            assert started.acquire(timeout=120)
        report = exp.end()

    by_name = {b.backend: b for b in report.backends}
    assert by_name["mlflow"].undelivered == 0 and by_name["mlflow"].closed
    assert by_name["clearml"].undelivered == 0 and by_name["clearml"].closed
    assert by_name["wandb"].delivered == 0 and not by_name["wandb"].closed
    assert "W&B is unreachable" in (by_name["wandb"].error or "")
    assert not report.complete

    # Said once when it happened (retries are quiet), once in the summary at close.
    records = backend_records(caplog, "wandb")
    assert len(records) == 2, [r.getMessage() for r in records]
    assert "failed to start" in records[0].getMessage()
    assert "W&B is unreachable" in records[0].getMessage()
    assert "received 0 of" in records[1].getMessage() and records[1].levelno == logging.ERROR

    assert_received_everything(exp, "mlflow", logged)
    assert_received_everything(exp, "clearml", logged)


@pytest.mark.slow
def test_a_backend_that_fails_mid_run_costs_the_others_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, mlflow_uri: str
) -> None:
    from mlflow import MlflowClient

    from tracelet.exporters.mlflow import MLflowExporter

    real_log_batch = MlflowClient.log_batch
    real_export = MLflowExporter.export
    real_flush = MLflowExporter.force_flush
    exported = threading.Event()  # a batch of points was accepted
    gone = threading.Event()  # the server goes away once that batch is durable

    def log_batch_then_fail(self: Any, *args: Any, **kwargs: Any) -> Any:
        if gone.is_set():
            raise ConnectionError("MLflow server went away")
        return real_log_batch(self, *args, **kwargs)

    def export_and_note(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        result = real_export(self, batch, *args, **kwargs)
        if batch.metrics:
            exported.set()
        return result

    def flush_then_go_away(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Once a flush made a batch of points durable (the delivered count
        # moves past it), every later request fails: mid-run, by construction,
        # whatever the speed of the machine.
        result = real_flush(self, *args, **kwargs)
        if result and exported.is_set():
            gone.set()
        return result

    monkeypatch.setattr(MlflowClient, "log_batch", log_batch_then_fail)
    monkeypatch.setattr(MLflowExporter, "export", export_and_note)
    monkeypatch.setattr(MLflowExporter, "force_flush", flush_then_go_away)
    with caplog.at_level(logging.WARNING, logger="tracelet"), starts_seen(monkeypatch) as started:
        exp = tracelet.start_logging(
            exp_name="fanout",
            project="p",
            backend=["mlflow", "wandb", "clearml"],
            config={"mlflow": {"tracking_uri": mlflow_uri}},
            settings=settings(close_timeout=CLOSE_TIMEOUT),
        )
        exp.log_metric("warmup", 0.0, iteration=0)
        wait_for(gone.is_set, 120, "the first point durable in MLflow")
        logged = {"warmup": [(0, 0.0)], **log_run(exp, 3000)}
        for _ in range(3):
            assert started.acquire(timeout=120)
        report = exp.end()

    mlflow = next(b for b in report.backends if b.backend == "mlflow")
    assert 0 < mlflow.delivered < report.points and not mlflow.closed
    assert "MLflow server went away" in (mlflow.error or "")
    records = backend_records(caplog, "mlflow")
    assert len(records) == 2, [r.getMessage() for r in records]
    assert "failed to export" in records[0].getMessage()
    assert f"received {mlflow.delivered} of {report.points}" in records[1].getMessage()

    assert_received_everything(exp, "wandb", logged)
    assert_received_everything(exp, "clearml", logged)


@pytest.mark.slow
def test_a_stalled_backend_does_not_hold_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stalled = EntryPoint("stalled", "tests._faulty:StallingExporter", _registry.GROUP)

    def with_stalled(**kwargs: Any) -> Any:
        return [*entry_points(**kwargs), stalled]

    monkeypatch.setattr(_registry, "entry_points", with_stalled)
    StallingExporter.release.clear()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="tracelet"),
            starts_seen(monkeypatch) as started,
        ):
            exp = tracelet.start_logging(
                exp_name="fanout",
                project="p",
                backend=["stalled", "wandb", "clearml"],
                settings=settings(close_timeout=CLOSE_TIMEOUT),
            )
            logged = log_run(exp, 1000)
            for _ in range(3):
                assert started.acquire(timeout=120)
            report = exp.end()  # returns at the close deadline, stalled or not
        assert StallingExporter.entered.is_set()
    finally:
        StallingExporter.release.set()

    by_name = {b.backend: b for b in report.backends}
    assert by_name["stalled"].undelivered == report.points and not by_name["stalled"].closed
    assert by_name["wandb"].undelivered == 0 and by_name["clearml"].undelivered == 0
    assert len(backend_records(caplog, "stalled")) == 1  # the summary names it
    assert_received_everything(exp, "wandb", logged)
    assert_received_everything(exp, "clearml", logged)
