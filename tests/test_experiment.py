"""The Experiment API on the in-memory test double: steps, params, tags, lifecycle, errors."""

from __future__ import annotations

import logging
import math
from importlib.util import find_spec

import pytest

import tracelet
from tests._helpers import QUIET
from tracelet import TraceletSettings
from tracelet.errors import (
    BackendNotFoundError,
    BackendNotInstalledError,
    ConfigError,
    ExperimentClosedError,
    ParamConflictError,
)
from tracelet.export import RunStatus
from tracelet.testing import InMemoryExporter, MemoryRun


def start(**kwargs: object) -> tracelet.Experiment:
    kwargs.setdefault("backend", "memory")
    kwargs.setdefault("settings", QUIET)
    return tracelet.start_logging(**kwargs)  # type: ignore[arg-type]


def delivered(exp: tracelet.Experiment) -> MemoryRun:
    return InMemoryExporter.runs[exp.run_id]


def test_points_arrive_exactly_with_steps_values_and_times() -> None:
    exp = start(exp_name="e", project="p")
    logged = []
    for i in range(5000):
        before = __import__("time").time_ns()
        exp.log_metric("loss", 1 / (i + 1), iteration=i)
        logged.append((before, __import__("time").time_ns()))
    exp.log_metric("loss", math.nan, iteration=5000)
    exp.log_metric("loss", -math.inf, iteration=5001)
    report = exp.end()
    run = delivered(exp)
    history = run.history("loss")
    assert [s for s, _ in history] == list(range(5002))
    assert [v for _, v in history[:5000]] == [1 / (i + 1) for i in range(5000)]
    assert math.isnan(history[5000][1]) and history[5001][1] == -math.inf
    points = [p for p in run.metrics if p.name == "loss"][:5000]
    assert all(lo <= p.timestamp_ns <= hi for p, (lo, hi) in zip(points, logged, strict=True))
    assert run.status is RunStatus.FINISHED
    assert report.complete and report.points == 5002


def test_iteration_none_continues_each_metric_from_its_previous_step() -> None:
    exp = start()
    exp.log_metric("a", 1.0)
    exp.log_metric("a", 2.0)
    exp.log_metric("b", 3.0, iteration=10)
    exp.log_metric("b", 4.0)
    exp.log_metric("a", 5.0, iteration=7)
    exp.log_metric("a", 6.0)
    assert exp.step == 11
    exp.end()
    run = delivered(exp)
    assert run.history("a") == [(0, 1.0), (1, 2.0), (7, 5.0), (8, 6.0)]
    assert run.history("b") == [(10, 3.0), (11, 4.0)]


def test_log_metrics_shares_one_step_and_checks_all_values_first() -> None:
    exp = start()
    exp.log_metrics({"x": 1, "y": 2.5}, iteration=3)
    with pytest.raises(TypeError, match=r"'z'.*str"):
        exp.log_metrics({"w": 1.0, "z": "high"}, iteration=4)
    exp.end()
    run = delivered(exp)
    assert run.history("x") == [(3, 1.0)] and run.history("y") == [(3, 2.5)]
    assert run.history("w") == []


def test_params_are_flattened_repeatable_and_conflicts_raise() -> None:
    exp = start()
    exp.log_params({"lr": 0.1, "opt": {"name": "adam", "betas": [0.9, 0.99]}})
    exp.log_params({"lr": 0.1})  # same value: no-op
    with pytest.raises(ParamConflictError, match=r"'lr'.*0\.1.*0\.2"):
        exp.log_params({"epochs": 3, "lr": 0.2})
    exp.log_param("epochs", 3)
    exp.set_tags({"team": "vision", "n": 1})
    exp.end()
    run = delivered(exp)
    assert run.params == {"lr": 0.1, "opt/name": "adam", "opt/betas": "[0.9, 0.99]", "epochs": 3}
    assert run.tags == {"team": "vision", "n": "1"}


def test_context_manager_marks_failed_and_propagates() -> None:
    with pytest.raises(ZeroDivisionError), start() as exp:
        exp.log_metric("loss", 1.0)
        _ = 1 / 0
    assert delivered(exp).status is RunStatus.FAILED
    assert delivered(exp).history("loss") == [(0, 1.0)]
    assert tracelet.get_active_experiment() is None


def test_active_experiment_lifecycle() -> None:
    assert tracelet.get_active_experiment() is None
    first = start(exp_name="one")
    assert tracelet.get_active_experiment() is first
    second = start(exp_name="two")  # ends the first
    assert not first.active and delivered(first).status is RunStatus.FINISHED
    assert tracelet.get_active_experiment() is second
    tracelet.stop_logging()
    tracelet.stop_logging()  # harmless
    assert tracelet.get_active_experiment() is None
    with pytest.raises(ExperimentClosedError):
        second.log_metric("loss", 1.0)
    assert second.end() is second.report  # ending again returns the same report


def test_unknown_backend_lists_available_and_creates_nothing(tmp_path: object) -> None:
    with pytest.raises(ValueError, match=r"'invalid_backend'.*available backends: .*mlflow"):
        tracelet.start_logging(exp_name="x", project="p", backend="invalid_backend")
    with pytest.raises(BackendNotFoundError):
        tracelet.start_logging(backend=["memory", "nope"])
    assert tracelet.get_active_experiment() is None
    assert not __import__("pathlib").Path(".tracelet").exists()


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(BackendNotInstalledError, match=r"pip install 'tracelet\[mlflow\]'"):
        tracelet.start_logging(backend="mlflow")
    assert find_spec is not None


