"""End to end over MLflow, W&B and ClearML at once, read back from each real store.

- 100,000 points over 3 metrics with interleaved and backwards-going steps.
- The interface page's W&B and multi-backend examples, run as written.
- A script that never calls stop_logging: the SDKs' own exit hooks must not
  close their runs before tracelet delivered the last points.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tracelet
from tests._trackers import read_back, read_clearml, read_wandb, same_series
from tests.test_interface_examples import run_page
from tracelet import TraceletSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("offline_trackers")]

TRACKERS = ["mlflow", "wandb", "clearml"]


def test_100k_points_interleaved_and_backwards_reach_every_tracker(mlflow_uri: str) -> None:
    rng = random.Random(3)
    exp = tracelet.start_logging(
        exp_name="100k",
        project="volume",
        backend=TRACKERS,
        config={"mlflow": {"tracking_uri": mlflow_uri}},
        settings=TraceletSettings(
            track_system=False, track_git=False, track_env=False, close_timeout=540
        ),
    )
    logged: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": [], "lr": []}
    for i in range(100_000):
        k = i // 3
        name, step = [
            ("train/loss", k),  # increasing
            ("val/loss", k % 997),  # sawtooth: goes back every 997 points
            ("lr", 40_000 - k),  # always backwards
        ][i % 3]
        value = rng.uniform(-1e6, 1e6)
        exp.log_metric(name, value, iteration=step)
        logged[name].append((step, value))
    report = exp.end()
    assert report.complete, report
    assert report.points == 100_000
    for backend in TRACKERS:
        stored = read_back(exp.run_dir, backend)
        assert set(stored.series) == set(logged), backend
        for name, points in logged.items():
            assert len(stored.series[name]) == len(points), (backend, name)
            assert same_series(backend, stored.series[name], points), (backend, name)
        assert stored.status == "FINISHED"


def page_runs(root: Path) -> dict[str, tuple[list[str], dict[str, dict[str, object]]]]:
    """``{run name: (backends, {backend: resume state})}`` of every run the page started."""
    runs = {}
    for run_json in (root / ".tracelet" / "runs").glob("*/run.json"):
        info = json.loads(run_json.read_text())
        states = {
            b: json.loads((run_json.parent / f"{b}.state.json").read_text())["resume"]
            for b in info["backends"]
            if (run_json.parent / f"{b}.state.json").exists()
        }
        runs[info["name"]] = (info["backends"], states)
    return runs


@pytest.mark.usefixtures("mlflow_uri")  # the page's default MLflow store, migrated
def test_interface_page_wandb_and_multi_backend_examples_land(tmp_path: Path) -> None:
    proc = run_page(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = page_runs(tmp_path)

    # backend="wandb", config={"entity": "my_team", "tags": ["pytorch", "resnet"]}
    backends, states = runs["hyperparameter_tuning"]
    assert backends == ["wandb"]
    stored = read_wandb(states["wandb"])
    assert stored.name == "hyperparameter_tuning" and stored.status == "FINISHED"
    assert {"pytorch", "resnet"} <= stored.tags
    from tracelet.testing import read_wandb_run

    run = read_wandb_run(str(states["wandb"]["sync_file"]))
    assert (run.project, run.entity) == ("optimization", "my_team")

    # backend=["mlflow", "wandb", "clearml"]: the same run in all three.
    backends, states = runs["model_comparison"]
    assert backends == TRACKERS
    from tests._trackers import READERS

    for backend in TRACKERS:
        stored = READERS[backend](states[backend])
        assert stored.name == "model_comparison", backend
        assert stored.status == "FINISHED", backend
    assert read_wandb_run(str(states["wandb"]["sync_file"])).project == "research"
    assert read_clearml(states["clearml"]).name == "model_comparison"

    # TraceletSettings(backend=["mlflow", "wandb"]); never stopped: ended at exit.
    backends, states = runs["pipeline_run_001"]
    assert backends == ["mlflow", "wandb"]
    assert read_wandb(states["wandb"]).status == "FINISHED"
    assert READERS["mlflow"](states["mlflow"]).status == "FINISHED"


CHILD = """
    import sys, threading
    import tracelet
    from tracelet import interface

    wait_for_start, fail = sys.argv[1] == "started", sys.argv[2] == "fail"
    started = threading.Semaphore(0)
    real_hook = interface._exit_hook_first

    def hook():  # called on a delivery thread once its backend has started
        real_hook()
        started.release()

    interface._exit_hook_first = hook
    exp = tracelet.start_logging(exp_name="no-stop", project="exit", backend=["wandb", "clearml"])
    if wait_for_start:  # both SDKs have registered their exit hooks by now
        assert started.acquire(timeout=120) and started.acquire(timeout=120)
    for i in range(3000):
        exp.log_metric("loss", float(i), iteration=3000 - i)
    if fail:
        raise RuntimeError("the training script crashed")
    # no stop_logging(): tracelet's exit hook must run before W&B's and ClearML's
"""


@pytest.mark.parametrize(
    ("when", "how", "status"),
    [
        ("started", "ok", "FINISHED"),  # SDK exit hooks registered before the last points
        ("started", "fail", "FAILED"),
        ("starting", "fail", "FAILED"),  # the SDKs start while the interpreter exits
    ],
)
def test_sdk_exit_hooks_do_not_cut_the_run_short(
    tmp_path: Path, when: str, how: str, status: str
) -> None:
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELET_")}
    # The SDKs' exit hooks are in the training process only with delivery="thread"
    # (the delivery agent runs them in a process of its own, ended by tracelet).
    env.update(
        TRACELET_TRACK_SYSTEM="false",
        TRACELET_DELIVERY="thread",
        PYTHONPATH=str(Path(__file__).parents[1]),
    )
    proc = subprocess.run(
        [sys.executable, str(script), when, how],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == (1 if how == "fail" else 0), proc.stderr[-3000:]
    (run_dir,) = (tmp_path / ".tracelet" / "runs").iterdir()
    logged = [(3000 - i, float(i)) for i in range(3000)]
    for backend in ("wandb", "clearml"):
        state = json.loads((run_dir / f"{backend}.state.json").read_text())
        assert state["closed"] and state["delivered"] == 3000, (backend, state)
        stored = read_back(run_dir, backend)
        assert stored.series["loss"] == logged, backend
        assert stored.status == status, backend
