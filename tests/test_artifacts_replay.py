"""Images at a step replayed by ``tracelet sync``: each tracker still holds each one once.

The worst case of a crash: every backend stored everything, but no durable
cursor was saved past the start (as if the process died right before each
save). The run's cursors and marks are put back to the start, and
``tracelet sync`` replays the whole journal: MLflow finds each image by its
file name, W&B and ClearML skip the rows and debug images their run already
holds, like points. Every image and point is read back exactly once.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tracelet
from tests._artifacts_readback import pixels, read_mlflow
from tests._trackers import wandb_written
from tracelet import TraceletSettings, _artifacts, cli
from tracelet.testing import read_wandb_run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("offline_trackers")]

TRACKERS = ["mlflow", "wandb", "clearml"]


def rewind(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Put every cursor and mark back to the start of the run; return the states before."""
    before = {}
    for backend in TRACKERS:
        path = run_dir / f"{backend}.state.json"
        state = json.loads(path.read_text())
        before[backend] = json.loads(json.dumps(state))
        state.update(offset=0, delivered=0, closed=False)
        resume = state["resume"]
        if backend == "wandb":
            resume.update(rows_from=0, pending=[])
        if backend == "clearml":
            resume.update(events_from=0, pending=[])
        path.write_text(json.dumps(state))
    return before


def wandb_images(sync_files: set[str]) -> Counter[tuple[str, int]]:
    wandb_written()
    seen: Counter[tuple[str, int]] = Counter()
    for path in sorted(sync_files):
        for row in read_wandb_run(path).rows:
            for key, value in row.items():
                if key.endswith("._type") and value == "image-file":
                    seen[(key[: -len("._type")], int(row["tracelet/step"]))] += 1
    return seen


def wandb_steps(sync_files: set[str]) -> list[int]:
    return [s for p in sorted(sync_files) for s, _ in read_wandb_run(p).history("loss")]


def clearml_images(folder: str) -> tuple[Counter[tuple[str, int]], list[int]]:
    images: Counter[tuple[str, int]] = Counter()
    steps = []
    for line in (Path(folder) / "metrics.jsonl").read_text().splitlines():
        for event in json.loads(line):
            if event.get("type") == "training_debug_image":
                images[(f"{event['metric']}/{event['variant']}", int(event["iter"]))] += 1
            elif event.get("type") == "training_stats_scalar":
                steps.append(int(event["iter"]))
    return images, steps


def test_images_replayed_after_a_crash_are_stored_once(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cursors are rewound below as if they had never been saved: the captured
    # files must still be there, as they would be (they go once the saved cursors pass).
    monkeypatch.setattr(_artifacts.Reaper, "__call__", lambda self: None)
    monkeypatch.setattr(_artifacts, "release", lambda run_dir, delivered: None)
    exp = tracelet.start_logging(
        project="replay",
        exp_name="images",
        backend=TRACKERS,
        config={"mlflow": {"tracking_uri": mlflow_uri}},
        # Delivery threads in this process: the patches above keep the captured files
        # (a delivery agent, a process of its own, would free them).
        settings=TraceletSettings(
            track_system=False,
            track_git=False,
            track_env=False,
            keep_journal=True,
            delivery="thread",
        ),
    )
    rng = np.random.default_rng(1)
    logged = {}
    for step in range(6):
        exp.log_metric("loss", 1.0 / (step + 1), iteration=step)
        if step % 2:
            image = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            exp.log_image(image, "samples/digit", iteration=step)
            logged[("samples/digit", step)] = image
    (tmp_path / "notes.txt").write_text("n")
    exp.log_artifact(tmp_path / "notes.txt")
    assert exp.end().complete
    run_dir = exp.run_dir
    assert (run_dir / "artifacts").is_dir()  # kept with the journal

    before = rewind(run_dir)
    code = cli.main(["sync", str(run_dir)])
    assert code == 0
    after = {b: json.loads((run_dir / f"{b}.state.json").read_text()) for b in TRACKERS}
    for backend in TRACKERS:  # the whole journal was sent again
        assert after[backend]["delivered"] == 6 and after[backend]["closed"], backend
    assert after["wandb"]["resume"]["sync_file"] != before["wandb"]["resume"]["sync_file"]

    files, images = read_mlflow(after["mlflow"]["resume"])  # raises on an image stored twice
    assert files == {"notes.txt": b"n"}
    assert set(images) == set(logged)
    assert all(np.array_equal(images[k], v) for k, v in logged.items())
    from mlflow import MlflowClient

    history = MlflowClient(mlflow_uri).get_metric_history(
        after["mlflow"]["resume"]["run_id"], "loss"
    )
    assert sorted(m.step for m in history) == list(range(6))

    sync_files = {before["wandb"]["resume"]["sync_file"], after["wandb"]["resume"]["sync_file"]}
    assert wandb_images(sync_files) == Counter(dict.fromkeys(logged, 1))
    assert sorted(wandb_steps(sync_files)) == list(range(6))
    first = Path(before["wandb"]["resume"]["sync_file"]).parent / "files"
    assert (first / "notes.txt").read_bytes() == b"n"

    clearml, steps = clearml_images(after["clearml"]["resume"]["offline_folder"])
    assert clearml == Counter(dict.fromkeys(logged, 1))
    assert sorted(steps) == list(range(6))
    assert pixels  # the readers decode what they compare
