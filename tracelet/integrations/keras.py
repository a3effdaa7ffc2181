"""`TraceletCallback` for Keras 3: ``model.fit`` records into tracelet.

```python
from tracelet.integrations.keras import TraceletCallback

model.fit(x, y, epochs=10, validation_data=(xv, yv), callbacks=[TraceletCallback()])
```

- After each training batch, its logs as ``batch/<name>`` (``batch/loss``)
  at a global batch step the callback counts itself (Keras restarts its
  batch index every epoch; the count goes on across ``fit`` calls);
  ``log_batches=False`` leaves batches out.
- After each epoch, its logs as ``epoch/<name>`` (``epoch/loss``,
  ``epoch/val_loss``) at the epoch index.
- ``model.evaluate`` outside ``fit``: its logs as ``evaluate/<name>``, each
  at its metric's next step.
- ``fit``'s ``epochs`` and ``steps`` and the optimizer's class and learning
  rate become params (``keras/epochs``, ``keras/optimizer``, ...).
- With run arguments (`exp_name`, `project`, `backend`, `config`, `settings`),
  or when no run is active, the callback starts its own run on first use;
  it stays open after ``fit`` (for a later ``evaluate``) and ends with
  `tracelet.stop_logging`, the next ``start_logging`` or the interpreter's
  exit. Otherwise it logs into the active run and never ends it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras

from tracelet.integrations._runs import RunHandle

__all__ = ["TraceletCallback"]


class TraceletCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """A Keras callback recording batch, epoch and evaluation logs into a tracelet run.

    Args:
        exp_name: the run's name; with any run argument the callback starts its own run.
        project: the project (MLflow experiment, W&B / ClearML project).
        backend: backend name(s), as for `tracelet.start_logging`.
        config: backend options, as for `tracelet.start_logging`.
        settings: a `tracelet.TraceletSettings`.
        log_batches: record each training batch's logs (``batch/...``).
    """

    def __init__(
        self,
        exp_name: str | None = None,
        project: str | None = None,
        backend: str | Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
        settings: Any = None,
        log_batches: bool = True,
    ) -> None:
        super().__init__()
        self._handle = RunHandle(exp_name, project, backend, config, settings)
        self._log_batches = log_batches
        #: The global batch step: batches trained by this callback's fits so far.
        self.global_step = 0
        self._in_fit = False

    @property
    def experiment(self) -> Any:
        """The `tracelet.Experiment` recorded into, or None before the first record."""
        return self._handle.current

    def _log(self, prefix: str, logs: Mapping[str, Any] | None, step: int | None) -> None:
        if not logs:
            return
        exp = self._handle.experiment()
        if exp is not None:
            exp.log_metrics({f"{prefix}/{k}": v for k, v in logs.items()}, step)

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._in_fit = True
        params: dict[str, Any] = {}
        for key in ("epochs", "steps"):
            if (self.params or {}).get(key) is not None:
                params[f"keras/{key}"] = self.params[key]
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            params["keras/optimizer"] = type(optimizer).__name__
            rate = getattr(optimizer, "learning_rate", None)
            try:
                params["keras/learning_rate"] = float(keras.ops.convert_to_numpy(rate))
            except (TypeError, ValueError):
                pass  # a schedule: it has no single value
        self._handle.log_params(params)

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self._in_fit = False

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._log_batches:
            self._log("batch", logs, self.global_step)
        self.global_step += 1

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._log("epoch", logs, epoch)

    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if not self._in_fit:  # in fit, the validation logs come with the epoch's
            self._log("evaluate", logs, None)
