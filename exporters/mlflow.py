"""MLflow exporter: one MLflow run per tracelet run, written with ``MlflowClient.log_batch``.

- ``project`` → MLflow experiment (created when missing), ``exp_name`` → run name.
- Metrics keep their step and the wall-clock time of the `log_metric` call.
- Tracking URI: ``config["tracking_uri"]``, else ``MLFLOW_TRACKING_URI``, else
  MLflow's default local store (``sqlite:///mlflow.db`` in the working directory).
- A batch retried after a half-applied request is harmless: MLflow's SQL store
  skips metrics whose (key, value, timestamp, step) it already holds.
- MLflow's SQL stores keep NaN but store ±inf as ±1.797e308 (the float limits).
"""

from __future__ import annotations

import getpass
import sys
from typing import Any

from tracelet.exporters._translate import NameMapper, chunks, tag_dict, truncate

from tracelet.export import (
    Batch,
    ExporterOptions,
    ExportResult,
    RunInfo,
    RunStatus,
    TrackerExporter,
)

# MLflow's own limits (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
INVALID_KEY_CHARS = r"[^\w./\- :]"


class MLflowOptions(ExporterOptions):
    """What ``config`` may carry for MLflow."""

    #: Where to log: ``sqlite:///path.db``, ``http://host:port``, ``databricks``, ...
    tracking_uri: str | None = None
    #: Run tags: a dict, or a list of labels (stored with an empty value).
    tags: dict[str, str] | list[str] | None = None
    #: The run description shown in the MLflow UI.
    description: str | None = None
    #: Log into this existing MLflow run instead of creating one.
    run_id: str | None = None


def batch_requests(
    batch: Batch, key: NameMapper
) -> list[tuple[list[Any], list[Any], list[Any]]]:
    """Translate a batch into ``log_batch`` requests within MLflow's limits."""
    from mlflow.entities import Metric, Param, RunTag

    metrics = [
        Metric(key(p.name), p.value, p.timestamp_ns // 1_000_000, p.step) for p in batch.metrics
    ]
    params = [
        Param(key(k), truncate("MLflow", "param", k, "None" if v is None else v, MAX_PARAM_VALUE))
        for k, v in batch.params.items()
    ]
    tags = [
        RunTag(key(k), truncate("MLflow", "tag", k, v, MAX_TAG_VALUE))
        for k, v in batch.tags.items()
    ]
    requests: list[tuple[list[Any], list[Any], list[Any]]] = []
    for chunk in chunks(metrics, MAX_METRICS_PER_BATCH):
        requests.append((list(chunk), [], []))
    for chunk in chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
        requests.append(([], list(chunk), []))
    for chunk in chunks(tags, MAX_PARAMS_TAGS_PER_BATCH):
        requests.append(([], [], list(chunk)))
    return requests


class MLflowExporter(TrackerExporter):
    """Backend ``"mlflow"``."""

    name = "mlflow"
    options = MLflowOptions
    requires = ("mlflow",)
    extra = "mlflow"
    max_batch_points = MAX_METRICS_PER_BATCH
    config: MLflowOptions

    def start(self, run: RunInfo) -> dict[str, Any]:
        from mlflow import MlflowClient

        self._key = NameMapper("MLflow", INVALID_KEY_CHARS, MAX_KEY)
        self._client = MlflowClient(tracking_uri=self.config.tracking_uri)
        resume = (run.resume or {}).get("run_id") or self.config.run_id
        if resume:
            self._run_id = resume
            self._client.update_run(resume, status="RUNNING")
        else:
            tags = {
                "tracelet.run_id": run.run_id,
                "mlflow.runName": run.name,
                "mlflow.source.name": sys.argv[0] if sys.argv and sys.argv[0] else "python",
                "mlflow.source.type": "LOCAL",
                "mlflow.user": _user(),
                **tag_dict(self.config.tags),
            }
            if self.config.description:
                tags["mlflow.note.content"] = self.config.description
            created = self._client.create_run(
                self._experiment_id(run.project), run_name=run.name, tags=tags
            )
            self._run_id = created.info.run_id
        return {"run_id": self._run_id, "tracking_uri": self._client.tracking_uri}

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        try:
            return str(self._client.create_experiment(name))
        except MlflowException:  # created meanwhile by another process
            experiment = self._client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    @property
    def run_id(self) -> str:
        """The MLflow run id (after `start`)."""
        return self._run_id

    def export(self, batch: Batch, timeout_millis: float = 10_000, **kwargs: Any) -> ExportResult:
        for metrics, params, tags in batch_requests(batch, self._key):
            self._client.log_batch(self._run_id, metrics=metrics, params=params, tags=tags)
        return ExportResult.SUCCESS

    def shutdown(
        self, timeout_millis: float = 30_000, status: RunStatus = RunStatus.FINISHED, **kwargs: Any
    ) -> None:
        if getattr(self, "_run_id", None) is not None:
            self._client.set_terminated(self._run_id, status=status.value)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"
