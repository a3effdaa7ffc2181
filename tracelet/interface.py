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
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from tracelet import _experiment, _lifecycle, _logs, _registry, _secrets
from tracelet._experiment import Experiment
from tracelet._run import Run
from tracelet.export import RunStatus
from tracelet.integrations import _auto
from tracelet.settings import TraceletSettings

__all__ = ["get_active_experiment", "start_logging", "stop_logging"]

_log = logging.getLogger("tracelet")

_uncaught: BaseException | None = None


def start_logging(
    exp_name: str | None = None,
    project: str | None = None,
    backend: str | Sequence[str] | None = None,
    config: Mapping[str, Any] | None = None,
    settings: TraceletSettings | None = None,
    run_id: str | None = None,
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
        run_id: the run's id. When a run with this id exists (in the run
            directory, or a tracker run tagged ``tracelet.run_id``), it is
            continued: same MLflow run, W&B run, ClearML task. ``"auto"``
            continues the job's previous run after a SLURM requeue or a
            torchrun restart. Default: derived from the launcher
            (torchrun, SLURM, MPI) so that every rank of a job agrees, else new.

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
    if run_id is not None:
        overrides["run_id"] = run_id
    resolved = TraceletSettings(**{**base.model_dump(), **overrides}) if overrides else base

    # Everything that can be wrong is checked before anything is created.
    classes = _registry.resolve(resolved.backend)
    options = _registry.build_options(classes, {**resolved.config, **(config or {})})
    for source in (resolved.config, config):  # masked wherever they might show up
        _secrets.register_from(source)
    _secrets.set_unmasked_keys(resolved.unmasked_keys)

    with _experiment.slot_lock:
        _experiment.end_active(RunStatus.FINISHED)
        exp = Experiment(Run(resolved, classes, options, on_started=_exit_hook_first))
        _experiment.activate(exp)
        _install_hooks()
        _auto.install(resolved)  # framework capture (TensorBoard, Lightning, ...) for this run
    if resolved.handle_signals:
        _lifecycle.install_signal_handlers(_end_on_signal)
    _secrets.install_log_filter()  # also on "tracelet.*" loggers created since the last run
    _logs.install_fallback()  # "tracelet: ..." lines where the application configured no logging
    return exp


def get_active_experiment() -> Experiment | None:
    """The experiment started last and not yet ended, or ``None``."""
    return _experiment.active()


def stop_logging() -> None:
    """End the active experiment (delivering everything); harmless when there is none."""
    _experiment.end_active(RunStatus.FINISHED)


def _end_on_signal() -> bool:
    """End the active run KILLED (SIGTERM); False when this thread is already ending it."""
    return _experiment.end_active(RunStatus.KILLED)


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


def _exit_hook_first() -> None:
    """Move tracelet's exit hook ahead of those an SDK registered while starting.

    atexit runs hooks last-registered first; a tracker SDK that closes its run
    at exit must see tracelet's final points before it does.
    """
    atexit.unregister(_at_exit)
    atexit.register(_at_exit)


def _at_exit() -> None:
    if _lifecycle.received is not None or isinstance(_uncaught, KeyboardInterrupt):
        status = RunStatus.KILLED  # stopped by a signal or Ctrl-C
    elif _uncaught is not None:
        status = RunStatus.FAILED
    else:
        status = RunStatus.FINISHED
    _experiment.end_active(status)
