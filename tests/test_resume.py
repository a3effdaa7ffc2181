"""A job killed with SIGKILL after step 499 and started again with the same run id.

The second process continues the same tracker runs (MLflow run, W&B run id,
ClearML task): what the first left undelivered goes first, then steps
500..999. Read back from the real trackers: each step once, the run FINISHED.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests._reliability import assert_exactly_once, mlflow_history, mlflow_run, spawn
from tracelet.testing import offline_env, read_clearml_session, read_wandb_run

RUN_ID = "job-7"

CHILD = """
import json, os, signal, sys, time, tracelet
from tracelet import TraceletSettings
part = int(os.environ["TEST_PART"])
settings = TraceletSettings(track_system=False, track_git=False, track_env=False)
exp = tracelet.start_logging(
    "resumed", "resume", backend=["mlflow", "wandb", "clearml"],
    config={"mlflow": {"tracking_uri": os.environ["TEST_URI"]}},
    settings=settings, run_id=os.environ["TEST_RUN_ID"])
exp.log_params({"lr": 0.1, "batch": 32})  # logged again by the second part: same values
first = 0 if part == 1 else 500  # the second part starts from its checkpoint
for step in range(first, first + 500):
    exp.log_metric("loss", 1.0 / (step + 1), iteration=step)
    if part == 1 and step == 249:  # each tracker holds a part of the run
        while not all(d.delivered for d in exp._deliveries):
            time.sleep(0.01)
if part == 1:  # killed after step 499, as soon as it is journaled
    while exp._history.points < 500:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)
report = exp.end()
with open("report.json", "w") as f:
    json.dump({"points": report.points, "complete": report.complete,
               "run_dir": str(report.run_dir)}, f)
"""


def _part(tmp: Path, part: int, env: dict[str, str]) -> tuple[int, str]:
    proc = spawn(CHILD, tmp, TEST_PART=str(part), **env)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.fixture(scope="module")
def resumed(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store: Callable[[Path], str]
) -> dict[str, Any]:
    pytest.importorskip("wandb")
    pytest.importorskip("clearml")
    tmp = tmp_path_factory.mktemp("resume")
    uri = mlflow_store(tmp / "mlflow.db")
    env = {**offline_env(tmp), "TEST_URI": uri, "TEST_RUN_ID": RUN_ID}
    code, err = _part(tmp, 1, env)
    assert code == -signal.SIGKILL, err[-3000:]
    [run_dir] = (tmp / ".tracelet" / "runs").iterdir()
    before = {
        b: json.loads((run_dir / f"{b}.state.json").read_text())
        for b in ("mlflow", "wandb", "clearml")
    }
    code, err = _part(tmp, 2, env)
    assert code == 0, err[-3000:]
    report = json.loads((tmp / "report.json").read_text())
    after = {
        b: json.loads((run_dir / f"{b}.state.json").read_text())
        for b in ("mlflow", "wandb", "clearml")
    }
    print(
        "\ndelivered before the kill: "
        + ", ".join(f"{b} {s['delivered']} of 500" for b, s in before.items())
    )
    return {"tmp": tmp, "uri": uri, "report": report, "before": before, "after": after}


@pytest.mark.slow
def test_the_second_part_continues_the_same_run_dir(resumed: dict[str, Any]) -> None:
    report = resumed["report"]
    assert report["complete"] and report["points"] == 1000
    run_dirs = list((resumed["tmp"] / ".tracelet" / "runs").iterdir())
    assert [str(p) for p in run_dirs] == [report["run_dir"]]
    run = json.loads((run_dirs[0] / "run.json").read_text())
    assert run["run_id"] == RUN_ID and run["parts"] == 2 and run["status"] == "FINISHED"


@pytest.mark.slow
def test_mlflow_holds_one_run_with_every_step_once(resumed: dict[str, Any]) -> None:
    uri = resumed["uri"]
    run = mlflow_run(uri, RUN_ID)  # exactly one MLflow run carries the id
    assert run.info.status == "FINISHED"
    steps = [s for s, _, _ in mlflow_history(uri, run.info.run_id, "loss")]
    assert_exactly_once(steps, range(1000), "mlflow")
    assert run.data.params == {"lr": "0.1", "batch": "32"}
    assert resumed["before"]["mlflow"]["resume"]["run_id"] == run.info.run_id


@pytest.mark.slow
def test_wandb_continues_the_same_run_id(resumed: dict[str, Any]) -> None:
    import wandb

    wandb.teardown()
    files = sorted((resumed["tmp"] / "wandb").glob(f"*-{RUN_ID}/*.wandb"))
    assert len(files) == 2  # offline, a resumed run writes a second file (synced together)
    runs = [read_wandb_run(f) for f in files]
    assert {r.run_id for r in runs} == {RUN_ID}
    steps = [s for r in runs for s, _ in r.history("loss")]
    assert_exactly_once(steps, range(1000), "wandb")
    assert runs[-1].exit_code == 0
    # Offline, the resumed file's rows go on after the first file's last one.
    last = max(row["_step"] for row in runs[0].rows)
    assert min(row["_step"] for row in runs[1].rows if "_step" in row) > last


@pytest.mark.slow
def test_clearml_continues_the_same_task(resumed: dict[str, Any]) -> None:
    before = resumed["before"]["clearml"]["resume"]
    after = resumed["after"]["clearml"]["resume"]
    assert after["task_id"] == before["task_id"]
    session = read_clearml_session(after["offline_folder"])
    steps = [s for s, _ in session.scalars[("loss", "loss")]]
    assert_exactly_once(steps, range(1000), "clearml")
    assert session.properties["tracelet_status"] == "FINISHED"
