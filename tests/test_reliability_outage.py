"""A real MLflow server going away mid-run: nothing lost or duplicated; the loop never waits."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tracelet
from tests._helpers import IN_PROCESS, QUIET, wait_for
from tests._reliability import assert_exactly_once, mlflow_history, mlflow_run
from tests._servers import MlflowServer
from tracelet.export import Batch, ExportResult
from tracelet.exporters.mlflow import MLflowExporter


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path
) -> Iterator[MlflowServer]:
    srv = MlflowServer(tmp_path_factory.mktemp("outage-server"), template=mlflow_template).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_server_stopped_for_30_s_mid_run(server: MlflowServer) -> None:
    settings = QUIET.model_copy(update={"close_timeout": 300.0})
    exp = tracelet.start_logging(
        "outage",
        "reliability",
        backend="mlflow",
        config={"tracking_uri": server.url, "http_timeout": 5},
        settings=settings,
    )
    exp.log_params({"phase": "before"})
    [delivery] = exp._deliveries
    outage = {"down": 0.0, "up": 0.0}
    done = threading.Event()

    def operator() -> None:
        wait_for(lambda: delivery.delivered >= 2000, 120, "2000 points delivered")
        server.stop()
        outage["down"] = time.monotonic()
        time.sleep(30)  # the outage itself
        server.start()
        outage["up"] = time.monotonic()
        done.set()

    ops = threading.Thread(target=operator, name="test-operator")
    ops.start()
    worst_ns, during_worst_ns, i = 0, 0, 0
    backlog = 0
    while not done.is_set() or i < 100_000:  # training goes on through the outage
        for _ in range(25):
            t0 = time.perf_counter_ns()
            exp.log_metric("train/loss", math.exp(-i / 10_000), iteration=i)
            dt = time.perf_counter_ns() - t0
            worst_ns = max(worst_ns, dt)
            if outage["down"] and not outage["up"]:
                during_worst_ns = max(during_worst_ns, dt)
            i += 1
        if i % 10_000 == 0:
            exp.log_metric("epoch", i // 10_000)
            if outage["down"] and not outage["up"]:
                exp.log_params({f"during/{i}": i})
        backlog = max(backlog, exp._history.backlog)
        time.sleep(0.01)  # the rest of a training step
    ops.join()
    failures = delivery.failures
    report = exp.end()
    print(
        f"\noutage {outage['up'] - outage['down']:.1f} s; {i} points logged; "
        f"{failures} failed attempts retried; max log_metric {worst_ns / 1e6:.3f} ms overall, "
        f"{during_worst_ns / 1e6:.3f} ms during the outage; max in-memory backlog {backlog}"
    )
    assert failures > 0  # the outage was seen, and ridden out
    assert report.complete, report
    # A call that waited on the backend would take seconds (HTTP timeouts);
    # this only guards against that, not against scheduler noise.
    assert during_worst_ns < 0.25e9

    run = mlflow_run(server.url, exp.run_id)
    assert run.info.status == "FINISHED"
    history = mlflow_history(server.url, run.info.run_id, "train/loss")
    assert_exactly_once([s for s, _, _ in history], range(i), "train/loss")
    assert [v for _, v, _ in history] == [math.exp(-k / 10_000) for k in range(i)]
    epochs = mlflow_history(server.url, run.info.run_id, "epoch")
    assert_exactly_once([s for s, _, _ in epochs], range(len(epochs)), "epoch")
    assert len(epochs) == i // 10_000
    assert any(k.startswith("during/") for k in run.data.params)


@pytest.mark.slow
def test_a_batch_retried_after_it_was_applied_is_not_duplicated(
    server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request reached the server but the answer was lost: the retry must not duplicate."""
    real_export = MLflowExporter.export
    lost = {"answers": 0}

    def export_then_lose_answer(
        self: MLflowExporter, batch: Batch, timeout_millis: float = 10_000, **kw: object
    ) -> ExportResult:
        result = real_export(self, batch, timeout_millis)
        if lost["answers"] < 3 and batch.metrics:
            lost["answers"] += 1
            raise ConnectionResetError("connection reset before the response arrived")
        return result

    monkeypatch.setattr(MLflowExporter, "export", export_then_lose_answer)
    monkeypatch.setattr("tracelet._delivery._BACKOFF_FIRST", 0.01)
    exp = tracelet.start_logging(
        "half-applied",
        "reliability",
        backend="mlflow",
        config={"tracking_uri": server.url},
        settings=IN_PROCESS,
    )
    for i in range(5000):
        exp.log_metric("m", i * 0.5, iteration=i)
    report = exp.end()
    assert report.complete and lost["answers"] == 3
    run = mlflow_run(server.url, exp.run_id)
    history = mlflow_history(server.url, run.info.run_id, "m")
    assert_exactly_once([s for s, _, _ in history], range(5000), "m")


@pytest.mark.slow
def test_mlflows_own_http_retries_are_bounded_for_tracelets_client_only(
    server: MlflowServer, tmp_path: Path
) -> None:
    """A dead server fails an export in one bounded attempt; nothing global is changed."""
    from mlflow import MlflowClient

    env_before = dict(os.environ)
    exp = tracelet.start_logging(
        "bounded",
        "reliability",
        backend="mlflow",
        config={"tracking_uri": server.url, "http_timeout": 2},
        settings=IN_PROCESS,
    )
    [delivery] = exp._deliveries
    wait_for(lambda: delivery.started, 120, "the MLflow run started")
    exporter = delivery.exporter
    assert type(exporter._client._tracking_client.store).__name__ == "BoundedRestStore"
    users_client = MlflowClient(server.url)  # the user's own client keeps MLflow's policy
    assert type(users_client._tracking_client.store).__name__ == "RestStore"
    server.stop()
    try:
        batch = Batch()
        batch.metrics.append(tracelet.export.MetricPoint("z", 1.0, 0, time.time_ns()))
        t0 = time.monotonic()
        with pytest.raises(Exception, match=r"127\.0\.0\.1"):
            exporter.export(batch, timeout_millis=2000)
        elapsed = time.monotonic() - t0
        print(f"\nexport against a stopped server failed after {elapsed:.2f} s")
        assert elapsed < 30  # MLflow's default policy would retry for minutes
        exp._run.close_timeout = 2.0
        report = exp.end()
        assert not report.complete
    finally:
        server.start()
    assert dict(os.environ) == env_before
