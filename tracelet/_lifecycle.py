"""Process events a run must survive: SIGTERM, SIGINT and fork.

- **SIGTERM** (what schedulers, ``docker stop``, Kubernetes and SLURM send
  before killing a job): when nobody else handles it, tracelet ends the active
  run as ``KILLED`` (journal written, backends given the close deadline) and
  then lets the default action terminate the process, so the exit status
  still says "killed by SIGTERM". When a handler was installed before
  tracelet's, that handler is called instead and decides what happens (the
  run is then ended, ``KILLED``, when the process exits). A handler installed
  after tracelet's replaces it, as Python's `signal.signal` always does.
  Handlers are only installed from the main thread.
- **SIGINT** keeps Python's behaviour (``KeyboardInterrupt``): leaving the
  ``with`` block or the interpreter ends the run ``KILLED``; a notebook cell
  interrupted by it keeps its run open.
- **fork**: a forked child (a DataLoader worker) gets an inert copy of every
  open experiment: its logging calls do nothing (with one warning), it never
  writes the parent's journal, never ends the parent's run, and owns fresh
  locks, so nothing inherited from the parent's threads can hang it. The
  child's signal handlers are put back as they were before tracelet's (a
  pool terminating its workers with SIGTERM gets the behaviour it expects).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

_log = logging.getLogger("tracelet")

#: Signals tracelet handles when nobody else does.
HANDLED = (signal.SIGTERM,)


class _Forkable(Protocol):
    def _forget_in_child(self) -> None: ...


_live: weakref.WeakSet[_Forkable] = weakref.WeakSet()
_child_hooks: list[Callable[[], None]] = []
_previous: dict[int, Any] = {}
_end_active: Callable[[], bool] | None = None
#: The last signal tracelet handled in this process (a run ending after it is KILLED).
received: int | None = None
#: A signal that arrived while this very thread was ending the run; re-raised after.
_deferred: int | None = None
#: Signals whose previous handler is being called (it may call tracelet's again).
_calling: set[int] = set()


def track(run: _Forkable) -> None:
    """Make `run` inert in forked children (`tracelet._run.Run`)."""
    _live.add(run)


def on_fork_child(hook: Callable[[], None]) -> None:
    """Run `hook` in every forked child (to replace a lock, forget the active run)."""
    _child_hooks.append(hook)


def install_signal_handlers(end_active: Callable[[], bool]) -> None:
    """Install the SIGTERM handler (main thread only; once per handler chain).

    Args:
        end_active: ends the active run as KILLED; returns False when it
            could not because the calling thread is itself ending it.
    """
    global _end_active
    _end_active = end_active
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in HANDLED:
        try:
            current = signal.getsignal(signum)
        except (ValueError, OSError):  # pragma: no cover - unsupported platform
            continue
        if current is _handle or current is signal.SIG_IGN or current is None:
            continue  # ours already; deliberately ignored; or set outside Python: leave it
        try:
            signal.signal(signum, _handle)
        except (ValueError, OSError):  # pragma: no cover
            continue
        _previous[signum] = current


def _handle(signum: int, frame: FrameType | None) -> None:
    global received, _deferred
    received = signum
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous) and previous is not _handle and signum not in _calling:
        # The application's handler decides; the run ends at exit. A handler
        # that itself chains back to tracelet's lands below (no recursion).
        _calling.add(signum)
        try:
            previous(signum, frame)
        finally:
            _calling.discard(signum)
        return
    _log.warning("received %s; ending the run", signal.Signals(signum).name)
    ended = True
    if _end_active is not None:
        try:
            ended = _end_active()
        except Exception as exc:  # the process must still terminate
            _log.error("could not end the run on %s: %r", signum, exc)
    if not ended:  # this thread was interrupted while ending the run: finish that first
        _deferred = signum
        return
    _terminate(signum)


def after_end() -> None:
    """Called once a run has ended: re-raise a signal deferred while it was ending."""
    global _deferred
    signum, _deferred = _deferred, None
    if signum is not None:
        _terminate(signum)


def _terminate(signum: int) -> None:
    """Terminate the process as the signal's default action would."""
    if threading.current_thread() is not threading.main_thread():
        os.kill(os.getpid(), signum)  # the main thread's handler runs again and finds no run
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _after_fork_in_child() -> None:
    global received, _deferred
    received = _deferred = None
    _calling.clear()
    # The child has no run to end: give SIGTERM back its previous action. With a
    # Python-level handler left in place, a child blocked on a lock inherited from
    # another thread of the parent could never be terminated (multiprocessing's
    # Pool.terminate would wait on it forever).
    for signum, previous in list(_previous.items()):
        try:
            if signal.getsignal(signum) is _handle:
                signal.signal(signum, previous)
        except (ValueError, OSError, TypeError):  # pragma: no cover - not the main thread
            pass
    _previous.clear()
    for hook in list(_child_hooks):
        try:
            hook()
        except Exception as exc:  # pragma: no cover - never break the child
            _log.debug("fork hook failed: %r", exc)
    for run in list(_live):
        try:
            run._forget_in_child()
        except Exception as exc:  # pragma: no cover
            _log.debug("could not detach a run in the child: %r", exc)
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
