"""One contract, every tracker exporter: each case is read back from the real backend.

The exporters (MLflow, W&B, ClearML, and the in-memory test double) are driven
through the `TrackerExporter` contract exactly as a delivery thread drives
them: ``start`` → ``export`` (batches) → ``force_flush`` → ``shutdown``. What
each backend stored is then read from the backend itself (`tests._trackers`).
Where a backend cannot store something as logged, the expected value is the
documented translation (`tests._trackers.stored_value`).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._trackers import READERS, Stored, same_series, stored_value
from tracelet import _registry
from tracelet.export import Batch, MetricPoint, RunInfo, RunStatus, TrackerExporter

BACKENDS = ["memory", "mlflow", "wandb", "clearml"]
T0 = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory, mlflow_store: Callable[[Path], str]) -> str:
    """One sqlite store for the module, a copy of the session's migrated one."""
    return mlflow_store(tmp_path_factory.mktemp("contract") / "mlflow.db")


class Driven:
    """An exporter driven through the contract, then read back."""

    def __init__(self, backend: str, exporter: TrackerExporter, name: str) -> None:
        self.backend = backend
        self.exporter = exporter
        self.info = RunInfo(run_id=uuid.uuid4().hex, project="contract", name=name)
        self.state: dict[str, Any] = {}
        self.closed = False

    def start(self) -> dict[str, Any]:
        self.state = self.exporter.start(self.info)
        if self.backend == "memory":
            self.state = {"run_id": self.info.run_id}
        return self.state

    def export(self, batch: Batch) -> None:
        assert self.exporter.export(batch).name == "SUCCESS"

    def close(self, status: RunStatus = RunStatus.FINISHED) -> Stored:
        assert self.exporter.force_flush(10_000) is True
        self.exporter.shutdown(timeout_millis=30_000, status=status)
        self.closed = True
        return READERS[self.backend](self.state)


@pytest.fixture(params=BACKENDS)
def drive(
    request: pytest.FixtureRequest, offline_trackers: Path, mlflow_db: str
) -> Iterator[Callable[..., Driven]]:
    backend: str = request.param
    runs: list[Driven] = []

    def make(name: str, **options: Any) -> Driven:
        cls = _registry.resolve([backend])[backend]
        assert not _registry.is_telemetry(cls)
        if backend == "mlflow":
            options.setdefault("tracking_uri", mlflow_db)
        exporter = cls(cls.options(**options))  # type: ignore[call-arg]
        run = Driven(backend, exporter, name)
        runs.append(run)
        return run

    yield make
    for run in runs:  # a failed case must not leave a ClearML task open for the next
        if run.state and not run.closed:
            run.exporter.shutdown(status=RunStatus.KILLED)


def points(name: str, steps_values: list[tuple[int, float]]) -> list[MetricPoint]:
    return [MetricPoint(name, v, s, T0 + i) for i, (s, v) in enumerate(steps_values)]


def test_start_opens_a_named_run_and_returns_resumable_state(drive: Callable[..., Driven]) -> None:
    run = drive("start-case")
    state = run.start()
    assert json.loads(json.dumps(state)) == state  # kept in the run directory as JSON
    stored = run.close()
    assert stored.name == "start-case"
    assert stored.series == {}


def test_interleaved_and_backwards_steps_arrive_exactly(drive: Callable[..., Driven]) -> None:
    train = [(0, 1.0), (1, 0.9), (2, 0.8), (1, 0.85), (3, 0.7), (3, 0.65)]
    val = [(0, 2.0), (1, 1.5), (0, 1.9)]
    lr = [(10, 0.1), (5, 0.2)]
    run = drive("steps-case")
    run.start()
    mixed: list[MetricPoint] = []
    t, v, r = points("train/loss", train), points("val/loss", val), points("lr", lr)
    for i in range(len(train)):  # interleave the three metrics, as a training loop does
        mixed.append(t[i])
        if i < len(val):
            mixed.append(v[i])
        if i < len(lr):
            mixed.append(r[i])
    run.export(Batch(metrics=mixed[:5]))
    run.export(Batch(metrics=mixed[5:]))
    stored = run.close()
    assert set(stored.series) == {"train/loss", "val/loss", "lr"}
    for name, logged in (("train/loss", train), ("val/loss", val), ("lr", lr)):
        assert same_series(run.backend, stored.series[name], logged), (name, stored.series[name])


def test_params_arrive(drive: Callable[..., Driven]) -> None:
    params = {"lr": 0.1, "layers": 3, "opt/name": "adam", "flag": True, "nothing": None}
    run = drive("params-case")
    run.start()
    run.export(Batch(params=params))
    run.export(Batch(params={"late": "yes"}))
    stored = run.close()
    none_text = "None" if run.backend == "mlflow" else ""
    assert stored.params == {
        "lr": "0.1",
        "layers": "3",
        "opt/name": "adam",
        "flag": "True",
        "nothing": none_text,
        "late": "yes",
    }


def test_tags_arrive_and_a_tag_set_again_is_replaced(drive: Callable[..., Driven]) -> None:
    run = drive("tags-case", tags={"team": "core"})
    run.start()
    run.export(Batch(tags={"stage": "warmup", "baseline": ""}))
    run.export(Batch(tags={"stage": "main"}))
    stored = run.close()
    assert {"team:core", "stage:main", "baseline"} <= stored.tags
    assert "stage:warmup" not in stored.tags


def test_nan_and_inf(drive: Callable[..., Driven]) -> None:
    logged = [(0, math.nan), (1, math.inf), (2, -math.inf), (3, 0.5), (4, math.nan)]
    run = drive("nonfinite-case")
    run.start()
    run.export(Batch(metrics=points("loss", logged)))
    stored = run.close()
    expected = [(s, stored_value(run.backend, v)) for s, v in logged]
    kept = [(s, v) for s, v in expected if v is not None]
    assert same_series(run.backend, stored.series["loss"], kept), stored.series["loss"]  # type: ignore[arg-type]


def test_close_marks_the_run_finished(drive: Callable[..., Driven]) -> None:
    run = drive("close-case")
    run.start()
    run.export(Batch(metrics=points("loss", [(0, 1.0)])))
    stored = run.close(RunStatus.FINISHED)
    assert stored.status == "FINISHED"
    assert stored.series["loss"] == [(0, 1.0)]


def test_failed_close_marks_the_run_failed(drive: Callable[..., Driven]) -> None:
    run = drive("failed-case")
    run.start()
    run.export(Batch(metrics=points("loss", [(0, 1.0), (1, math.nan)])))
    stored = run.close(RunStatus.FAILED)
    assert stored.status == "FAILED"
    assert stored.series["loss"][0] == (0, 1.0)
