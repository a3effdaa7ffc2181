r"""MLflow exporter: one MLflow run per tracelet run, written with ``MlflowClient.log_batch``.

- ``project`` → MLflow experiment (created when missing), ``exp_name`` → run name.
- Metrics keep their step and the wall-clock time of the `log_metric` call.
- Tracking URI: ``config["tracking_uri"]``, else ``MLFLOW_TRACKING_URI``, else
  MLflow's default local store (``sqlite:///mlflow.db`` in the working directory).
- A batch retried after a half-applied request is harmless: MLflow's SQL store
  skips metrics whose (key, value, timestamp, step) it already holds.
- MLflow's SQL stores keep NaN but store ±inf as ±1.797e308 (the float limits).
- Names MLflow refuses are mapped, with one warning each: characters other
  than letters and digits of any script (``\w``) and ``_./\- :`` become
  ``_``; path-like names lose their empty and
  ``.`` segments (``/a`` → ``a``, ``a//b`` and ``a/./b`` → ``a/b``, ``a/`` →
  ``a``) and ``..`` becomes ``__``; names are cut to 250
  characters; two names that would map to the same key stay apart (``_2``).
- Against a tracking server, each HTTP request waits at most ``http_timeout``
  seconds and MLflow's own retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, minutes
  by default) are replaced by ``http_max_retries`` for this exporter's client
  only: tracelet retries a failed batch itself, with backoff, from the journal.
  The environment and the user's own MLflow clients are left alone.
- Artifacts (`tracelet.export.Artifact`) go up with ``MlflowClient.log_artifact``
  / ``log_artifacts`` under their name's folder (a directory under its name);
  an image or figure logged with an iteration goes through
  ``MlflowClient.log_image(key=..., step=...)`` (the UI's image charts), with
  the call's time as its timestamp. An upload retried, or replayed by
  ``tracelet sync``, overwrites the same path with the same content; an image
  at a step is looked for first (its file name holds key, step and time), so
  it is never stored twice.
- When resumed (``tracelet sync``), the run is reopened in the store it was
  created in (the absolute tracking URI kept in its resume state), unless
  ``tracking_uri`` is given again.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import Field, SecretStr, field_validator

from tracelet.export import (
    Artifact,
    Batch,
    ExporterOptions,
    ExportResult,
    RunInfo,
    RunStatus,
    TrackerExporter,
)
from tracelet.exporters._artifact_files import media_key, staged
from tracelet.exporters._translate import NameMapper, chunks, tag_dict, truncate
from tracelet.toolkit import redact_url

_log = logging.getLogger("tracelet")

#: Seconds a rank waits, polling, for rank 0 to create the job's MLflow run
#: (``RunInfo.attach == "join"``) before the delivery retries with backoff.
JOIN_WAIT = 60.0

# MLflow's limits are read from mlflow.utils.validation when used (MLflow is
# imported by the exporter, never at module import). Its name rule is a regex
# inside validate_param_and_metric_name, not a constant: this is its complement.
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
    #: Seconds one HTTP request to a tracking server may take.
    http_timeout: float = Field(default=30.0, gt=0)
    #: MLflow's own retries of one HTTP request (tracelet retries failed batches itself).
    http_max_retries: int = Field(default=0, ge=0, le=10)
    #: Bearer token for the tracking server (else ``MLFLOW_TRACKING_TOKEN``); never stored.
    tracking_token: SecretStr | None = None

    @field_validator("tracking_uri")
    @classmethod
    def _absolute(cls, uri: str | None) -> str | None:
        """A relative local store (``sqlite:///mlflow.db``, ``./mlruns``) made absolute.

        So the run keeps writing where it started, and ``tracelet sync`` finds
        it from another directory.
        """
        return None if uri is None else absolute_uri(uri)


def absolute_uri(uri: str) -> str:
    """`uri` with a relative sqlite or file path resolved against the working directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///") :]
        if path and not path.startswith(":memory:"):
            return "sqlite:///" + os.path.abspath(path)
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return "file://" + os.path.abspath(uri[len("file:") :])
    if "://" not in uri and uri not in ("databricks", "databricks-uc", "uc") and ":" not in uri:
        return os.path.abspath(uri)  # a plain directory: MLflow's file store
    return uri


def fix_path_name(name: str) -> str:
    """A name MLflow accepts as a path: empty and ``.`` segments dropped, ``..`` as ``__``."""
    parts = ["__" if p == ".." else p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts) or "_"


def batch_requests(batch: Batch, key: NameMapper) -> list[tuple[list[Any], list[Any], list[Any]]]:
    """Translate a batch into ``log_batch`` requests within MLflow's limits."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils import validation as limits

    metrics = [
        Metric(key(p.name), p.value, p.timestamp_ns // 1_000_000, p.step) for p in batch.metrics
    ]
    params = [
        Param(
            key(k),
            truncate("MLflow", "param", k, "None" if v is None else v, limits.MAX_PARAM_VAL_LENGTH),
        )
        for k, v in batch.params.items()
    ]
    tags = [
        RunTag(key(k), truncate("MLflow", "tag", k, v, limits.MAX_TAG_VAL_LENGTH))
        for k, v in batch.tags.items()
    ]
    requests: list[tuple[list[Any], list[Any], list[Any]]] = []
    requests += [(list(c), [], []) for c in chunks(metrics, limits.MAX_METRICS_PER_BATCH)]
    requests += [([], list(c), []) for c in chunks(params, limits.MAX_PARAMS_TAGS_PER_BATCH)]
    requests += [([], [], list(c)) for c in chunks(tags, limits.MAX_PARAMS_TAGS_PER_BATCH)]
    return requests


class MLflowExporter(TrackerExporter):
    """Backend ``"mlflow"``."""

    name = "mlflow"
    options = MLflowOptions
    requires = ("mlflow",)
    extra = "mlflow"
    #: MLflow's MAX_METRICS_PER_BATCH, known before MLflow is imported (a test
    #: checks it against MLflow's); requests are split by MLflow's own value.
    max_batch_points = 1000
    config: MLflowOptions

    def start(self, run: RunInfo) -> dict[str, Any]:
        with quiet_store_setup():  # the client creates (or migrates) a local store here
            return self._start(run)

    def _start(self, run: RunInfo) -> dict[str, Any]:
        from mlflow import MlflowClient
        from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

        self._key = NameMapper(
            "MLflow", INVALID_KEY_CHARS, MAX_ENTITY_KEY_LENGTH, fix=fix_path_name
        )
        saved_uri = (run.resume or {}).get("tracking_uri")
        self._client = MlflowClient(tracking_uri=self.config.tracking_uri or saved_uri)
        self._http = _bound_http(self._client, self.config)
        resume = (run.resume or {}).get("run_id") or self.config.run_id
        if not resume and run.attach != "new":
            resume = self._find(run)  # the job's run, opened by rank 0 or an earlier part
        #: An image at a step may be stored already (resumed, or an upload failed): look first.
        self._unsure = bool(resume)
        if resume:
            self._run_id = resume
            self._client.update_run(resume, status="RUNNING")
        else:
            tags = {
                "tracelet.run_id": run.run_id,
                "mlflow.runName": run.name,
                **context_tags(),
                **tag_dict(self.config.tags),
            }
            if self.config.description:
                tags["mlflow.note.content"] = self.config.description
            created = self._client.create_run(
                self._experiment_id(run.project), run_name=run.name, tags=tags
            )
            self._run_id = created.info.run_id
        return {"run_id": self._run_id, "tracking_uri": absolute_uri(self._client.tracking_uri)}

    def _find(self, run: RunInfo) -> str | None:
        """The MLflow run tagged with `run.run_id`, oldest first; None when there is none.

        Raises:
            LookupError: ``attach="join"`` and rank 0 has not created it yet
                (the delivery retries, with backoff, until it has).
        """
        deadline = time.monotonic() + (JOIN_WAIT if run.attach == "join" else 0.0)
        while True:
            experiment = self._client.get_experiment_by_name(run.project)
            runs: list[Any] = []
            if experiment is not None:
                runs = self._client.search_runs(
                    [experiment.experiment_id],
                    filter_string=f"tags.`tracelet.run_id` = '{run.run_id}'",
                    order_by=["attributes.start_time ASC"],
                    max_results=1,
                )
            if runs:
                found = str(runs[0].info.run_id)
                _log.info("continuing MLflow run %s of tracelet run %s", found, run.run_id)
                return found
            if run.attach != "join":
                return None
            if time.monotonic() >= deadline:
                raise LookupError(
                    f"the MLflow run of tracelet run {run.run_id} does not exist yet "
                    "(global rank 0 creates it)"
                )
            time.sleep(0.5)

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
        if self._http is not None:
            self._http.timeout = min(self.config.http_timeout, max(1.0, timeout_millis / 1000))
        for metrics, params, tags in batch_requests(batch, self._key):
            self._client.log_batch(self._run_id, metrics=metrics, params=params, tags=tags)
        for artifact in batch.artifacts:
            try:
                self._upload(artifact)
            except BaseException:
                self._unsure = True
                raise
        return ExportResult.SUCCESS

    def _upload(self, artifact: Artifact) -> None:
        client, run_id = self._client, self._run_id
        if artifact.is_image and artifact.step is not None:
            # Past the first image the run does not hold, none is held: stop looking.
            self._unsure = self._log_image(artifact)
            return
        folder = posixpath.dirname(artifact.name) or None
        with staged(artifact) as path:
            if artifact.is_dir:
                client.log_artifacts(run_id, str(path), artifact_path=artifact.name)
            else:
                client.log_artifact(run_id, str(path), artifact_path=folder)

    def _log_image(self, artifact: Artifact) -> bool:
        """``log_image`` at the artifact's step, unless this exact image is stored already.

        Returns True when it was stored already (looked for only while unsure).

        MLflow's image logging needs Pillow and numpy; without them (``mlflow-skinny``)
        the image is uploaded as a file under its name instead, with a warning.
        """
        try:
            import numpy  # noqa: F401  # MLflow's log_image imports it
            from PIL import Image
        except ImportError as exc:
            if not getattr(self, "_warned_media", False):
                self._warned_media = True
                _log.warning(
                    "MLflow logs images at a step with Pillow and numpy (%s); images are "
                    "uploaded as files instead: pip install 'tracelet[media]'",
                    exc,
                )
            with staged(artifact) as path:
                folder = posixpath.dirname(artifact.name) or None
                self._client.log_artifact(self._run_id, str(path), artifact_path=folder)
            return False

        key = media_key(artifact.name)
        timestamp = artifact.timestamp_ns // 1_000_000
        if self._unsure:
            prefix = f"images/{key.replace('/', '~')}+step+{artifact.step}+timestamp+{timestamp}+"
            stored = self._client.list_artifacts(self._run_id, "images")
            if any(f.path.startswith(prefix) and f.path.endswith(".png") for f in stored):
                return True
        with Image.open(artifact.local_path()) as image:
            image.load()
            self._client.log_image(
                self._run_id,
                image,
                key=key,
                step=artifact.step,
                timestamp=timestamp,
                synchronous=True,
            )
        return False

    def shutdown(
        self, timeout_millis: float = 30_000, status: RunStatus = RunStatus.FINISHED, **kwargs: Any
    ) -> None:
        if getattr(self, "_run_id", None) is not None:
            self._client.set_terminated(self._run_id, status=status.value)


def _bound_http(client: Any, config: MLflowOptions) -> Any:
    """Give `client` its own REST store with bounded HTTP; None for non-HTTP stores.

    MLflow reads its retry policy from the environment at every request and
    caches one store per URI for the whole process, so neither can be changed
    without changing them for the user's code too. Instead this client gets a
    private `RestStore` (same host and credentials) whose requests pass
    ``timeout`` and ``max_retries`` explicitly.
    """
    try:
        from mlflow.store.tracking.rest_store import RestStore
        from mlflow.tracking._tracking_service.client import TrackingServiceClient

        tracking = client._tracking_client
        store = tracking.store
    except (ImportError, AttributeError):  # pragma: no cover - another MLflow layout
        return None
    if type(store) is not RestStore:  # local stores, Databricks: nothing to bound
        return None
    bounded = _bounded_store_class(RestStore)(
        store.get_host_creds,
        timeout=config.http_timeout,
        max_retries=config.http_max_retries,
        token=config.tracking_token,
    )

    class _PinnedTrackingClient(TrackingServiceClient):
        def __init__(self, tracking_uri: str) -> None:
            TrackingServiceClient.__init__(self, tracking_uri)  # typed here, not in MLflow

        @property
        def store(self) -> Any:
            return bounded

        def _log_url(self, run_id: str) -> None:
            """MLflow's "View run" lines, without the credentials a tracking URI may hold."""
            from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

            if MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get():
                return
            run = bounded.get_run(run_id)
            host = redact_url(bounded.get_host_creds().host.rstrip("/"))
            experiment_url = f"{host}/#/experiments/{run.info.experiment_id}"
            run_url = f"{experiment_url}/runs/{run_id}"
            sys.stdout.write(f"🏃 View run {run.info.run_name} at: {run_url}\n")
            sys.stdout.write(f"🧪 View experiment at: {experiment_url}\n")

    client._tracking_client = _PinnedTrackingClient(tracking.tracking_uri)
    return bounded


def _bounded_store_class(rest_store: type[Any]) -> type[Any]:
    class BoundedRestStore(rest_store):  # type: ignore[misc]
        """A `RestStore` whose requests carry this exporter's timeout and retries."""

        def __init__(
            self, get_host_creds: Any, *, timeout: float, max_retries: int, token: Any
        ) -> None:
            super().__init__(get_host_creds)
            self.timeout = timeout
            self.max_retries = max_retries
            self._token = token

        def _call_endpoint(
            self,
            api: Any,
            json_body: Any = None,
            endpoint: Any = None,
            retry_timeout_seconds: Any = None,
            response_proto: Any = None,
        ) -> Any:
            from mlflow.utils.proto_json_utils import parse_dict
            from mlflow.utils.rest_utils import http_request, verify_rest_response

            v3 = api in self._V3_APIS
            path, method = (self._V3_METHOD_TO_INFO if v3 else self._METHOD_TO_INFO)[api]
            validate = getattr(self, "_validate_workspace_support_if_specified", None)
            if validate is not None:
                validate()
            response_proto = response_proto or api.Response()
            body = json.loads(json_body) if json_body is not None else None
            creds = self.get_host_creds()
            if self._token is not None:
                creds.token = self._token.get_secret_value()
            response = http_request(
                creds,
                endpoint or path,
                method,
                max_retries=self.max_retries,
                backoff_factor=0,
                timeout=self.timeout,
                **({"params": body} if method == "GET" else {"json": body}),
            )
            response = verify_rest_response(response, endpoint or path)
            if response.status_code == 204:
                return response_proto
            parse_dict(js_dict=json.loads(response.text), message=response_proto)
            return response_proto

    return BoundedRestStore


def context_tags() -> dict[str, str]:
    """The tags ``mlflow.start_run`` takes from MLflow's default run context.

    ``mlflow.user`` (``MLFLOW_TRACKING_USERNAME``, else the login name),
    ``mlflow.source.name`` (the script) and ``mlflow.source.type``. Only this
    provider of MLflow's ``resolve_tags``: its git provider would run git even
    with ``track_git=False`` and store the remote URL as it is, with any token
    in it (tracelet records git itself, credentials removed, as ``git.*``
    tags), and the Databricks providers describe a notebook or job, not a
    run opened through a client.
    """
    from mlflow.tracking.context.default_context import DefaultRunContext
    from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    try:
        return {str(k): str(v) for k, v in DefaultRunContext().tags().items()}
    except (KeyError, OSError):  # no login name in some containers: getpass raises there
        source = sys.argv[0] if sys.argv and sys.argv[0] else "<console>"
        return {MLFLOW_USER: "unknown", MLFLOW_SOURCE_NAME: source, MLFLOW_SOURCE_TYPE: "LOCAL"}


#: Loggers that tell, at INFO, how MLflow creates or migrates a local SQL store
#: ("Creating initial MLflow database tables...", "Updating database tables"):
#: MLflow gives its loggers their own stderr handler, so these reach the
#: user's terminal at every new store. (Alembic's own lines MLflow already
#: keeps at WARNING, by configuring the ``alembic`` logger when it migrates.)
STORE_SETUP_LOGGERS = ("mlflow.store.db.utils",)
_store_setup = threading.Lock()


@contextmanager
def quiet_store_setup() -> Iterator[None]:
    """Raise `STORE_SETUP_LOGGERS` to WARNING meanwhile (their warnings still show).

    A logger the user has given a level of their own is left as it is.
    """
    with _store_setup:
        raised = [
            logger
            for logger in map(logging.getLogger, STORE_SETUP_LOGGERS)
            if logger.level == logging.NOTSET
        ]
        for logger in raised:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger in raised:
                logger.setLevel(logging.NOTSET)
