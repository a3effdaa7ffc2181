"""`TraceletTracker`: Accelerate's ``accelerator.log`` records into tracelet.

```python
from accelerate import Accelerator
from tracelet.integrations.accelerate import TraceletTracker

accelerator = Accelerator(log_with=TraceletTracker(exp_name="baseline", project="mnist"))
accelerator.init_trackers("mnist", config={"lr": 1e-3, "model": {"depth": 4}})
accelerator.log({"train/loss": loss}, step=step)
accelerator.end_training()
```

- ``init_trackers(..., config=...)`` → params (nested dicts flattened with ``/``);
- ``accelerator.log(values, step)`` → metrics at `step` (None: each metric's
  next step); a nested dict ``{"loss": {"train": v}}`` becomes ``loss/train``;
  strings are left out;
- ``end_training()`` ends the run the tracker started. Given run arguments
  (`exp_name`, `project`, `backend`, `config`, `settings`) it starts its own
  run; with none it logs into the active run, which it leaves to its owner
  (or starts one when none is active).
- Only the main process records (Accelerate's ``main_process_only``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from accelerate.tracking import GeneralTracker, on_main_process

from tracelet.integrations import _quiet
from tracelet.integrations._runs import RunHandle

__all__ = ["TraceletTracker"]


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The numeric values of `values`, nested dicts flattened with ``/``; strings left out."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(numbers(value, f"{prefix}{key}/"))
        elif not isinstance(value, (str, bytes)) and value is not None:
            out[f"{prefix}{key}"] = value
    return out


class TraceletTracker(GeneralTracker):  # type: ignore[misc]
    """An Accelerate tracker recording into a tracelet run.

    Args:
        exp_name: the run's name; with any run argument the tracker starts its own run.
        project: the project (MLflow experiment, W&B / ClearML project).
        backend: backend name(s), as for `tracelet.start_logging`.
        config: backend options, as for `tracelet.start_logging`.
        settings: a `tracelet.TraceletSettings`.
    """

    name = "tracelet"
    requires_logging_directory = False
    main_process_only = True

    def __init__(
        self,
        exp_name: str | None = None,
        project: str | None = None,
        backend: str | Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
        settings: Any = None,
    ) -> None:
        super().__init__()
        self._handle = RunHandle(exp_name, project, backend, config, settings)
        _quiet.live.add(self)

    @property
    def tracker(self) -> Any:
        """The `tracelet.Experiment` recorded into (None before `start`)."""
        return self._handle.current

    @property
    def tracelet_live(self) -> bool:
        """True while what this tracker records reaches an active run."""
        return self._handle.started and self._handle.live

    @on_main_process  # type: ignore[untyped-decorator]
    def start(self) -> None:
        """Start the run (or join the active one): ``init_trackers`` calls it."""
        self._handle.experiment()

    @on_main_process  # type: ignore[untyped-decorator]
    def store_init_configuration(self, values: dict[str, Any]) -> None:
        """Record the run's configuration as params."""
        self._handle.log_params(values)

    @on_main_process  # type: ignore[untyped-decorator]
    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """Record `values` as metrics at `step`."""
        exp = self._handle.experiment()
        points = numbers(values)
        if exp is not None and points:
            exp.log_metrics(points, step)

    @on_main_process  # type: ignore[untyped-decorator]
    def finish(self) -> None:
        """End the run if this tracker started it (``accelerator.end_training()``)."""
        self._handle.end()