def test_config_options_are_routed_and_unknown_ones_rejected() -> None:
    with pytest.raises(ConfigError, match=r"'trackin_uri'.*allowed options: .*tracking_uri"):
        tracelet.start_logging(backend="mlflow", config={"trackin_uri": "x"}, settings=QUIET)
    with pytest.raises(ConfigError, match="must be a dict"):
        tracelet.start_logging(backend="mlflow", config={"mlflow": "x"}, settings=QUIET)
    exp = start(config={"tags": ["a", "b"]})
    assert exp.active


def test_settings_precedence_arguments_then_settings_then_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACELET_PROJECT", "from-env")
    monkeypatch.setenv("TRACELET_BACKEND", "memory,mlflow")
    assert TraceletSettings().backend == ["memory", "mlflow"]
    monkeypatch.setenv("TRACELET_BACKEND", "memory")
    monkeypatch.setenv("TRACELET_TRACK_SYSTEM", "false")
    exp = tracelet.start_logging(exp_name="e")
    assert exp.project == "from-env"
    exp = tracelet.start_logging(settings=TraceletSettings(project="from-settings"))
    assert exp.project == "from-settings"
    exp = tracelet.start_logging(project="from-arg", settings=TraceletSettings(project="s"))
    assert exp.project == "from-arg"


def test_settings_reject_misspelled_fields_and_bad_values() -> None:
    with pytest.raises(ValueError, match="track_sytem"):
        TraceletSettings(track_sytem=False)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="metrics_interval"):
        TraceletSettings(metrics_interval=0)
    assert TraceletSettings(backend="mlflow, wandb").backend == ["mlflow", "wandb"]


def test_many_threads_keep_per_metric_order() -> None:
    import threading

    exp = start()

    def work(k: int) -> None:
        for i in range(2000):
            exp.log_metric(f"t{k}", float(i), iteration=i)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    exp.end()
    for k in range(4):
        assert delivered(exp).history(f"t{k}") == [(i, float(i)) for i in range(2000)]


def test_a_point_queued_after_the_end_began_is_journaled_and_delivered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`log_metric` with a step takes no lock: a point that races with `end` is settled.

    Here the run ends (from another thread) right after the point is queued
    and before `log_metric` checks the state again: the history's last pass
    took it, so the call returns and the point is delivered.
    """
    import threading

    exp = start()
    exp.log_metric("loss", 0.5, iteration=0)
    queue = exp._queue

    class EndsAfterAppend:
        def append(self, record: object) -> None:
            queue.append(record)
            ender = threading.Thread(target=exp.end)
            ender.start()
            ender.join()

        def __len__(self) -> int:
            return len(queue)

    monkeypatch.setattr(exp, "_queue", EndsAfterAppend())
    exp.log_metric("loss", 0.25, iteration=1)  # accepted: no error
    assert exp.report is not None and exp.report.complete and exp.report.points == 2
    assert delivered(exp).history("loss") == [(0, 0.5), (1, 0.25)]


def test_a_point_queued_after_the_history_closed_is_refused_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other side of the race: the run ended entirely between the state check and
    the append. The point is in no journal, so the call says so."""
    import threading

    from tracelet import _experiment

    exp = start()
    exp.log_metric("loss", 0.5, iteration=0)
    real_time_ns = _experiment._time_ns

    def end_first() -> int:
        monkeypatch.setattr(_experiment, "_time_ns", real_time_ns)
        ender = threading.Thread(target=exp.end)
        ender.start()
        ender.join()
        return real_time_ns()

    monkeypatch.setattr(_experiment, "_time_ns", end_first)
    with pytest.raises(ExperimentClosedError):
        exp.log_metric("loss", 0.25, iteration=1)
    assert exp.report is not None and exp.report.complete and exp.report.points == 1
    assert delivered(exp).history("loss") == [(0, 0.5)]


def test_threads_logging_one_metric_without_steps_never_share_a_step() -> None:
    import threading

    exp = start()
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        for i in range(3000):
            exp.log_metric("shared", float(i))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    exp.end()
    assert [s for s, _ in delivered(exp).history("shared")] == list(range(12_000))


def test_step_and_points_count_what_is_queued_and_what_is_written_but_no_sample() -> None:
    """The journal writer keeps the run's view; what is still queued is added to it."""
    exp = start(settings=QUIET.model_copy(update={"flush_interval": 60.0}))
    run = exp._run
    for i in range(10):
        exp.log_metric("loss", 1.0, iteration=i)
    assert exp.step == 9 and run.points == 10  # all queued: the writer sleeps for 60 s
    assert run.put_sample({"system/cpu": 5.0}, 1_000)
    run.history.wake()
    while run.history.backlog:
        __import__("time").sleep(0.01)
    exp.log_metric("loss", 2.0)
    assert exp.step == 10 and run.points == 11  # ten written, one queued; the sample apart
    exp.end()
    assert exp.report is not None and exp.report.points == 12  # the sample is delivered


def test_the_memory_double_takes_frames_from_the_writer_without_decoding_the_journal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tracelet import _journal

    def no_decoding(line: bytes) -> object:
        raise AssertionError("the training process decoded its own journal")

    monkeypatch.setattr(_journal, "decode", no_decoding)
    exp = start()
    for i in range(5000):
        exp.log_metric("loss", i / 7, iteration=i)
    exp.log_params({"lr": 0.1})
    exp.end()
    assert exp.report is not None and exp.report.complete
    run = delivered(exp)
    assert run.history("loss") == [(i, i / 7) for i in range(5000)]
    assert run.params == {"lr": 0.1}


def test_report_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tracelet")
    exp = start()
    exp.log_metric("loss", 1.0)
    exp.end()
    assert "backend 'memory' received all 1 points" in caplog.text
