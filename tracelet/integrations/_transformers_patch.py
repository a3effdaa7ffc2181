"""``track_transformers``: ``report_to="tracelet"`` names `TraceletCallback` during a run.

transformers resolves ``TrainingArguments.report_to`` through its
``INTEGRATION_TO_CALLBACK`` table; while a run is active tracelet adds its
callback there under ``"tracelet"`` (and takes it out when the run ends),
so ``report_to=["tracelet"]`` works without a code change in the Trainer.
No method of transformers is patched. Imports no framework itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["HOOKS", "NAME", "register", "unpatch"]

NAME = "tracelet"
_lock = threading.Lock()
_tables: list[dict[str, Any]] = []


def register(module: ModuleType) -> None:
    """Add ``"tracelet"`` to `module`'s ``INTEGRATION_TO_CALLBACK`` (integration_utils)."""
    from tracelet.integrations.transformers import TraceletCallback

    table = module.INTEGRATION_TO_CALLBACK
    with _lock:
        if NAME not in table:
            table[NAME] = TraceletCallback
            _tables.append(table)


def unpatch() -> None:
    """Take ``"tracelet"`` out of the tables `register` added it to."""
    with _lock:
        for table in _tables:
            table.pop(NAME, None)
        _tables.clear()


HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "transformers.integrations.integration_utils": register,
}
