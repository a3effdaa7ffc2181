"""`TraceletLogger`: a Lightning logger that records into tracelet.

```python
import lightning.pytorch as pl
from tracelet.integrations.lightning import TraceletLogger

trainer = pl.Trainer(logger=TraceletLogger(exp_name="baseline", project="mnist"))
```

- With run arguments (`exp_name`, `project`, `backend`, `config`,
  `settings`) the logger starts its own run on first use and ends it in
  `finalize` (FINISHED, or FAILED for ``finalize("failed")``).
- With none, it logs into the active run (``tracelet.start_logging``) and
  leaves ending it to its owner; with no active run either, it starts one
  with the defaults (``TRACELET_*``) and ends it in `finalize`.
- While a run is active, a ``Trainer`` built without one gets a
  ``TraceletLogger`` next to its own loggers (``track_lightning``); a
  Trainer built with ``logger=False`` is left alone.

Metrics keep the names, steps and values Lightning's ``MLFlowLogger`` gives
them (a no-step call is step 0; characters MLflow refuses are removed). The
``epoch`` Lightning adds to every call is recorded once per step: a metric
logged again at the same step with the same value is not recorded twice.
``save_hyperparameters()`` (and the datamodule's) become params. Only global
rank zero records.

Checkpoints: `after_save_checkpoint` is the hook where the paths of saved
checkpoints will become artifacts once tracelet logs artifacts; today it
records nothing.
"""

from __future__ import annotations

import re
from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers.logger import Logger
    from lightning.pytorch.utilities import rank_zero_only
except ImportError:  # only the older package, pytorch_lightning, is installed
    from lightning_fabric.loggers.logger import rank_zero_experiment
    from pytorch_lightning.loggers.logger import Logger  # type: ignore[assignment]
    from pytorch_lightning.utilities import rank_zero_only

from tracelet.integrations import _quiet
from tracelet.integrations._runs import RunHandle

__all__ = ["TraceletLogger"]

_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}
#: What MLflow (and so Lightning's MLFlowLogger) leaves in a metric name.
_REFUSED = re.compile("[^a-zA-Z0-9_/. -]+")


class TraceletLogger(Logger):
    """Lightning logger recording metrics and hyperparameters into a tracelet run.

    Args:
        exp_name: the run's name; with any run argument the logger starts its own run.
        project: the project (MLflow experiment, W&B / ClearML project).
        backend: backend name(s), as for `tracelet.start_logging`.
        config: backend options, as for `tracelet.start_logging`.
        settings: a `tracelet.TraceletSettings`.
        prefix: put before every metric name, joined with ``-`` (as Lightning's loggers do).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        exp_name: str | None = None,
        project: str | None = None,
        backend: str | Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
        settings: Any = None,
        prefix: str = "",
    ) -> None:
        super().__init__()
        self._handle = RunHandle(exp_name, project, backend, config, settings)
        self._project = project
        self._prefix = prefix
        #: metric → (step, value) last recorded: the same point is never recorded twice.
        self._last: dict[str, tuple[int, float]] = {}
        _quiet.live.add(self)

    @property
    def tracelet_live(self) -> bool:
        """True while what this logger records reaches an active run."""
        return self._handle.live

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The `tracelet.Experiment` this logger records into (started on first use)."""
        if self._handle.owns:  # its own run, ended or not
            return self._handle.current
        return self._handle.experiment()

    @property
    def name(self) -> str:
        """The project (``"default"`` unless given or set by the run)."""
        exp = self._handle.current
        if exp is not None:
            return str(exp.project)
        return self._project or "default"

    @property
    def version(self) -> str:
        """tracelet's run id (starts the run on rank zero; empty on other ranks)."""
        exp = self.experiment
        run_id = getattr(exp, "run_id", None)
        return run_id if isinstance(run_id, str) else ""

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kw: Any) -> None:
        """Record hyperparameters as params (nested ones flattened with ``/``)."""
        if isinstance(params, Namespace):
            params = vars(params)
        self._handle.log_params(params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metrics at `step` (0 when None, as MLFlowLogger does)."""
        exp = self._handle.experiment()
        if exp is None:
            return
        step = step or 0
        points: dict[str, Any] = {}
        for key, value in metrics.items():
            if isinstance(value, str):
                continue  # MLFlowLogger discards them too
            name = _REFUSED.sub(
                "", f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}" if self._prefix else key
            )
            item = getattr(value, "item", None)
            number = item() if callable(item) else value
            if self._last.get(name) == (step, number):
                continue  # e.g. the epoch Lightning adds to every call
            self._last[name] = (step, number)
            points[name] = number
        if points:
            exp.log_metrics(points, step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """End the run if this logger started it: FINISHED, or FAILED for ``"failed"``."""
        self._handle.end(_STATUS.get(status, "FINISHED"))

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called by Lightning after each checkpoint is saved.

        The place where checkpoints will be recorded as artifacts of the run
        once tracelet logs artifacts (``checkpoint_callback.best_model_path``,
        ``last_model_path``); today it records nothing.
        """
