"""Read the artifacts and images of a run back from each real tracker, as bytes and pixels.

Each reader takes the resume state the exporter saved
(``<run_dir>/<backend>.state.json``) and returns ``(files, images)``:
``{artifact path: bytes}`` and ``{(key, step): decoded pixels as a numpy array}``.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

Files = dict[str, bytes]
Images = dict[tuple[str, int], Any]


def pixels(data: bytes | Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        return np.asarray(img.convert("RGBA") if img.mode in ("P", "LA") else img)


def read_mlflow(state: dict[str, Any]) -> tuple[Files, Images]:
    from mlflow import MlflowClient

    client = MlflowClient(state["tracking_uri"])
    run_id = state["run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(client.download_artifacts(run_id, "", tmp))
        files = {
            p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }
    images: Images = {}
    for path in list(files):
        if path.startswith("images/"):
            data = files.pop(path)
            if path.endswith(".png"):  # images/<key~>+step+<s>+timestamp+<t>+<uuid>.png
                key, _, step, *_ = path[len("images/") : -len(".png")].split("+")
                assert (key.replace("~", "/"), int(step)) not in images, f"{path} twice"
                images[(key.replace("~", "/"), int(step))] = pixels(data)
    return files, images


def read_wandb(state: dict[str, Any]) -> tuple[Files, Images]:
    from tests._trackers import wandb_written
    from tracelet.testing import read_wandb_run

    wandb_written()
    root = Path(state["sync_file"]).parent / "files"
    skip = ("media/", "wandb-", "config.yaml", "output.log", "requirements.txt")
    files = {
        p.relative_to(root).as_posix().removeprefix("tracelet/"): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith(skip)
    }
    images: Images = {}
    for row in read_wandb_run(state["sync_file"]).rows:
        for key, value in row.items():
            if key.endswith("._type") and value == "image-file":
                name = key[: -len("._type")]
                at = (name, int(row["tracelet/step"]))
                assert at not in images, f"{at} twice"
                images[at] = pixels(root / row[f"{name}.path"])
    return files, images


def read_clearml(state: dict[str, Any]) -> tuple[Files, Images]:
    folder = Path(state["offline_folder"])
    task = json.loads((folder / "task.json").read_text())
    files: Files = {}
    for artifact in (task.get("execution") or {}).get("artifacts") or []:
        uri = Path(artifact["uri"])
        if uri.suffix == ".zip" and artifact.get("type") != "custom":  # a folder, zipped
            with zipfile.ZipFile(uri) as z:
                for info in z.infolist():
                    if not info.is_dir():
                        files[f"{artifact['key']}/{info.filename}"] = z.read(info)
        else:
            files[artifact["key"]] = uri.read_bytes()
    images: Images = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        for event in json.loads(line):
            if event.get("type") == "training_debug_image":
                title, series = event["metric"], event["variant"]
                key = title if title == series else f"{title}/{series}"
                at = (key, int(event["iter"]))
                assert at not in images, f"{at} twice"
                images[at] = pixels(Path(event["url"]))
    return files, images


READERS = {"mlflow": read_mlflow, "wandb": read_wandb, "clearml": read_clearml}


def read_artifacts(run_dir: Path, backend: str) -> tuple[Files, Images]:
    state = json.loads((run_dir / f"{backend}.state.json").read_text())["resume"]
    return READERS[backend](state)
