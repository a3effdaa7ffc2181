"""Every example on the interface page (docs/api/interface.md) runs as written, and lands.

The page's blocks are run in order in one fresh interpreter, as a reader
would paste them, with W&B and ClearML in offline mode (as a user without a
server configures them); then every run is read back from the real stores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api" / "interface.md"


def page_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def without_directive_options(text: str) -> str:
    """`text` less the ``options:`` blocks under its mkdocstrings ``:::`` lines.

    The spec came with those blocks' indentation lost (so they rendered as
    text); the page indents them and adds what makes it render as meant
    (each function once). They say how to render, not what the page says.
    """
    out: list[str] = []
    in_options = False
    for line in text.splitlines():
        if out and out[-1].startswith(":::") and line.strip() == "options:":
            in_options = True
            continue
        if in_options and line.strip() and (line[0].isspace() or ":" in line.split()[0]):
            continue
        in_options = False
        out.append(line)
    return "\n".join(out)


def test_the_page_is_the_spec() -> None:
    spec = Path(__file__).resolve().parents[2] / "shared" / "spec" / "interface.md"
    if not spec.exists():
        pytest.skip("no shared/spec beside this checkout")
    assert without_directive_options(PAGE.read_text()) == without_directive_options(
        spec.read_text()
    )
    assert PAGE.read_text().count("\n    options:\n") == spec.read_text().count("\noptions:\n")


def run_page(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(page_blocks()))
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "CLEARML_OFFLINE_MODE": "1",
        "CLEARML_CACHE_DIR": str(tmp_path / "clearml"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TRACELET_TRACK_SYSTEM": "false",
    }
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_every_example_runs_and_lands_in_mlflow(tmp_path: Path, mlflow_uri: str) -> None:
    proc = run_page(tmp_path)  # its MLflow runs go to the default store: mlflow_uri
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Backend error: unknown backend 'invalid_backend'" in proc.stdout
    assert "No active experiment found" not in proc.stdout

    client = MlflowClient(mlflow_uri)
    runs = {
        (client.get_experiment(r.info.experiment_id).name, r.info.run_name): r
        for r in client.search_runs(
            [e.experiment_id for e in client.search_experiments()], max_results=100
        )
    }
    # Every MLflow run of the page, ended FINISHED (the page stops or replaces each one).
    expected = {
        ("computer_vision", "image_classification"),
        ("research", "model_comparison"),
        ("my_project", "my_exp"),
        ("test", "context_exp"),
        ("my_project", "my_experiment"),
        ("ml_pipeline", "pipeline_run_001"),
    }
    assert expected <= set(runs), sorted(runs)
    assert {runs[k].info.status for k in expected} == {"FINISHED"}

    my_exp = runs[("my_project", "my_exp")]
    assert [(m.step, m.value) for m in client.get_metric_history(my_exp.info.run_id, "loss")] == [
        (50, 0.1)
    ]
    assert my_exp.data.params == {"learning_rate": "0.001"}

    ctx = runs[("test", "context_exp")]
    assert [(m.step, m.value) for m in client.get_metric_history(ctx.info.run_id, "accuracy")] == [
        (0, 0.95)
    ]
    assert ctx.data.params == {"epochs": "10"}
    for run in runs.values():
        assert len(run.data.tags["tracelet.run_id"]) == 32
