"""`TraceletCallback`: the Hugging Face ``Trainer`` records into tracelet.

```python
from transformers import Trainer
from tracelet.integrations.transformers import TraceletCallback

trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[TraceletCallback()])
```

or, while a run is active (``track_transformers``, on by default),
``TrainingArguments(report_to=["tracelet"])``.

- Logs are renamed the way W&B's callback renames them (transformers'
  ``rewrite_logs``): ``loss`` → ``train/loss``, ``eval_loss`` →
  ``eval/loss``, ``test_*`` → ``test/*``, ``learning_rate`` →
  ``train/learning_rate``; the end-of-training summary (``train_runtime``,
  ``train_loss``, ``total_flos``, ...) keeps its names. Step =
  ``state.global_step``. Values that are not numbers are left out, as
  ``MLflowCallback`` leaves them out; a metric already recorded at a step
  with the same value (the ``epoch`` of train and eval logs) is not recorded twice.
- ``TrainingArguments`` and the model's config become params (nested values
  flattened with ``/``; the arguments win over a config key of the same name).
- Only the world process zero records.
- With no run arguments it logs into the active run and never ends it
  (transformers#26762). With no active run, or with run arguments, it starts
  its own run on first use; that run stays open after ``train()`` so that a
  later ``evaluate()`` logs into it (no second run), and ends with
  `tracelet.stop_logging`, the next ``start_logging`` or the interpreter's exit.

Checkpoints: `on_save` is the hook where checkpoints will become artifacts of
the run once tracelet logs artifacts; today it records nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import TrainerCallback
from transformers.integrations.integration_utils import rewrite_logs

from tracelet.integrations import _quiet
from tracelet.integrations._runs import RunHandle

__all__ = ["TraceletCallback"]

#: What W&B's callback keeps as run summary instead of renaming into ``train/``.
SUMMARY = frozenset(
    {
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
        "total_flos",
    }
)


def _number(value: Any) -> float | int | None:
    if isinstance(value, (int, float)):
        return value
    numel = getattr(value, "numel", None)
    if callable(numel) and numel() == 1:
        item: float | int = value.item()
        return item
    return None


def rename(logs: Mapping[str, Any]) -> dict[str, float | int]:
    """The numbers of a ``Trainer`` log, renamed as W&B's callback renames them."""
    numbers = {k: n for k, v in logs.items() if (n := _number(v)) is not None}
    summary = {k: v for k, v in numbers.items() if k in SUMMARY}
    rest: dict[str, Any] = rewrite_logs(  # type: ignore[no-untyped-call]
        {k: v for k, v in numbers.items() if k not in SUMMARY}
    )
    return {**rest, **summary}


class TraceletCallback(TrainerCallback):
    """A ``TrainerCallback`` recording logs and hyperparameters into a tracelet run.

    Args:
        exp_name: the run's name (``args.run_name`` when not given and the callback starts it).
        project: the project (MLflow experiment, W&B / ClearML project).
        backend: backend name(s), as for `tracelet.start_logging`.
        config: backend options, as for `tracelet.start_logging`.
        settings: a `tracelet.TraceletSettings`.
    """

    def __init__(
        self,
        exp_name: str | None = None,
        project: str | None = None,
        backend: str | Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
        settings: Any = None,
    ) -> None:
        self._handle = RunHandle(exp_name, project, backend, config, settings)
        self._last: dict[str, tuple[int, float | int]] = {}
        self._params_logged = False
        _quiet.live.add(self)

    @property
    def tracelet_live(self) -> bool:
        """True while what this callback records reaches an active run."""
        return self._handle.live

    @property
    def experiment(self) -> Any:
        """The `tracelet.Experiment` recorded into, or None before the first record."""
        return self._handle.current

    def _setup(self, args: Any, model: Any) -> Any:
        exp = self._handle.experiment(exp_name=getattr(args, "run_name", None))
        if exp is not None and not self._params_logged:
            self._params_logged = True
            params: dict[str, Any] = {}
            config = getattr(model, "config", None)
            if config is not None and hasattr(config, "to_dict"):
                params.update(config.to_dict())
            params.update(args.to_dict())
            self._handle.log_params(params)
        return exp

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        if state.is_world_process_zero:
            self._setup(args, model)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Any = None, model: Any = None, **kw: Any
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        exp = self._setup(args, model)
        if exp is None:
            return
        step = int(state.global_step)
        points = {}
        for name, value in rename(logs).items():
            if self._last.get(name) == (step, value):
                continue  # the same point again (the epoch of a train and an eval log)
            self._last[name] = (step, value)
            points[name] = value
        if points:
            exp.log_metrics(points, step)

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """Called after a checkpoint is saved (``<output_dir>/checkpoint-<global_step>``).

        The place where checkpoints will be recorded as artifacts of the run
        once tracelet logs artifacts; today it records nothing.
        """
