"""The main interface: start a run, find it from anywhere, stop it.

```python
import tracelet

with tracelet.start_logging(exp_name="baseline", project="mnist") as exp:
    exp.log_params({"lr": 0.1})
    for step in range(100):
        exp.log_metric("train/loss", 1 / (step + 1), iteration=step)
```
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tracelet import _lifecycle, _provenance, _registry, _rundir, _secrets
from tracelet._delivery import Delivery
from tracelet._experiment import Experiment
from tracelet._history import History
from tracelet._otel import TRACE_ID_TAG, Telemetry, export_interval_millis, resource_attributes
from tracelet._system import SystemMetrics
from tracelet.export import RunInfo, RunStatus, TelemetryContext
from tracelet.settings import TraceletSettings

__all__ = ["get_active_experiment", "start_logging", "stop_logging"]

_log = logging.getLogger("tracelet")

_lock = threading.RLock()
_active: Experiment | None = None
_uncaught: BaseException | None = None


def start_logging(
    exp_name: str | None = None,
    project: str | None = None,
    backend: str | Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None,
    settings: TraceletSettings | None = None,
) -> Experiment:
    """Start tracking a run and make it the active experiment.

    Values are taken from the explicit arguments first, then from `settings`,
    then from ``TRACELET_*`` environment variables, then the defaults (backend
    ``"mlflow"``, writing to MLflow's local store). A run that is still active
    is ended first.

    Args:
        exp_name: the run's name (MLflow run name, W&B run name, ClearML task).
            Generated from the time when not given.
        project: the MLflow experiment, W&B project or ClearML project
            (``"default"`` when not given).
        backend: one backend name or a list of them, e.g.
            ``["mlflow", "wandb"]``.
        config: backend options. A key naming a backend holds options for it
            alone (``{"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}``);
            any other key goes to each selected backend that has that option
            (``tags`` to all, ``entity`` to W&B). Unknown options are an error.
        settings: a `tracelet.settings.TraceletSettings`.

    Returns:
        The active `Experiment`; also a context manager that ends the run.

    Raises:
        ValueError: an unknown backend (`tracelet.errors.BackendNotFoundError`,
            which lists the available ones) or a bad config option
            (`tracelet.errors.ConfigError`). Nothing is created in that case.
        ImportError: the backend's extra is not installed
            (`tracelet.errors.BackendNotInstalledError` names the pip command).
    """
    base = settings if settings is not None else TraceletSettings()
    overrides: dict[str, Any] = {}
    if exp_name is not None:
        overrides["exp_name"] = exp_name
    if project is not None:
        overrides["project"] = project
    if backend is not None:
        overrides["backend"] = backend
    resolved = TraceletSettings(**{**base.model_dump(), **overrides}) if overrides else base

    # Everything that can be wrong is checked before anything is created.
    classes = _registry.resolve(resolved.backend)
    options = _registry.build_options(classes, {**resolved.config, **(config or {})})
    for source in (resolved.config, config):  # masked wherever they might show up
        _secrets.register_from(source)
    _secrets.set_unmasked_keys(resolved.unmasked_keys)

    with _lock:
        if _active is not None:
            _end(_active, RunStatus.FINISHED)
        exp = _create(resolved, classes, options)
        _set_active(exp)
    if resolved.handle_signals:
        _lifecycle.install_signal_handlers(_end_on_signal)
    _secrets.install_log_filter()  # also on "tracelet.*" loggers created since the last run
    return exp


def get_active_experiment() -> Experiment | None:
    """The experiment started last and not yet stopped, or ``None``."""
    return _active


def stop_logging() -> None:
    """End the active experiment (delivering everything); harmless when there is none."""
    exp = _active
    if exp is not None:
        _end(exp, RunStatus.FINISHED)


def _create(
    settings: TraceletSettings,
    classes: Mapping[str, type[Any]],
    options: Mapping[str, Any],
) -> Experiment:
    run_id = uuid.uuid4().hex
    project = settings.project or "default"
    name = settings.exp_name or time.strftime("run-%Y%m%d-%H%M%S")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(settings.dir).absolute() / "runs" / f"{stamp}-{run_id[:8]}"
    run_dir.mkdir(parents=True, exist_ok=False)
    run_lock = _rundir.RunLock(run_dir)  # held while this process owns the run (tracelet sync)
    run_lock.acquire()
    _rundir.write_run(  # what `tracelet sync` needs to finish the run elsewhere; no secrets
        run_dir,
        run_id=run_id,
        project=project,
        name=name,
        backends=list(classes),
        options={n: _secrets.public_options(options[n]) for n in classes},
    )
    latest: dict[str, float] = {}
    exp_ref: list[Experiment] = []
    info = RunInfo(run_id=run_id, project=project, name=name)
    # Telemetry backends (otlp, prometheus) feed the OTel providers; the others
    # are trackers, each fed the history by a Delivery thread.
    telemetry_classes = {n: c for n, c in classes.items() if _registry.is_telemetry(c)}
    classes = {n: c for n, c in classes.items() if n not in telemetry_classes}
    # Git and environment are read now: the vcs.* attributes belong on the
    # Resource, which is fixed when the provider is created.
    provenance = _provenance.capture(git=settings.track_git, env=settings.track_env)
    telemetry = Telemetry(
        {**resource_attributes(run_id, project, name), **provenance.resource},
        latest,
        lambda: (exp_ref[0].step or 0, exp_ref[0]._points) if exp_ref else (0, 0),
        backends={n: c(options[n]) for n, c in telemetry_classes.items()},
        context=TelemetryContext(
            info, export_interval_millis(settings.metrics_interval, os.environ)
        ),
    )
    history = History(
        run_dir / "journal.jsonl",
        flush_interval=settings.flush_interval,
        max_buffered=settings.max_buffered_points,
        on_names=telemetry.observe,
    )
    deliveries = [
        Delivery(
            backend,
            cls(options[backend]),
            info,
            history,
            run_dir / f"{backend}.state.json",
            on_started=_exit_hook_first,
        )
        for backend, cls in classes.items()
    ]
    exp = Experiment(
        run_id=run_id,
        name=name,
        project=project,
        run_dir=run_dir,
        history=history,
        deliveries=deliveries,
        telemetry=telemetry,
        latest=latest,
        close_timeout=settings.close_timeout,
        keep_journal=settings.keep_journal,
        run_lock=run_lock,
    )
    exp_ref.append(exp)
    if provenance.tags:
        exp.set_tags(provenance.tags)
    if settings.track_system:
        sampler = SystemMetrics(
            interval=settings.metrics_interval, history=history, telemetry=telemetry
        )
        exp._feeders.append(sampler.stop)
        sampler.start()
    telemetry.attach(history, deliveries, lambda: exp.params)
    if telemetry.exports_traces:  # links each tracker run to the run's trace
        exp.set_tags({TRACE_ID_TAG: telemetry.trace_id})
    for delivery in deliveries:
        delivery.start()
    return exp


def _set_active(exp: Experiment) -> None:
    global _active
    _active = exp
    _install_hooks()


def _end(exp: Experiment, status: RunStatus) -> None:
    global _active
    with _lock:
        exp.end(status)
        if _active is exp:
            _active = None
    _lifecycle.after_end()  # a SIGTERM that arrived while this thread was ending the run


def _end_on_signal() -> bool:
    """End the active run KILLED (SIGTERM); False when this thread is already ending it."""
    exp = _active
    if exp is None:
        return True
    if exp._ending == threading.get_ident():
        return False
    _end(exp, RunStatus.KILLED)
    return True


def _forget_active_in_child() -> None:
    """In a forked child: no active run (its copy is inert), fresh lock."""
    global _lock, _active
    _lock = threading.RLock()
    _active = None


_lifecycle.on_fork_child(_forget_active_in_child)


_hooks_installed = False


def _install_hooks() -> None:
    """End the active run at interpreter exit, FAILED after an uncaught exception."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    previous = sys.excepthook

    def excepthook(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        global _uncaught
        _uncaught = exc
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook
    atexit.register(_at_exit)
    _secrets.install_log_filter()


def _exit_hook_first() -> None:
    """Move tracelet's exit hook ahead of those an SDK registered while starting.

    atexit runs hooks last-registered first; a tracker SDK that closes its run
    at exit must see tracelet's final points before it does.
    """
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)


def _at_exit() -> None:
    exp = _active
    if exp is not None:
        if _lifecycle.received is not None or isinstance(_uncaught, KeyboardInterrupt):
            status = RunStatus.KILLED  # stopped by a signal or Ctrl-C
        elif _uncaught is not None:
            status = RunStatus.FAILED
        else:
            status = RunStatus.FINISHED
        _end(exp, status)
