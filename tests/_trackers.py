"""Read a run back from each real tracker, in one shape, for tests that compare backends.

Each adapter reads what the backend stored, from the backend itself (MLflow's
store through ``MlflowClient``, W&B's ``.wandb`` file, ClearML's offline
session), given the resume state the exporter's ``start`` returned (kept by
tracelet in ``<run_dir>/<backend>.state.json``).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracelet.exporters._clearml_translate import FLOAT32_MAX
from tracelet.testing import InMemoryExporter, read_clearml_session, read_wandb_run

MLFLOW_FLOAT_MAX = 1.7976931348623157e308


@dataclass
class Stored:
    """A run as one tracker holds it, normalised for comparison."""

    name: str
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    #: Params as text (MLflow and ClearML store text; W&B and memory values are str()-ed).
    params: dict[str, str] = field(default_factory=dict)
    #: Tags as ``key:value`` labels (``key`` when the value is empty).
    tags: set[str] = field(default_factory=set)
    #: FINISHED / FAILED / KILLED, or None while running.
    status: str | None = None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def read_memory(state: dict[str, Any]) -> Stored:
    run = InMemoryExporter.runs[state["run_id"]]
    series: dict[str, list[tuple[int, float]]] = {}
    for p in run.metrics:
        series.setdefault(p.name, []).append((p.step, p.value))
    return Stored(
        name=run.info.name,
        series=series,
        params={k: _text(v) for k, v in run.params.items()},
        tags={f"{k}:{v}" if v else k for k, v in run.tags.items()},
        status=run.status.value if run.status else None,
    )


def read_mlflow(state: dict[str, Any]) -> Stored:
    from mlflow import MlflowClient

    client = MlflowClient(state["tracking_uri"])
    run = client.get_run(state["run_id"])
    series = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
    }
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith(("mlflow.", "tracelet."))}
    status = run.info.status
    return Stored(
        name=run.info.run_name,
        series=series,
        params=dict(run.data.params),
        tags={f"{k}:{v}" if v else k for k, v in tags.items()},
        status=None if status == "RUNNING" else status,
    )


WANDB_EXIT = {0: "FINISHED", 1: "FAILED", 255: "KILLED"}


def wandb_written() -> None:
    """Wait until wandb-core has written every finished run to its ``.wandb`` file.

    ``run.finish()`` returns before wandb-core has flushed an offline run's
    file (it closes the stream after an unacknowledged ``inform_finish``);
    ``wandb.teardown()`` waits for the service to exit, which writes it out.
    The next ``wandb.init`` starts a new service.
    """
    import wandb

    wandb.teardown()


def read_wandb(state: dict[str, Any]) -> Stored:
    wandb_written()
    run = read_wandb_run(state["sync_file"])
    keys = {k for row in run.rows for k in row if not k.startswith("_") and k != "tracelet/step"}
    media = tuple({k[: -len("_type")] for k in keys if k.endswith("._type")})  # "img." of images
    keys = {k for k in keys if not (media and k.startswith(media))}
    return Stored(
        name=run.name,
        series={k: run.history(k) for k in keys},
        params={k: _text(v) for k, v in run.config.items()},
        tags=set(run.tags),
        status=None if run.exit_code is None else WANDB_EXIT[run.exit_code],
    )


def read_clearml(state: dict[str, Any]) -> Stored:
    session = read_clearml_session(state["offline_folder"])
    series = {
        (title if title == variant else f"{title}/{variant}"): points
        for (title, variant), points in session.scalars.items()
    }
    section = "General/"
    return Stored(
        name=session.name,
        series=series,
        params={k[len(section) :]: v for k, v in session.params.items() if k.startswith(section)},
        tags=set(session.tags),
        status=session.properties.get("tracelet_status"),
    )


READERS = {
    "memory": read_memory,
    "mlflow": read_mlflow,
    "wandb": read_wandb,
    "clearml": read_clearml,
}


def stored_value(backend: str, value: float) -> float | None:
    """What `backend` keeps for a logged `value` (None: the point is not stored)."""
    if math.isfinite(value) or backend in ("memory", "wandb"):
        return value
    if math.isnan(value):
        return None if backend == "clearml" else value  # MLflow keeps NaN
    limit = FLOAT32_MAX if backend == "clearml" else MLFLOW_FLOAT_MAX
    return limit if value > 0 else -limit


@contextmanager
def starts_seen(monkeypatch: Any) -> Iterator[threading.Semaphore]:
    """A semaphore released each time a backend's ``start`` returns.

    tracelet calls ``interface._exit_hook_first`` on the delivery thread right
    after an exporter started; wrapping it lets a test wait for that moment
    instead of sleeping.
    """
    from tracelet import interface

    started = threading.Semaphore(0)
    real = interface._exit_hook_first

    def hook() -> None:
        real()
        started.release()

    monkeypatch.setattr(interface, "_exit_hook_first", hook)
    yield started


def state_of(run_dir: Path, backend: str) -> dict[str, Any]:
    """The exporter's resume state, as the delivery thread saved it."""
    state = json.loads((run_dir / f"{backend}.state.json").read_text())
    resume: dict[str, Any] = state["resume"]
    return resume


def read_back(run_dir: Path, backend: str) -> Stored:
    """What `backend` holds for the tracelet run in `run_dir`."""
    return READERS[backend](state_of(run_dir, backend))


#: Backends whose read-back keeps logging order. MLflow returns a metric's
#: history sorted by (timestamp, step, value), not in the order it was logged.
KEEPS_ORDER = {"memory", "wandb", "clearml"}


def same_series(
    backend: str, got: list[tuple[int, float]], logged: list[tuple[int, float]]
) -> bool:
    """`got` holds exactly the `logged` points (in order where `backend` keeps order)."""
    if backend in KEEPS_ORDER:
        return same(got, logged)
    key = lambda p: (p[0], math.isnan(p[1]), 0.0 if math.isnan(p[1]) else p[1])  # noqa: E731
    return same(sorted(got, key=key), sorted(logged, key=key))


def same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    """Equal point lists, NaN equal to NaN."""
    return len(a) == len(b) and all(
        sa == sb and (va == vb or (math.isnan(va) and math.isnan(vb)))
        for (sa, va), (sb, vb) in zip(a, b, strict=True)
    )
