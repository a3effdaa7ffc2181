"""The wheel as a new user gets it: built from this checkout, installed without extras.

The rest of the suite runs with every extra installed, so it cannot see what a
core-only install says when a backend's extra is missing. Here the wheel is
built from a copy of the sources (the tests write only in temporary
directories), installed into a fresh venv with its core dependencies only, and
each backend is started there from outside the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the wheel is built from (pyproject.toml names nothing else).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "tracelet", "exporters")
#: Each backend and the extra whose install command its error must name.
EXTRAS = {
    "mlflow": "mlflow",
    "wandb": "wandb",
    "clearml": "clearml",
    "otlp": "otlp",
    "prometheus": "otlp",
}

pytestmark = pytest.mark.slow


class Wheel:
    def __init__(self, path: Path, build_log: str) -> None:
        self.path = path
        self.build_log = build_log


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = out.glob("tracelet-*.whl")
    return Wheel(path, proc.stdout + proc.stderr)


def venv_with(requirement: str, directory: Path) -> Path:
    """A fresh venv in `directory` with `requirement` installed; its python."""
    venv.EnvBuilder(with_pip=True, clear=True).create(directory)
    python = directory / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, requirement], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return python


def run_json(python: Path, code: str, args: list[str], cwd: Path, **env: str) -> Any:
    """Run `code` in a venv's `python`, no TRACELET_*/PYTHON* leaking in; its last line's JSON."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELET_", "PYTHON"))}
    proc = subprocess.run(
        [str(python), "-c", code, *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def core_python(wheel: Wheel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and its core dependencies, no extra."""
    return venv_with(str(wheel.path), tmp_path_factory.mktemp("core-venv"))


def test_the_wheel_carries_the_license(wheel: Wheel) -> None:
    with zipfile.ZipFile(wheel.path) as whl:
        names = whl.namelist()
        [license_file] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert "Apache License" in whl.read(license_file).decode()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = whl.read(metadata).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in headers
    assert "License-File: LICENSE" in headers


def test_the_build_warns_about_nothing_in_the_metadata(wheel: Wheel) -> None:
    # setuptools' deprecation of `project.license` as a TOML table, printed at every install
    assert "deprecated" not in wheel.build_log.lower(), wheel.build_log[-3000:]


CHECK = """
import json, pathlib, sys
import tracelet
from tracelet.errors import BackendNotFoundError, BackendNotInstalledError
assert tracelet.__file__.startswith(sys.prefix), tracelet.__file__
out = {}
for name in sys.argv[1:]:
    try:
        tracelet.start_logging(exp_name="x", project="p", backend=name)
    except BackendNotInstalledError as exc:
        out[name] = ["BackendNotInstalledError", str(exc)]
    except BaseException as exc:
        out[name] = [type(exc).__name__, str(exc)]
    else:
        tracelet.stop_logging()
        out[name] = ["started", ""]
try:
    tracelet.start_logging(exp_name="x", project="p", backend="nope")
except BackendNotFoundError as exc:
    out["nope"] = ["BackendNotFoundError", str(exc)]
with tracelet.start_logging(exp_name="x", project="p", backend="memory") as exp:
    exp.log_metric("loss", 1.0)
out["memory"] = [exp.report.status.value, ""]
out["run_dirs"] = sorted(p.name for p in pathlib.Path(".tracelet/runs").glob("*"))
print(json.dumps(out))
"""


def test_each_backend_without_its_extra_names_the_install_command(
    core_python: Path, tmp_path: Path
) -> None:
    out = run_json(core_python, CHECK, list(EXTRAS), tmp_path)
    for backend, extra in EXTRAS.items():
        kind, message = out[backend]
        assert kind == "BackendNotInstalledError", (backend, kind, message)
        assert f"pip install 'tracelet[{extra}]'" in message, message
        assert message.startswith(f"backend {backend!r} needs "), message
    # An unknown name lists what is usable (nothing, without an extra; never the
    # `memory` test double) and which known backends need which extra.
    kind, message = out["nope"]
    assert kind == "BackendNotFoundError"
    assert "available backends: none;" in message, message
    assert "memory" not in message, message
    for backend, extra in EXTRAS.items():
        assert backend in message, message
        assert f"pip install 'tracelet[{extra}]'" in message, message
    # the test double still works, and only its run left a run directory
    assert out["memory"][0] == "FINISHED", out["memory"]
    assert len(out["run_dirs"]) <= 1, out["run_dirs"]


@pytest.fixture(scope="module")
def skinny_python(wheel: Wheel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel with its ``mlflow-skinny`` extra."""
    return venv_with(f"{wheel.path}[mlflow-skinny]", tmp_path_factory.mktemp("skinny-venv"))


SKINNY_RUN = """
import json, sys
from importlib.metadata import distributions
import tracelet
names = {d.metadata["Name"].lower() for d in distributions()}
assert "mlflow-skinny" in names and "mlflow" not in names, sorted(names)
assert not names & {"pandas", "pyarrow", "scipy", "scikit-learn", "flask"}, sorted(names)
uri = sys.argv[1]
with tracelet.start_logging("skinny", "small", config={"mlflow": {"tracking_uri": uri}}) as exp:
    exp.log_params({"lr": 0.1})
    for step in range(1500):
        exp.log_metric("loss", 1 / (step + 1), iteration=step)
from mlflow import MlflowClient
client = MlflowClient(uri)
[run] = client.search_runs(
    [client.get_experiment_by_name("small").experiment_id],
    filter_string=f"tags.`tracelet.run_id` = '{exp.run_id}'",
)
steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
print(json.dumps({"report": exp.report.complete, "status": run.info.status,
                  "params": run.data.params, "steps": sorted(steps)}))
"""


@pytest.mark.parametrize("store", ["local sqlite store", "tracking server"])
def test_the_mlflow_skinny_extra_logs_every_point(
    skinny_python: Path, tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    if store == "tracking server":  # served by the full mlflow of the test venv
        uri = request.getfixturevalue("mlflow_server")
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = run_json(
        skinny_python,
        SKINNY_RUN,
        [uri],
        tmp_path,
        MLFLOW_DISABLE_TELEMETRY="true",
        TRACELET_TRACK_SYSTEM="false",
    )
    assert out == {
        "report": True,
        "status": "FINISHED",
        "params": {"lr": "0.1"},
        "steps": list(range(1500)),
    }
