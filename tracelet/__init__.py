"""tracelet: experiment tracking on OpenTelemetry.

Log once with `start_logging` → `Experiment.log_metric`; every point reaches
each configured tracker (MLflow by default) exactly, and the run is an OTel
resource with instruments for your collectors.

``import tracelet`` costs the standard library only: the names that need
pydantic or the OTel SDK (`start_logging`, `Experiment`, `TraceletSettings`,
...) are imported on first use (PEP 562), so a script, a CLI or a plug-in
that only imports tracelet does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tracelet._version import __version__
from tracelet.errors import (
    BackendNotFoundError,
    BackendNotInstalledError,
    ConfigError,
    ExperimentClosedError,
    ParamConflictError,
    TraceletError,
)

if TYPE_CHECKING:
    from tracelet._experiment import BackendReport, Experiment, RunReport
    from tracelet.export import RunStatus
    from tracelet.interface import get_active_experiment, start_logging, stop_logging
    from tracelet.settings import TraceletSettings

__all__ = [
    "BackendNotFoundError",
    "BackendNotInstalledError",
    "BackendReport",
    "ConfigError",
    "Experiment",
    "ExperimentClosedError",
    "ParamConflictError",
    "RunReport",
    "RunStatus",
    "TraceletError",
    "TraceletSettings",
    "__version__",
    "get_active_experiment",
    "start_logging",
    "stop_logging",
]

#: The public names imported on first use, and the module each comes from.
_LAZY = {
    "BackendReport": "tracelet._experiment",
    "Experiment": "tracelet._experiment",
    "RunReport": "tracelet._experiment",
    "RunStatus": "tracelet.export",
    "TraceletSettings": "tracelet.settings",
    "get_active_experiment": "tracelet.interface",
    "start_logging": "tracelet.interface",
    "stop_logging": "tracelet.interface",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tracelet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
