"""Helpers every test module may use: quiet settings, bounded polling, a migrated MLflow store."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tracelet import TraceletSettings

T = TypeVar("T")

#: A run that captures no system metrics, git state or environment: only what the test logs.
QUIET = TraceletSettings(track_system=False, track_git=False, track_env=False)
#: Tracker I/O on threads of this process instead of the delivery agent: for tests
#: that look at a tracker SDK or an exporter object inside the test process.
IN_PROCESS = QUIET.model_copy(update={"delivery": "thread"})


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """Poll `probe` until it returns something truthy, and return that.

    A bounded wait on a condition the test can observe (points delivered, a
    file a child wrote, a sample taken), never a guess at how long something
    takes: on a busy machine it only waits longer. Fails after `timeout`
    seconds, naming `what` was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(interval)


def migrate_mlflow_store(path: Path) -> Path:
    """Create an MLflow sqlite store at `path`, with the installed MLflow's schema.

    A new store runs every alembic migration of MLflow's schema (several
    seconds, more on a busy machine); the tests create this once per session
    and copy it (`copy_mlflow_store`), which opens like any store MLflow made.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{path}", (path.parent / "mlruns").as_uri())
    store.engine.dispose()  # nothing left open on the file that is copied
    return path


def copy_mlflow_store(template: Path, path: Path) -> str:
    """A store at `path` copied from the migrated `template`; returns its ``sqlite:///`` URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"
