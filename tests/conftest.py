"""Shared fixtures: every test runs in its own temporary directory, offline."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import tracelet
from tests._helpers import copy_mlflow_store, migrate_mlflow_store
from tracelet.testing import InMemoryExporter, offline_env

if TYPE_CHECKING:
    from tests._otlp_receiver import OTLPReceiver

# Offline and quiet for every backend SDK, before any of them is imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
os.environ.setdefault("WANDB_SILENT", "true")
# ClearML decides offline mode when it is imported; a test never reaches a server.
os.environ.setdefault("CLEARML_OFFLINE_MODE", "1")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in `tmp_path` (./.tracelet and ./mlflow.db land there); no TRACELET_* leaks in."""
    for key in list(os.environ):
        if key.startswith("TRACELET_") or key == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    tracelet.stop_logging()
    InMemoryExporter.runs.clear()


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite store migrated once per session, for the tests to copy.

    A store MLflow creates itself runs every alembic migration of its schema
    first (seconds each time); a copy of this one opens at once. Child
    processes get a copy too: the tests place it where the child's store goes.
    """
    return migrate_mlflow_store(tmp_path_factory.mktemp("mlflow-template") / "mlflow.db")


@pytest.fixture(scope="session")
def mlflow_store(mlflow_template: Path) -> Callable[[Path], str]:
    """``mlflow_store(path)``: a new, empty MLflow store at `path` (a copy of the template).

    Returns its ``sqlite:///`` URI.
    """
    return lambda path: copy_mlflow_store(mlflow_template, path)


@pytest.fixture
def mlflow_uri(tmp_path: Path, mlflow_store: Callable[[Path], str]) -> str:
    """A fresh MLflow sqlite store in the test's directory (``mlflow.db``).

    That is also MLflow's default local store (``./mlflow.db``) for a run, or a
    child process, started in the test's directory without a tracking URI.
    """
    return mlflow_store(tmp_path / "mlflow.db")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 for the whole session; yields its URL."""
    from tests._servers import MlflowServer

    root = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(root, template=mlflow_template).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def offline_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B and ClearML offline, writing under `tmp_path` (as a user configures them by env).

    W&B gets the lean settings of facts-backends.md (no git, code, console or
    system-stats capture); its run files land in ``tmp_path/wandb``, ClearML's
    offline sessions in ``tmp_path/clearml/offline``.
    """
    for key, value in offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    # ClearML's Task.init marks this process as the "master" in the environment;
    # a later test's child process would inherit it (and get a stub task).
    for key in ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID"):
        monkeypatch.setenv(key, "")  # so that monkeypatch restores the original after the test
        monkeypatch.delenv(key)
    return tmp_path


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OTLPReceiver]:
    """A real OTLP receiver (gRPC and HTTP) on 127.0.0.1; no ``OTEL_*`` variable leaks in."""
    from tests._otlp_receiver import OTLPReceiver

    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    r = OTLPReceiver()
    r.start_grpc()
    r.start_http()
    yield r
    r.stop()
