"""How a run ends, read back from a real MLflow store: ``sys.exit`` inside ``with``,
`Experiment.end` and the active slot; and the system samples every run has
(one as it starts, one as it ends), put through the same door as ``log_metric``."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import tracelet
import tracelet._history
from tests._helpers import QUIET
from tests._reliability import mlflow_history, mlflow_run
from tracelet import RunStatus, TraceletSettings
from tracelet._run import RunState
from tracelet._system import PREFIX
from tracelet.testing import InMemoryExporter


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, mlflow_store: Callable[[Path], str]) -> str:
    """One MLflow sqlite store for the module (a copy of the session's migrated one)."""
    return mlflow_store(tmp_path_factory.mktemp("lifecycle") / "mlflow.db")


def start(store: str, name: str, settings: TraceletSettings = QUIET) -> tracelet.Experiment:
    return tracelet.start_logging(
        name, "lifecycle", backend="mlflow", config={"tracking_uri": store}, settings=settings
    )


# -- sys.exit inside `with` (issue 14, item 10) ------------------------------------------

#: ``sys.exit`` arguments and the status the run must end with: what the
#: process's exit status says (0 is a clean exit; a message exits with 1).
EXITS: list[tuple[tuple[Any, ...], str]] = [
    ((), "FINISHED"),
    ((0,), "FINISHED"),
    ((None,), "FINISHED"),
    ((1,), "FAILED"),
    ((2,), "FAILED"),
    (("bad config",), "FAILED"),
]


def test_sys_exit_inside_with_ends_the_run_as_the_exit_status_says(store: str) -> None:
    for i, (args, expected) in enumerate(EXITS):
        with pytest.raises(SystemExit), start(store, f"exit-{i}") as exp:
            exp.log_metric("loss", 1.0)
            sys.exit(*args)
        assert exp.report is not None and exp.report.status.value == expected, args
        assert tracelet.get_active_experiment() is None
        run = mlflow_run(store, exp.run_id)
        assert run.info.status == expected, args
        assert [s for s, _, _ in mlflow_history(store, run.info.run_id, "loss")] == [0]


def test_ctrl_c_and_exceptions_inside_with_keep_their_status(store: str) -> None:
    for exc, expected in ((KeyboardInterrupt(), "KILLED"), (RuntimeError("boom"), "FAILED")):
        with pytest.raises(type(exc)), start(store, type(exc).__name__) as exp:
            raise exc
        assert mlflow_run(store, exp.run_id).info.status == expected


# -- exp.end() and the active slot (issue 14, item 11) ----------------------------------


def test_end_clears_the_active_slot_so_the_interface_pattern_does_not_raise(store: str) -> None:
    exp = start(store, "ended")
    assert tracelet.get_active_experiment() is exp
    exp.log_metric("loss", 0.5, iteration=0)
    report = exp.end()
    assert report.complete
    assert tracelet.get_active_experiment() is None
    # The interface page's pattern, after the run ended: nothing is logged, nothing raises.
    experiment = tracelet.get_active_experiment()
    if experiment:
        experiment.log_metric("loss", 0.1, iteration=50)
    tracelet.stop_logging()  # harmless: there is no active run
    assert exp.end() is report
    run = mlflow_run(store, exp.run_id)
    assert run.info.status == "FINISHED"
    assert [(s, v) for s, v, _ in mlflow_history(store, run.info.run_id, "loss")] == [(0, 0.5)]


def test_ending_an_older_run_leaves_the_newer_one_active(store: str) -> None:
    first = start(store, "first")
    second = start(store, "second")  # ends the first
    assert first.end() is first.report
    assert tracelet.get_active_experiment() is second
    second.log_metric("acc", 0.9, iteration=1)
    second.end(RunStatus.FINISHED)
    assert tracelet.get_active_experiment() is None
    assert mlflow_run(store, first.run_id).info.status == "FINISHED"
    run = mlflow_run(store, second.run_id)
    assert [(s, v) for s, v, _ in mlflow_history(store, run.info.run_id, "acc")] == [(1, 0.9)]


def test_every_way_of_ending_goes_through_one_state() -> None:
    exp = tracelet.start_logging(backend="memory", settings=QUIET)
    assert exp._run.state is RunState.ACTIVE and exp.active
    with exp:
        exp.log_metric("x", 1.0)
    assert exp._run.state is RunState.ENDED and not exp.active
    with pytest.raises(tracelet.ExperimentClosedError):
        exp.log_metric("x", 2.0)
    assert InMemoryExporter.runs[exp.run_id].history("x") == [(0, 1.0)]


# -- system samples at the start and end of every run (issue 16, item 5) ---------------


def test_a_short_run_has_system_metrics_at_two_steps_in_mlflow(store: str) -> None:
    # The default metrics_interval (10 s) is longer than this run.
    settings = TraceletSettings(track_git=False, track_env=False)
    assert settings.track_system and settings.metrics_interval == 10.0
    with start(store, "quickstart", settings) as exp:
        for step in range(20):
            exp.log_metric("train/loss", 1 / (step + 1), iteration=step)
    assert exp.report is not None and exp.report.complete
    client = MlflowClient(store)
    run = mlflow_run(store, exp.run_id)
    names = {k for k in client.get_run(run.info.run_id).data.metrics if k.startswith(PREFIX)}
    assert PREFIX + "cpu_utilization_percentage" in names, names
    assert PREFIX + "system_memory_usage_megabytes" in names, names
    for name in names:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, name))
        assert steps == [0, 1], (name, steps)
    # The samples move neither the run's own step nor its point count (tracelet.points).
    assert exp.step == 19 and exp._run.points == 20


def test_the_sampler_waits_at_the_memory_bound_like_log_metric(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The journal writer stalls; the sampler meets the bound log_metric meets, and waits."""
    stalled, go = threading.Event(), threading.Event()
    real_write, real_wake = tracelet._history.History._write, tracelet._history.History.wake
    waited: set[str] = set()  # the threads that met a full queue

    def slow_write(self: Any, data: bytes) -> None:
        stalled.set()
        go.wait()
        real_write(self, data)

    def wake(self: Any) -> None:
        if len(self.queue) >= self.max_buffered:
            waited.add(threading.current_thread().name)
        real_wake(self)

    monkeypatch.setattr(tracelet._history.History, "_write", slow_write)
    monkeypatch.setattr(tracelet._history.History, "wake", wake)
    settings = TraceletSettings(
        track_git=False, track_env=False, metrics_interval=0.05, max_buffered_points=1000
    )
    exp = tracelet.start_logging("bound", backend="memory", settings=settings)
    history = exp._history

    def produce() -> None:
        for i in range(3_000):
            exp.log_metric("x", float(i), iteration=i)

    producer = threading.Thread(target=produce, name="producer")
    producer.start()
    try:
        assert stalled.wait(30)
        deadline = time.monotonic() + 60
        while "tracelet-system" not in waited:
            assert time.monotonic() < deadline, f"only {sorted(waited)} met the bound"
            time.sleep(0.01)
        assert "producer" in waited
        assert len(history.queue) <= history.max_buffered + 100  # one sample at most past it
    finally:
        go.set()
        producer.join(60)
    report = exp.end()
    assert report.complete
    sampler = exp._run.sampler
    assert sampler is not None and sampler.samples >= 1
    run = InMemoryExporter.runs[exp.run_id]
    assert [s for s, _ in run.history("x")] == list(range(3_000))
    steps = [s for s, _ in run.history(PREFIX + "cpu_utilization_percentage")]
    assert steps == list(range(sampler.samples))


def test_a_sample_after_the_end_is_refused() -> None:
    exp = tracelet.start_logging(backend="memory", settings=QUIET)
    exp.end()
    assert exp._run.put_sample({PREFIX + "x": 1.0}, 0) is False
    assert not [p for p in InMemoryExporter.runs[exp.run_id].metrics if p.name.startswith(PREFIX)]
