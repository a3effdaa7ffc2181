"""The automatic hooks of a run: installed as it starts, removed as it ends.

`install` is called by `tracelet.start_logging`, `uninstall` when the active
run ends. A hook patches a framework only if the training code imported it:
a module already in ``sys.modules`` is patched at once; one imported later
during the run is patched right after its import, by a finder placed on
``sys.meta_path`` for the run (it answers ``None`` for every other name, one
dict look-up). So a run never imports torch, Lightning or transformers
itself, and a script that never imports them pays nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["install", "uninstall"]

_log = logging.getLogger("tracelet")

#: setting name → (module name → how to patch it, once it is imported).
_HOOKS: dict[str, dict[str, Callable[[ModuleType], None]]] = {}
#: setting name → what removes its patches.
_UNDO: dict[str, Callable[[], None]] = {}

_lock = threading.RLock()
#: module name → the hooks to run once it is imported (several settings may watch one module).
_watched: dict[str, list[Callable[[ModuleType], None]]] = {}
_finder: _PostImportFinder | None = None


def _tensorboard_hooks() -> None:
    from tracelet.integrations import tensorboard as tb

    _HOOKS["track_tensorboard"] = tb.HOOKS
    _UNDO["track_tensorboard"] = tb.unpatch


def _lightning_hooks() -> None:
    from tracelet.integrations import _lightning_patch as pl

    _HOOKS["track_lightning"] = pl.HOOKS
    _UNDO["track_lightning"] = pl.unpatch


def _transformers_hooks() -> None:
    from tracelet.integrations import _transformers_patch as hf

    _HOOKS["track_transformers"] = hf.HOOKS
    _UNDO["track_transformers"] = hf.unpatch


_LOADERS = {
    "track_tensorboard": _tensorboard_hooks,
    "track_lightning": _lightning_hooks,
    "track_transformers": _transformers_hooks,
}


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Patches a watched module right after it is imported; finds nothing itself."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _watched:
            return None
        for finder in sys.meta_path:  # the finders after this one find the module
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_patch(module: ModuleType) -> None:
            # The module keeps its own loader: nothing of the finder stays behind.
            module.__loader__ = loader
            if module.__spec__ is not None:
                module.__spec__.loader = loader
            exec_module(module)
            _patch(fullname, module)

        spec.loader = _Loader(loader, exec_then_patch)
        return spec


class _Loader(importlib.abc.Loader):
    """`loader`, with `exec_module` replaced (everything else delegated)."""

    def __init__(self, loader: Any, exec_module: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._exec = exec_module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create: Callable[[Any], ModuleType | None] | None = getattr(
            self._loader, "create_module", None
        )
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self._exec(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _patch(name: str, module: ModuleType) -> None:
    with _lock:
        hooks = list(_watched.get(name, ()))
    for hook in hooks:
        try:
            hook(module)
        except Exception as exc:  # a framework version we do not know: never break its import
            _log.warning("tracelet could not hook into %s: %r", name, exc)


def install(settings: Any) -> None:
    """Install the hooks each ``track_*`` setting of `settings` turns on."""
    global _finder
    with _lock:
        _uninstall_locked()
        for setting, load in _LOADERS.items():
            if getattr(settings, setting, False):
                if setting not in _HOOKS:
                    load()
                for name, hook in _HOOKS[setting].items():
                    _watched.setdefault(name, []).append(hook)
        if not _watched:
            return
        for name in list(_watched):
            module = sys.modules.get(name)
            if module is not None:
                _patch(name, module)
        _finder = _PostImportFinder()
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Remove every hook `install` put in place (harmless when there is none)."""
    with _lock:
        _uninstall_locked()


def _uninstall_locked() -> None:
    global _finder
    if _finder is not None:
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass
        _finder = None
    if _watched:
        _watched.clear()
        for undo in _UNDO.values():
            try:
                undo()
            except Exception as exc:
                _log.warning("tracelet could not remove a framework hook: %r", exc)
