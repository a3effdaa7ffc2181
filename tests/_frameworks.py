"""Helpers for the framework-integration tests: runs read back, points compared."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests._trackers import Stored, read_back
from tracelet import TraceletSettings


def quiet_settings(directory: Path) -> TraceletSettings:
    """Only what the test logs (no system metrics, git or environment), journaled in `directory`."""
    return TraceletSettings(
        track_system=False, track_git=False, track_env=False, dir=directory / ".tracelet"
    )


def stored(run_dir: Path, backend: str = "mlflow") -> Stored:
    """The run as `backend` holds it."""
    return read_back(run_dir, backend)


def points(series: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    """Points sorted by step then value, NaN last (MLflow returns them in its own order)."""
    return sorted(series, key=lambda p: (p[0], math.isnan(p[1]), 0.0 if math.isnan(p[1]) else p[1]))


def close(a: list[tuple[int, float]], b: list[tuple[int, float]], rel: float = 1e-6) -> bool:
    """Same steps, values equal within `rel` (TensorBoard stores float32), NaN equal to NaN."""
    return len(a) == len(b) and all(
        sa == sb
        and (
            math.isclose(va, vb, rel_tol=rel, abs_tol=1e-12) or (math.isnan(va) and math.isnan(vb))
        )
        for (sa, va), (sb, vb) in zip(points(a), points(b), strict=True)
    )


@contextmanager
def mlflow_process_state() -> Iterator[None]:
    """Put MLflow's process-wide (fluent) choices back after a framework's own MLflow logger.

    Lightning's ``MLFlowLogger`` calls ``mlflow.set_tracking_uri``, and
    transformers' ``MLflowCallback`` works through MLflow's active run and
    experiment (``evaluate()`` after ``train()`` leaves a run open): without
    this, a later test's fluent MLflow calls would land in this test's store.
    """
    import mlflow
    import mlflow.tracking.fluent as fluent
    from mlflow.tracking._tracking_service import utils

    uri = utils._tracking_uri
    try:
        yield
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(uri)  # type: ignore[arg-type]  # None: back to the default
        fluent._active_experiment_id = None


def event_scalars(logdir: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Every scalar in the event files under `logdir`: (sub-directory, tag) → points."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for directory in sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            key = (str(directory.relative_to(logdir)), tag)
            found.setdefault(key, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return found
