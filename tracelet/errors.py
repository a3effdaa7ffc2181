"""The exceptions tracelet raises.

Configuration mistakes raise at the call that made them; export failures never
reach the training loop (they are logged, counted and reported at close).
"""

from __future__ import annotations

__all__ = [
    "BackendNotFoundError",
    "BackendNotInstalledError",
    "ConfigError",
    "ExperimentClosedError",
    "ParamConflictError",
    "TraceletError",
]


class TraceletError(Exception):
    """Base class of every error tracelet raises on purpose."""


class BackendNotFoundError(TraceletError, ValueError):
    """A backend name that no installed exporter provides."""


class BackendNotInstalledError(TraceletError, ImportError):
    """A known backend whose SDK (its extra) is not installed."""


class ConfigError(TraceletError, ValueError):
    """A `config` option or setting that is not allowed."""


class ParamConflictError(TraceletError, ValueError):
    """A parameter logged again with a different value."""


class ExperimentClosedError(TraceletError, RuntimeError):
    """Logging into an experiment that has already ended."""
