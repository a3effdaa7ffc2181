"""The public surface is pinned, and importing it stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import tracelet


def test_public_names_are_pinned() -> None:
    assert set(tracelet.__all__) == {
        "BackendNotFoundError",
        "BackendNotInstalledError",
        "BackendReport",
        "ConfigError",
        "Experiment",
        "ExperimentClosedError",
        "ParamConflictError",
        "RunReport",
        "RunStatus",
        "TraceletError",
        "TraceletSettings",
        "__version__",
        "get_active_experiment",
        "start_logging",
        "stop_logging",
    }
    for name in tracelet.__all__:
        assert hasattr(tracelet, name), name


def test_import_tracelet_imports_no_backend_sdk() -> None:
    code = (
        "import sys, json, tracelet, tracelet.exporters.mlflow;"
        "print(json.dumps([m for m in ('mlflow', 'wandb', 'clearml', 'grpc') if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []
