"""The W&B exporter through `tracelet.start_logging`, read back from the offline ``.wandb`` file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests._helpers import QUIET
from tests._trackers import state_of, wandb_written
from tracelet.testing import WandbRun, read_wandb_run

pytestmark = pytest.mark.usefixtures("offline_trackers")


def wandb_run(exp: tracelet.Experiment) -> WandbRun:
    wandb_written()
    return read_wandb_run(state_of(exp.run_dir, "wandb")["sync_file"])


def test_config_goes_to_wandb_init(tmp_path: Path) -> None:
    exp = tracelet.start_logging(
        exp_name="hp-search",
        project="optimization",
        backend="wandb",
        config={
            "entity": "my_team",
            "tags": ["pytorch", "resnet"],
            "group": "sweep-1",
            "job_type": "train",
            "notes": "first try",
            "dir": str(tmp_path / "elsewhere"),
        },
    )
    exp.log_metric("loss", 0.5, iteration=0)
    tracelet.stop_logging()
    run = wandb_run(exp)
    assert (run.project, run.name, run.entity) == ("optimization", "hp-search", "my_team")
    assert (run.group, run.job_type, run.notes) == ("sweep-1", "train", "first try")
    assert {"pytorch", "resnet"} <= set(run.tags)
    assert run.run_id == exp.run_id  # one id joins the run across trackers
    assert run.path.is_relative_to(tmp_path / "elsewhere" / "wandb")
    assert run.exit_code == 0


def test_wandb_environment_variables_apply(tmp_path: Path) -> None:
    """WANDB_MODE=offline and WANDB_DIR (set by the fixture) decide where the run goes."""
    exp = tracelet.start_logging(exp_name="env", project="p", backend="wandb")
    tracelet.stop_logging()
    state = state_of(exp.run_dir, "wandb")
    assert state["offline"] is True
    assert Path(state["sync_file"]).is_relative_to(tmp_path / "wandb")


def test_a_config_id_names_the_wandb_run() -> None:
    exp = tracelet.start_logging(
        exp_name="n", project="p", backend="wandb", config={"id": "abc123"}
    )
    tracelet.stop_logging()
    assert wandb_run(exp).run_id == "abc123"


def test_every_row_is_committed_at_the_next_wandb_step() -> None:
    """W&B never sees a step go back, so it drops nothing; the x-axis is tracelet/step."""
    exp = tracelet.start_logging(exp_name="steps", project="p", backend="wandb")
    for epoch in range(3):
        for batch in range(5):
            exp.log_metric("train/loss", 1.0 / (batch + 1), iteration=epoch * 5 + batch)
        exp.log_metric("val/loss", 0.5 - epoch / 10, iteration=epoch)
    exp.log_metric("train/loss", 9.0, iteration=2)  # a restarted loop goes back
    tracelet.stop_logging()
    run = wandb_run(exp)
    assert run.step_metrics == {"*": "tracelet/step"}
    assert [r["_step"] for r in run.rows] == list(range(len(run.rows)))
    train = [(e * 5 + b, 1.0 / (b + 1)) for e in range(3) for b in range(5)] + [(2, 9.0)]
    assert run.history("train/loss") == train
    assert run.history("val/loss") == [(0, 0.5), (1, 0.4), (2, 0.3)]


def test_points_keep_their_wall_clock_time() -> None:
    exp = tracelet.start_logging(exp_name="t", project="p", backend="wandb", settings=QUIET)
    exp.log_metric("loss", 1.0, iteration=0)
    queued = exp._history.queue[-1]  # (name, value, step, time_ns) as log_metric recorded it
    tracelet.stop_logging()
    (row,) = wandb_run(exp).rows
    assert row["_timestamp"] == pytest.approx(queued[3] / 1e9, abs=1e-6)


def test_params_become_config_with_their_types() -> None:
    exp = tracelet.start_logging(exp_name="params", project="p", backend="wandb")
    exp.log_params({"lr": 0.001, "layers": 3, "opt": {"name": "adam"}, "amp": True})
    tracelet.stop_logging()
    assert wandb_run(exp).config == {"lr": 0.001, "layers": 3, "opt/name": "adam", "amp": True}


def test_a_metric_named_like_a_wandb_key_is_renamed(caplog: pytest.LogCaptureFixture) -> None:
    exp = tracelet.start_logging(exp_name="names", project="p", backend="wandb")
    exp.log_metric("_step", 7.0, iteration=0)
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        tracelet.stop_logging()
    assert wandb_run(exp).history("metric/_step") == [(0, 7.0)]
    assert "stored as 'metric/_step'" in caplog.text


@pytest.mark.parametrize(("status", "code"), [("FAILED", 1), ("KILLED", 255), ("FINISHED", 0)])
def test_final_status_is_the_exit_code(status: str, code: int) -> None:
    exp = tracelet.start_logging(exp_name=status, project="p", backend="wandb")
    exp.log_metric("loss", 1.0)
    exp.end(status)
    assert wandb_run(exp).exit_code == code


def test_a_run_the_code_opened_itself_is_left_alone(tmp_path: Path) -> None:
    import wandb

    own = wandb.init(project="mine", name="own", dir=str(tmp_path))
    try:
        exp = tracelet.start_logging(exp_name="tracelet", project="p", backend="wandb")
        exp.log_metric("loss", 1.0)
        tracelet.stop_logging()
        assert wandb.run is own and not own._is_finished
        own.log({"acc": 0.5})
    finally:
        own.finish()
    assert wandb_run(exp).run_id != own.id


def test_a_failed_log_call_is_retried_without_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: W&B raises on the 5th row once; the retry resumes after row 4."""
    from wandb.sdk.wandb_run import Run

    calls = {"n": 0}
    real_log = Run.log

    def flaky_log(self: Any, data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise ConnectionError("wandb-core went away")
        real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(Run, "log", flaky_log)
    exp = tracelet.start_logging(exp_name="retry", project="p", backend="wandb")
    for i in range(10):
        exp.log_metric("loss", float(i), iteration=i)
    report = exp.end()
    assert report.complete
    assert wandb_run(exp).history("loss") == [(i, float(i)) for i in range(10)]


def test_a_resumed_offline_run_goes_on_after_its_last_row() -> None:
    """Rows continue after the previous file's last _step.

    Offline, W&B starts every file at _step 0, and rows below the first file's
    would be dropped when both files are synced to the same run.
    """
    from tracelet.export import Batch, MetricPoint, RunInfo
    from tracelet.exporters.wandb import WandbExporter

    info = RunInfo(run_id="resumed0run", project="p", name="n")
    first = WandbExporter()
    state = first.start(info)
    first.export(Batch(metrics=[MetricPoint("loss", float(i), i, 0) for i in range(5)]))
    first.shutdown()
    second = WandbExporter()
    again = second.start(RunInfo(info.run_id, info.project, info.name, resume=state))
    second.export(Batch(metrics=[MetricPoint("loss", 9.0, 9, 0)]))
    second.shutdown()
    wandb_written()
    before, after = read_wandb_run(state["sync_file"]), read_wandb_run(again["sync_file"])
    assert before.run_id == after.run_id == "resumed0run"
    assert [r["_step"] for r in before.rows] == [0, 1, 2, 3, 4]
    assert [(r["_step"], r["tracelet/step"], r["loss"]) for r in after.rows] == [(5, 9, 9)]
