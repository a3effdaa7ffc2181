"""The run an integration logs into: its own, or the active one it joins.

Given run arguments (``exp_name``, ``project``, ``backend``, ``config``,
``settings``), an integration starts its own run on first use and ends it
when the framework says training is over. Given none, it logs into the
active run and leaves ending it to whoever started it; with no active run
at its first use, it starts one itself (as MLflow's and W&B's framework
loggers do) and owns it. Once the run it joined has ended, it logs into
the run active then, or, with none, records nothing (and says so once).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tracelet.errors import ParamConflictError

__all__ = ["RunHandle", "log_params"]

_log = logging.getLogger("tracelet")


class RunHandle:
    """Which experiment an integration logs into, and whether it owns it."""

    def __init__(
        self,
        exp_name: str | None = None,
        project: str | None = None,
        backend: str | Sequence[str] | None = None,
        config: Mapping[str, Any] | None = None,
        settings: Any = None,
    ) -> None:
        self._args: dict[str, Any] = {
            "exp_name": exp_name,
            "project": project,
            "backend": backend,
            "config": config,
            "settings": settings,
        }
        #: True: a run of its own (started on first use); False: the active run.
        self.own = any(v is not None for v in self._args.values())
        self._exp: Any = None  # the Experiment, once there is one
        self._owns = False
        self._warned_ended = False
        self._warned_params: set[str] = set()

    @property
    def current(self) -> Any:
        """The experiment logged into last, or None before the first use."""
        return self._exp

    @property
    def started(self) -> bool:
        """True once the handle logged (or was asked for its run)."""
        return self._exp is not None

    @property
    def owns(self) -> bool:
        """True when this handle started the run it logs into."""
        return self._owns

    @property
    def live(self) -> bool:
        """True while logging through this handle reaches an active run."""
        from tracelet import get_active_experiment

        if self._owns:
            return bool(self._exp.active)
        return get_active_experiment() is not None

    def experiment(self, **defaults: Any) -> Any:
        """The experiment to log into, started now if needed; None once its own run ended.

        `defaults` fill the run arguments that were not given (a framework's run name).
        """
        import tracelet

        if self._owns:
            if self._exp.active:
                return self._exp
            if not self._warned_ended:
                self._warned_ended = True
                _log.warning(
                    "run %r has ended; what the framework logs after its end is not recorded",
                    self._exp.name,
                )
            return None
        if not self.own:
            active = tracelet.get_active_experiment()
            if active is not None:
                self._exp = active
                return active
            if self._exp is not None:  # the run it joined has ended, and none is active
                if not self._warned_ended:
                    self._warned_ended = True
                    _log.warning(
                        "run %r has ended and no run is active; what the framework logs "
                        "now is not recorded (start a run with tracelet.start_logging)",
                        self._exp.name,
                    )
                return None
        args = {k: (v if v is not None else defaults.get(k)) for k, v in self._args.items()}
        self._exp = tracelet.start_logging(**args)
        self._owns = True
        return self._exp

    def end(self, status: str = "FINISHED") -> None:
        """End the run if this handle started it; a joined run is left to its owner."""
        if self._owns and self._exp.active:
            self._exp.end(status)

    def log_params(self, params: Mapping[str, Any], **defaults: Any) -> None:
        """Log params into the run (see `log_params`)."""
        exp = self.experiment(**defaults)
        if exp is not None:
            log_params(exp, params, self._warned_params)


def _str_keys(params: Mapping[Any, Any]) -> dict[str, Any]:
    """`params` with every key a string (a model config's ``id2label`` has int keys)."""
    return {
        str(k): _str_keys(v) if isinstance(v, Mapping) else v for k, v in params.items() if str(k)
    }


def log_params(exp: Any, params: Mapping[str, Any], warned: set[str]) -> None:
    """Log params; one logged before with another value is warned about once, not raised.

    A framework may report a hyperparameter again with another value (a second
    ``fit`` with another datamodule); tracelet keeps the first, as every
    tracker does, instead of failing the training.
    """
    from tracelet._validate import flatten, same_param

    flat = flatten(_str_keys(params))
    known = exp.params
    changed = sorted(k for k, v in flat.items() if k in known and not same_param(known[k], v))
    try:
        exp.log_params({k: v for k, v in flat.items() if k not in changed})
    except ParamConflictError:  # another thread logged one meanwhile: keep the first
        changed = sorted(flat)
    new = [k for k in changed if k not in warned]
    if new:
        warned.update(new)
        _log.warning(
            "tracelet keeps the first value of params %s: a param cannot change value within a run",
            ", ".join(repr(k) for k in new),
        )
