"""kill -9 of the trainer and its delivery agent (the node lost) with MLflow, W&B and
ClearML at once, then `tracelet sync`: each tracker resumes its run.

Each tracker run is reopened from the resume state its exporter returned
(``RunInfo.resume``) and receives, from the durable cursor on, what it had not
made durable before the kill. No journaled point may be missing anywhere.
MLflow ignores what it already holds; the W&B and ClearML exporters skip, on
resume, the points of the replay window they already stored
(docs/concepts/reliability.md). So each tracker holds each point exactly once.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests._helpers import wait_for
from tests._reliability import kill_node, run_cli, spawn
from tracelet._journal import count_points

CHILD = """
import json, os, time, tracelet
from tracelet import TraceletSettings
s = TraceletSettings(track_system=False, track_git=False, track_env=False)
exp = tracelet.start_logging("crash", "crash", backend=["mlflow", "wandb", "clearml"],
    config={"mlflow": {"tracking_uri": os.environ["TEST_URI"]},
            "wandb": {"mode": "offline", "dir": os.environ["TEST_WANDB"]}}, settings=s)
exp.log_params({"lr": 0.1})
i = 0
while True:
    exp.log_metric("loss", 1.0 / (i + 1), iteration=i)
    i += 1
    if i == 20_000:  # every backend has some of it: each has a run to resume
        while not all(d.delivered >= 5_000 for d in exp._deliveries):
            time.sleep(0.05)
        with open("ready.tmp", "w") as f:
            json.dump({"run_dir": str(exp.run_dir), "run_id": exp.run_id}, f)
        os.replace("ready.tmp", "ready")
    if i > 20_000 and i % 20 == 0:
        time.sleep(0.0005)
"""


@pytest.fixture(scope="module")
def crashed(
    tmp_path_factory: pytest.TempPathFactory, mlflow_store: Callable[[Path], str]
) -> dict[str, Any]:
    pytest.importorskip("wandb")
    pytest.importorskip("clearml")
    tmp = tmp_path_factory.mktemp("crash")
    env = {
        "TEST_URI": mlflow_store(tmp / "mlflow.db"),  # the child opens this migrated copy
        "TEST_WANDB": str(tmp / "wandb"),
        "CLEARML_OFFLINE_MODE": "1",
        "CLEARML_CACHE_DIR": str(tmp / "clearml"),
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
    }
    proc = spawn(CHILD, tmp, **env)

    def ready_written() -> bool:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        return (tmp / "ready").exists()

    wait_for(ready_written, 300, "every backend holding 5000 points")
    ready = json.loads((tmp / "ready").read_text())
    run_dir = Path(ready["run_dir"])
    # The loop runs on past the mark: points in flight at the kill.
    journal = run_dir / "journal.jsonl"
    wait_for(lambda: count_points(journal) > 20_000, 120, "journal writes past the mark")
    kill_node(proc, run_dir)
    assert proc.returncode == -signal.SIGKILL
    states = {
        b: json.loads((run_dir / f"{b}.state.json").read_text())
        for b in ("mlflow", "wandb", "clearml")
    }
    synced = run_cli("-v", "sync", str(run_dir), cwd=tmp, **env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    for line in synced.stderr.splitlines():  # how much of the replay each tracker held
        if "resumed" in line:
            print("\n" + line)
    after = {b: json.loads((run_dir / f"{b}.state.json").read_text()) for b in ("wandb", "clearml")}
    total = int(synced.stdout.split(" points,")[0].rsplit(",", 1)[-1].strip())
    return {"states": states, "after": after, "total": total, "tmp": tmp}


def _steps(crashed: dict[str, Any]) -> dict[str, list[int]]:
    from tests._trackers import read_clearml, read_mlflow
    from tracelet.testing import read_wandb_run

    states, after = crashed["states"], crashed["after"]
    steps = {"mlflow": [s for s, _ in read_mlflow(states["mlflow"]["resume"]).series["loss"]]}
    steps["clearml"] = [s for s, _ in read_clearml(after["clearml"]["resume"]).series["loss"]]
    wandb_steps: list[int] = []
    files = {states["wandb"]["resume"]["sync_file"], after["wandb"]["resume"]["sync_file"]}
    for path in sorted(files):  # the run before the kill, and its resumed part
        wandb_steps += [s for s, _ in read_wandb_run(path).history("loss")]
    steps["wandb"] = wandb_steps
    return steps


@pytest.mark.slow
def test_no_journaled_point_is_lost_in_any_tracker(crashed: dict[str, Any]) -> None:
    total = crashed["total"]
    assert total >= 20_000
    for backend, steps in _steps(crashed).items():
        assert set(steps) == set(range(total)), f"{backend}: points lost"
        dupes = sum(n - 1 for n in Counter(steps).values())
        print(f"\n{backend}: {len(set(steps))} of {total} points, {dupes} stored twice")
    mlflow = _steps(crashed)["mlflow"]
    assert len(mlflow) == total  # exactly once


@pytest.mark.slow
def test_wandb_and_clearml_hold_each_point_once_after_a_crash(crashed: dict[str, Any]) -> None:
    steps = _steps(crashed)
    for backend in ("wandb", "clearml"):
        assert len(steps[backend]) == len(set(steps[backend])), backend
        # What the tracker stored past its mark was exactly the replay's first
        # points: none left unmatched (ClearML's flush once returned early, and
        # events from before the cursor landed past the mark).
        assert crashed["after"][backend]["resume"]["pending"] == [], backend
