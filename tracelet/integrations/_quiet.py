"""Keep one value from reaching tracelet twice through two framework paths.

A framework logger that writes TensorBoard event files (Lightning's
``TensorBoardLogger``, Hugging Face's ``TensorBoardCallback``, Accelerate's
``TensorBoardTracker``) goes through ``SummaryWriter``, which TensorBoard
capture records. When a tracelet logger sits beside it in the same training
(a ``TraceletLogger``, ``TraceletCallback`` or ``TraceletTracker`` that is
alive), the values already reach tracelet through that logger, so the
writes the TensorBoard logger makes are left to TensorBoard alone.

Also: a ``SummaryWriter`` method that calls another one (``add_hparams``
writes its metrics with ``add_scalar`` through a second writer) is recorded
once, by the outer call.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["enter", "is_quiet", "leave", "live", "quiet", "quiet_methods", "restore"]

_local = threading.local()

#: The tracelet loggers alive now (TraceletLogger, TraceletCallback, TraceletTracker).
live: weakref.WeakSet[Any] = weakref.WeakSet()


def is_quiet() -> bool:
    """True inside `quiet` on this thread: TensorBoard capture records nothing."""
    return getattr(_local, "depth", 0) > 0


def enter() -> int:
    """Enter a quiet section on this thread; returns the depth before (0: the outermost)."""
    depth: int = getattr(_local, "depth", 0)
    _local.depth = depth + 1
    return depth


def leave() -> None:
    """Leave the section `enter` entered."""
    _local.depth -= 1


@contextmanager
def quiet() -> Iterator[None]:
    """TensorBoard capture records nothing on this thread inside the block."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def _any_live() -> bool:
    return any(getattr(logger, "tracelet_live", True) for logger in list(live))


_INHERITED = object()  # the method was inherited: restoring it removes the wrapper
#: (class, method name) → the original function (or _INHERITED), for every method wrapped.
_wrapped: dict[tuple[type, str], Any] = {}


def quiet_methods(cls: type, names: tuple[str, ...]) -> None:
    """Wrap `cls`'s methods `names`: while a tracelet logger is alive, they run `quiet`."""
    for name in names:
        original = getattr(cls, name, None)  # its own, or inherited (wrapped on `cls` alone)
        if original is None or (cls, name) in _wrapped:
            continue

        def make(fn: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if not live or not _any_live():
                    return fn(*args, **kwargs)
                with quiet():
                    return fn(*args, **kwargs)

            return wrapper

        _wrapped[(cls, name)] = cls.__dict__.get(name, _INHERITED)
        setattr(cls, name, make(original))


def restore() -> None:
    """Put back every method `quiet_methods` wrapped."""
    for (cls, name), original in list(_wrapped.items()):
        if original is _INHERITED:
            delattr(cls, name)
        else:
            setattr(cls, name, original)
        del _wrapped[(cls, name)]
