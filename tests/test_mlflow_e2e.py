"""100,000 points into real MLflow (local sqlite store and a real server), read back exactly."""

from __future__ import annotations

import math
import time

import pytest
from mlflow import MlflowClient

import tracelet
from tests._helpers import QUIET
from tracelet.export import RunStatus

N = 100_000
NAMES = ("train/loss", "train/acc", "lr")


def log_and_read_back(uri: str) -> None:
    exp = tracelet.start_logging(
        exp_name="bulk",
        project="e2e",
        backend="mlflow",
        config={"tracking_uri": uri},
        settings=QUIET,
    )
    exp.log_params({"lr": 0.1, "model": {"depth": 18}})
    bounds = []
    for i in range(N):
        name = NAMES[i % 3]
        value = math.sin(i) if i % 1000 else math.nan
        lo = time.time_ns()
        exp.log_metric(name, value, iteration=i // 3)
        bounds.append((lo, time.time_ns()))
    report = exp.end()
    assert report.complete and report.points == N

    client = MlflowClient(uri)
    run_id = client.search_runs(
        [client.get_experiment_by_name("e2e").experiment_id],
        filter_string=f"tags.`tracelet.run_id` = '{exp.run_id}'",
    )[0].info.run_id
    run = client.get_run(run_id)
    assert run.info.status == RunStatus.FINISHED.value
    assert run.data.params == {"lr": "0.1", "model/depth": "18"}
    total = 0
    for k, name in enumerate(NAMES):
        history = client.get_metric_history(run_id, name)
        total += len(history)
        expected = range(k, N, 3)
        assert len(history) == len(expected)
        got = sorted((m.step, m.timestamp, m.value) for m in history)
        for (step, ts_ms, value), i in zip(got, expected, strict=True):
            assert step == i // 3
            if i % 1000:
                assert value == math.sin(i)
            else:
                assert math.isnan(value)
            lo, hi = bounds[i]
            assert lo // 1_000_000 <= ts_ms <= hi // 1_000_000
    assert total == N


@pytest.mark.slow
def test_100k_points_into_the_local_store(mlflow_uri: str) -> None:
    log_and_read_back(mlflow_uri)


@pytest.mark.slow
def test_100k_points_into_a_real_mlflow_server(mlflow_server: str) -> None:
    log_and_read_back(mlflow_server)


def test_default_is_mlflows_local_store_in_the_working_directory(mlflow_uri: str) -> None:
    # mlflow_uri is ./mlflow.db: the default store, already migrated.
    with tracelet.start_logging("default-store", settings=QUIET) as exp:
        exp.log_metric("loss", 0.5, iteration=3)
        exp.log_metric("loss", math.inf, iteration=4)
    client = MlflowClient("sqlite:///mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("default").experiment_id])
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]
    # MLflow's SQL stores keep NaN but clamp ±inf to the float limits.
    assert history == [(3, 0.5), (4, 1.7976931348623157e308)]
    assert run.info.run_name == "default-store"
    assert run.data.tags["tracelet.run_id"] == exp.run_id


def test_failed_run_is_marked_failed_in_mlflow(mlflow_uri: str) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracelet.start_logging(
            "fails",
            "e2e",
            config={"tracking_uri": mlflow_uri, "tags": {"team": "cv"}},
            settings=QUIET,
        ) as exp,
    ):
        exp.log_metric("loss", 1.0)
        raise RuntimeError("boom")
    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["team"] == "cv"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0]
    assert exp.report is not None and exp.report.status is RunStatus.FAILED
