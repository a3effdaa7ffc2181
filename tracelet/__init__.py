"""tracelet: experiment tracking on OpenTelemetry.

Log once with `start_logging` → `Experiment.log_metric`; every point reaches
each configured tracker (MLflow by default) exactly, and the run is an OTel
resource with instruments for your collectors.
"""

from tracelet._experiment import BackendReport, Experiment, RunReport
from tracelet._version import __version__
from tracelet.errors import (
    BackendNotFoundError,
    BackendNotInstalledError,
    ConfigError,
    ExperimentClosedError,
    ParamConflictError,
    TraceletError,
)
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
