"""``track_lightning``: a ``Trainer`` built during a run gets a `TraceletLogger`.

Imports no framework: the patch is applied only to the ``Trainer`` of a
Lightning the training code imported (`tracelet.integrations._auto`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["HOOKS", "unpatch"]

_lock = threading.Lock()
_originals: dict[Any, Any] = {}


def _add_logger(trainer: Any) -> None:
    from tracelet import get_active_experiment

    if get_active_experiment() is None:
        return
    loggers = list(trainer.loggers)
    if not loggers:  # logger=False: the user asked for no logger at all
        return
    from tracelet.integrations.lightning import TraceletLogger

    if any(isinstance(logger, TraceletLogger) for logger in loggers):
        return
    trainer.loggers = [*loggers, TraceletLogger()]


def patch_trainer(module: ModuleType) -> None:
    """Wrap ``Trainer.__init__`` of `module` (``lightning.pytorch.trainer.trainer``)."""
    cls: Any = module.Trainer
    with _lock:
        if cls in _originals:
            return
        original = cls.__dict__["__init__"]

        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            _add_logger(self)

        _originals[cls] = original
        cls.__init__ = __init__


def unpatch() -> None:
    """Put ``Trainer.__init__`` back."""
    with _lock:
        for cls, original in _originals.items():
            cls.__init__ = original
        _originals.clear()


HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "lightning.pytorch.trainer.trainer": patch_trainer,
    "pytorch_lightning.trainer.trainer": patch_trainer,
}
