"""Every kind of artifact, read back from real MLflow (local store and server), W&B and ClearML.

Files are compared byte for byte, images decoded and compared pixel for
pixel. One file is rewritten in place and another deleted right after they
were logged: every backend holds the content as it was at the call.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tracelet
from tests._artifacts_readback import pixels, read_artifacts
from tests._trackers import read_back
from tracelet import TraceletSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("offline_trackers")]

SETTINGS = TraceletSettings(track_system=False, track_git=False, track_env=False)


def log_everything(exp: tracelet.Experiment, tmp: Path) -> tuple[dict[str, bytes], dict[Any, Any]]:
    """Log one of each kind; return the files and the images every backend must hold."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from PIL import Image

    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}

    weights = tmp / "weights.bin"
    weights.write_bytes(rng.bytes(300_000))
    files["model/weights.bin"] = weights.read_bytes()
    exp.log_artifact(weights, "model/weights.bin")
    with weights.open("r+b") as f:  # rewritten in place, right after the call
        f.write(b"\0" * 1000)
        f.truncate(5000)

    table = tmp / "data.csv"
    table.write_text("a,b\n1,2\n")
    files["data.csv"] = table.read_bytes()
    exp.log_artifact(str(table))
    table.unlink()  # deleted right after the call

    folder = tmp / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "x.txt").write_text("x")
    (folder / "sub" / "y.bin").write_bytes(b"\x00\x01y")
    exp.log_artifact(folder)
    files["ckpt/x.txt"], files["ckpt/sub/y.bin"] = b"x", b"\x00\x01y"

    exp.log_text("# Summary\nnon-ASCII: é ✓\n", "notes/summary.md")
    files["notes/summary.md"] = "# Summary\nnon-ASCII: é ✓\n".encode()
    config = {"lr": 0.1, "layers": [64, 32], "name": "ré"}
    exp.log_dict(config, "config.json")
    exp.log_dict(config, "config.yaml")
    import yaml

    files["config.json"] = json.dumps(config, indent=2, ensure_ascii=False).encode()
    files["config.yaml"] = yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode()

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1, 2], [2, 1, 3])
    static = exp.log_figure(fig, "plots/curve")
    assert static is not None
    files["plots/curve.png"] = b"sha256:" + static.files[0].sha256.encode()
    images: dict[Any, Any] = {}
    at_step = exp.log_figure(fig, "plots/curve_by_step", iteration=5)
    assert at_step is not None
    plt.close(fig)
    images[("plots/curve_by_step", 5)] = "figure"

    for step in (3, 7):
        digit = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
        exp.log_image(digit, "samples/digit", iteration=step)
        images[("samples/digit", step)] = digit
        exp.log_metric("loss", 1.0 / (step + 1), iteration=step)
    gray = np.linspace(0.0, 1.0, 8 * 6).reshape(8, 6)
    exp.log_image(gray, "samples/gray", iteration=0)
    images[("samples/gray", 0)] = np.round(gray * 255).astype(np.uint8)

    pil = Image.fromarray(rng.integers(0, 256, size=(5, 7, 4), dtype=np.uint8), "RGBA")
    exp.log_image(pil, "samples/pil")
    files["samples/pil.png"] = b"pixels"
    images["samples/pil.png"] = np.asarray(pil)
    png = tmp / "photo.png"
    Image.fromarray(rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)).save(png)
    exp.log_image(png, "samples/photo")
    files["samples/photo.png"] = png.read_bytes()
    jpeg = tmp / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(jpeg, quality=90)
    exp.log_image(jpeg, "samples/snapshot", iteration=9)  # a JPEG file at a step
    images[("samples/snapshot", 9)] = pixels(jpeg)
    return files, images


def check(backend: str, run_dir: Path, files: dict[str, bytes], images: dict[Any, Any]) -> None:
    stored, shown = read_artifacts(run_dir, backend)
    stepped = {
        f"{key}{'.jpg' if key.endswith('snapshot') else '.png'}"
        for key in (k[0] for k in images if isinstance(k, tuple))
    }
    for name, data in files.items():
        assert name in stored, (backend, name, sorted(stored))
        if data == b"pixels":
            assert np.array_equal(pixels(stored[name]), images[name]), (backend, name)
        elif data.startswith(b"sha256:"):
            assert hashlib.sha256(stored[name]).hexdigest() == data[7:].decode(), (backend, name)
        else:
            assert stored[name] == data, (backend, name)
    extra = set(stored) - set(files) - (stepped if backend != "mlflow" else set())
    assert not extra, (backend, extra)
    wanted = {k: v for k, v in images.items() if isinstance(k, tuple)}
    assert set(shown) == set(wanted), (backend, sorted(shown))
    for key, expected in wanted.items():
        if isinstance(expected, str):  # a figure: a PNG of the size matplotlib drew
            assert shown[key].shape[:2] == (200, 200), (backend, key)
        else:
            assert np.array_equal(shown[key], expected), (backend, key)


@pytest.mark.parametrize("where", ["store", "server"])
def test_every_kind_reaches_every_tracker_as_it_was_at_the_call(
    where: str, tmp_path: Path, mlflow_uri: str, request: pytest.FixtureRequest
) -> None:
    uri = mlflow_uri if where == "store" else request.getfixturevalue("mlflow_server")
    backends = ["mlflow", "wandb", "clearml"] if where == "store" else ["mlflow"]
    exp = tracelet.start_logging(
        project="artifacts",
        exp_name=f"every-kind-{where}",
        backend=backends,
        config={"mlflow": {"tracking_uri": uri}},
        settings=SETTINGS,
    )
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    files, images = log_everything(exp, inputs)
    captured = exp.artifact_bytes
    assert captured > 300_000
    report = exp.end()
    assert report.complete, report
    for backend in backends:
        check(backend, exp.run_dir, files, images)
        assert read_back(exp.run_dir, backend).series["loss"] == [(3, 0.25), (7, 0.125)]
    assert not (exp.run_dir / "artifacts").exists()  # freed: every backend has them
