"""TensorBoard capture: ``SummaryWriter`` calls recorded by the active run.

On by default (``track_tensorboard``, ``TRACELET_TRACK_TENSORBOARD``). While a
run is active, ``torch.utils.tensorboard.SummaryWriter`` and
``tensorboardX.SummaryWriter`` also hand what they write to tracelet:

- ``add_scalar(tag, value, step)`` → metric ``tag`` at ``step`` (a 0-d
  tensor or numpy scalar is fine; no step → the metric's next step);
- ``add_scalars(main, {k: v}, step)`` → metrics ``main/k``;
- ``add_hparams(hparams, metrics)`` → params ``hparams`` and each metric once
  (TensorBoard writes them through a second, internal writer: that write is
  not recorded again).

TensorBoard's event files are written exactly as before: the original
method runs first, unchanged. The methods are patched on the classes, so a
writer created before the run is captured too; `tracelet.stop_logging`
puts them back, and with no active run a call costs one check.

When a tracelet logger runs beside a framework's TensorBoard logger
(Lightning's ``TensorBoardLogger`` with a ``TraceletLogger``, Hugging Face's
``TensorBoardCallback`` with a ``TraceletCallback``, Accelerate's TensorBoard
tracker with a ``TraceletTracker``), that logger's writes are left to
TensorBoard: the values reach tracelet once, through the tracelet logger.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from tracelet.integrations import _quiet, _runs
from tracelet.interface import get_active_experiment

__all__ = ["HOOKS", "patch_writer", "unpatch"]

_log = logging.getLogger("tracelet")
_lock = threading.Lock()
#: (class, method) → the original function.
_originals: dict[tuple[type, str], Any] = {}
_warned: set[str] = set()
_warned_params: set[str] = set()


def _warn(what: str, exc: Exception) -> None:
    """A value tracelet refuses is left to TensorBoard, with one warning per tag; never raised."""
    if what not in _warned:
        _warned.add(what)
        _log.warning("tracelet did not record TensorBoard %s: %s", what, exc)


def _step(step: Any) -> int | None:
    return None if step is None else int(step)


def _add_scalar(original: Callable[..., Any]) -> Callable[..., Any]:
    # The hot one (called every step): no context manager, no closure, nothing
    # built unless a run is active.
    @functools.wraps(original)
    def add_scalar(
        self: Any, tag: str, scalar_value: Any, global_step: Any = None, *args: Any, **kw: Any
    ) -> Any:
        outer = _quiet.enter() == 0  # whatever it calls inside is this one write
        try:
            result = original(self, tag, scalar_value, global_step, *args, **kw)
        finally:
            _quiet.leave()
        if outer:
            exp = get_active_experiment()
            if exp is not None:
                try:
                    exp.log_metric(tag, scalar_value, _step(global_step))
                except Exception as exc:
                    _warn(f"scalar {tag!r}", exc)
        return result

    return add_scalar


def _record(what: str, fn: Callable[[Any], None]) -> None:
    """Record through `fn(experiment)` when a run is active and no outer call records."""
    if _quiet.is_quiet():
        return
    exp = get_active_experiment()
    if exp is None:
        return
    try:
        fn(exp)
    except Exception as exc:
        _warn(what, exc)


def _add_scalars(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def add_scalars(
        self: Any,
        main_tag: str,
        tag_scalar_dict: Mapping[str, Any],
        global_step: Any = None,
        *args: Any,
        **kw: Any,
    ) -> Any:
        with _quiet.quiet():
            result = original(self, main_tag, tag_scalar_dict, global_step, *args, **kw)
        _record(
            f"scalars {main_tag!r}",
            lambda exp: exp.log_metrics(
                {f"{main_tag}/{k}": v for k, v in tag_scalar_dict.items()}, _step(global_step)
            ),
        )
        return result

    return add_scalars


def _plain(value: Any) -> Any:
    """A 0-d tensor or numpy scalar as its Python value (TensorBoard accepts them as hparams)."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (bool, int, float, str)):
        try:
            return item()
        except (ValueError, RuntimeError, TypeError):
            return value
    return value


def _add_hparams(original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def add_hparams(
        self: Any,
        hparam_dict: Mapping[str, Any],
        metric_dict: Mapping[str, Any],
        *args: Any,
        **kw: Any,
    ) -> Any:
        with _quiet.quiet():  # its metrics go through add_scalar on an internal writer
            result = original(self, hparam_dict, metric_dict, *args, **kw)
        step = signature.bind(self, hparam_dict, metric_dict, *args, **kw).arguments.get(
            "global_step"
        )

        def record(exp: Any) -> None:
            params = {k: _plain(v) for k, v in hparam_dict.items()}
            _runs.log_params(exp, params, _warned_params)
            if metric_dict:
                exp.log_metrics(dict(metric_dict), _step(step))

        _record("hparams", record)
        return result

    return add_hparams


_WRAPPERS = {"add_scalar": _add_scalar, "add_scalars": _add_scalars, "add_hparams": _add_hparams}


def patch_writer(module: ModuleType) -> None:
    """Patch the ``SummaryWriter`` class of `module` (torch's or tensorboardX's writer module)."""
    cls = module.SummaryWriter
    with _lock:
        for name, wrap in _WRAPPERS.items():
            if (cls, name) in _originals:
                continue
            original = cls.__dict__[name]
            _originals[(cls, name)] = original
            setattr(cls, name, wrap(original))


def _quiet_lightning(module: ModuleType) -> None:
    _quiet.quiet_methods(module.TensorBoardLogger, ("log_metrics", "log_hyperparams", "log_graph"))


def _quiet_transformers(module: ModuleType) -> None:
    _quiet.quiet_methods(module.TensorBoardCallback, ("on_train_begin", "on_log"))


def _quiet_accelerate(module: ModuleType) -> None:
    _quiet.quiet_methods(module.TensorBoardTracker, ("store_init_configuration", "log"))


def unpatch() -> None:
    """Put every patched method back (what `tracelet.stop_logging` does)."""
    with _lock:
        for (cls, name), original in list(_originals.items()):
            setattr(cls, name, original)
        _originals.clear()
    _quiet.restore()


#: module name → how to patch it once imported (`tracelet.integrations._auto`).
HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "torch.utils.tensorboard.writer": patch_writer,
    "tensorboardX.writer": patch_writer,
    "lightning.pytorch.loggers.tensorboard": _quiet_lightning,
    "pytorch_lightning.loggers.tensorboard": _quiet_lightning,
    "transformers.integrations.integration_utils": _quiet_transformers,
    "accelerate.tracking": _quiet_accelerate,
}
