"""The rank policy and resume inside one process (launcher variables set by the test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import tracelet
from tests._helpers import QUIET, wait_for
from tests._reliability import mlflow_history, mlflow_run
from tracelet import _launch, _rundir
from tracelet.testing import InMemoryExporter, capture_telemetry


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, local: int | None = None) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank if local is None else local))


def test_a_nonzero_rank_writes_no_tracker_and_feeds_otel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _as_rank(monkeypatch, 1)
    with capture_telemetry() as telemetry:
        exp = tracelet.start_logging("ddp", "p", backend="memory", settings=QUIET)
        for step in range(10):
            exp.log_metric("loss", float(step), iteration=step)
        resource, _ = telemetry.collect()
        wait_latest = telemetry.latest()
    assert resource["tracelet.run_id"] == exp.run_id and resource["tracelet.rank"] == 1
    assert resource["service.instance.id"] == f"{exp.run_id}-rank1"
    assert wait_latest["loss"] == 9.0  # the OTel gauge has the rank's latest value
    report = exp.end()
    assert report.backends == [] and InMemoryExporter.runs == {}
    run = _rundir.read_run(exp.run_dir)
    assert (run["rank"], run["backends"], run["attach"]) == (1, [], "continue")
    assert exp.run_dir.name.endswith("-rank1")
    assert not (exp.run_dir / _rundir.JOURNAL_FILE).exists()

    _as_rank(monkeypatch, 0)  # rank 0 of the same job: the same run id, and it writes
    exp0 = tracelet.start_logging("ddp", "p", backend="memory", settings=QUIET)
    exp0.log_metric("loss", 1.0, iteration=0)
    exp0.end()
    assert exp0.run_id == exp.run_id
    assert InMemoryExporter.runs[exp.run_id].history("loss") == [(0, 1.0)]


def test_all_ranks_mode_is_kept_for_tracelet_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    _as_rank(monkeypatch, 1)
    exp = tracelet.start_logging(
        "ddp", "p", backend="memory", settings=QUIET.model_copy(update={"ranks": "all"})
    )
    exp.log_metric("loss", 2.0, iteration=0)
    exp.end()
    run = _rundir.read_run(exp.run_dir)
    assert _launch.info_fields(run) == {"attach": "join", "rank": 1}
    stored = InMemoryExporter.runs[exp.run_id]
    assert stored.history("rank1/loss") == [(0, 2.0)] and stored.info.rank == 1


def test_run_id_continues_the_run_dir_and_the_tracker_run() -> None:
    for part in range(2):
        exp = tracelet.start_logging("job", "p", backend="memory", settings=QUIET, run_id="r-1")
        for step in range(part * 5, part * 5 + 5):
            exp.log_metric("loss", float(step), iteration=step)
        exp.log_params({"lr": 0.1})  # the same value again: fine
        report = exp.end()
        assert report.complete
    runs = list((Path(".tracelet") / "runs").iterdir())
    assert len(runs) == 1 and _rundir.read_run(runs[0])["parts"] == 2
    assert [s for s, _ in InMemoryExporter.runs["r-1"].history("loss")] == list(range(10))


def test_run_id_finds_the_mlflow_run_by_its_tag_without_the_run_dir(mlflow_uri: str) -> None:
    for part in range(2):
        exp = tracelet.start_logging(
            "job",
            "p",
            backend="mlflow",
            config={"tracking_uri": mlflow_uri},
            settings=QUIET,
            run_id="moved-1",
        )
        for step in range(part * 5, part * 5 + 5):
            exp.log_metric("loss", float(step), iteration=step)
        assert exp.end().complete
        shutil.rmtree(".tracelet")  # the next part runs on another machine
    run = mlflow_run(mlflow_uri, "moved-1")  # one MLflow run carries the id
    assert run.info.status == "FINISHED"
    assert [s for s, _, _ in mlflow_history(mlflow_uri, run.info.run_id, "loss")] == list(range(10))


def test_a_run_still_owned_is_not_taken_over(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracelet import _resume
    from tracelet.errors import TraceletError

    exp = tracelet.start_logging("job", "p", backend="memory", settings=QUIET, run_id="busy")
    with pytest.raises(TraceletError, match="still owned by process"):
        _resume.open_previous(Path(".tracelet"), "busy", 0, wait=0.2)
    exp.end()


def test_a_run_ended_killed_is_running_again_and_ends_finished(mlflow_uri: str) -> None:
    from mlflow import MlflowClient

    statuses = []
    for part, status in enumerate(("KILLED", "FINISHED")):
        exp = tracelet.start_logging(
            "job",
            "p",
            backend="mlflow",
            config={"tracking_uri": mlflow_uri},
            settings=QUIET,
            run_id="pre-empted",
        )
        exp.log_metric("loss", 1.0, iteration=part)
        if part == 1:  # continued: the MLflow run is RUNNING again
            run_id = mlflow_run(mlflow_uri, "pre-empted").info.run_id
            client = MlflowClient(mlflow_uri)
            wait_for(
                lambda: client.get_run(run_id).info.status == "RUNNING",  # noqa: B023
                what="the continued MLflow run RUNNING",
            )
            statuses.append("RUNNING")
        exp.end(status)
        statuses.append(mlflow_run(mlflow_uri, "pre-empted").info.status)
    assert statuses == ["KILLED", "RUNNING", "FINISHED"]


def test_auto_continues_the_run_after_a_slurm_requeue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("TRACELET_RUN_ID", "auto")
    monkeypatch.setenv("TRACELET_TRACK_SYSTEM", "false")
    ids = []
    for restart in range(2):
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(restart))
        exp = tracelet.start_logging("job", "p", backend="memory")
        exp.log_metric("loss", float(restart), iteration=restart)
        exp.end("KILLED" if restart == 0 else "FINISHED")
        ids.append(exp.run_id)
    assert ids[0] == ids[1]
    stored = InMemoryExporter.runs[ids[0]]
    assert stored.history("loss") == [(0, 0.0), (1, 1.0)]
    assert stored.status is not None and stored.status.value == "FINISHED"


def test_clearml_still_looks_up_the_torchrun_local_rank_where_tracelet_answers() -> None:
    """The all-ranks mode keeps ClearML's torch-distributed anchor out (exporters/clearml.py)."""
    pytest.importorskip("clearml")
    import clearml.task

    from tracelet.exporters.clearml import _LOCAL_RANK_LOOKUP, _own_task

    assert callable(getattr(clearml.task, _LOCAL_RANK_LOOKUP))
    with _own_task(True):
        assert getattr(clearml.task, _LOCAL_RANK_LOOKUP)() is None
    assert getattr(clearml.task, _LOCAL_RANK_LOOKUP) is not None
