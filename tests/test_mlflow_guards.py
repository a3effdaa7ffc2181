"""Version guards: what the MLflow exporter takes from MLflow, and the private API it overrides.

`tracelet.exporters.mlflow` replaces MLflow's private ``RestStore._call_endpoint``
(to bound each request's timeout and retries for its own client only) and
``TrackingServiceClient._log_url``. A new MLflow may change either; these tests
fail then, naming the MLflow version, instead of the exporter failing at a user's.
"""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("mlflow")

import mlflow
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking._tracking_service.client import TrackingServiceClient
from mlflow.utils import rest_utils, validation

from tracelet.export import Batch, MetricPoint
from tracelet.exporters import mlflow as exporter

CHANGED = f"MLflow {mlflow.__version__} changed %s: update exporters/mlflow.py"


def test_the_rest_store_override_has_mlflows_signature() -> None:
    ours = exporter._bounded_store_class(RestStore)
    theirs = inspect.signature(RestStore._call_endpoint)

    def shape(f: object) -> list[tuple[str, object, object]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]  # type: ignore[arg-type]

    assert shape(ours._call_endpoint) == shape(RestStore._call_endpoint), (
        CHANGED % f"RestStore._call_endpoint{theirs}"
    )
    for name in ("_METHOD_TO_INFO", "_V3_APIS", "_V3_METHOD_TO_INFO"):
        assert hasattr(RestStore, name), CHANGED % f"RestStore.{name}"
    assert list(inspect.signature(RestStore.__init__).parameters)[:2] == ["self", "get_host_creds"]


def test_what_the_override_calls_is_still_there() -> None:
    params = inspect.signature(rest_utils.http_request).parameters
    for name in ("host_creds", "endpoint", "method", "max_retries", "backoff_factor", "timeout"):
        assert name in params, CHANGED % f"http_request (no {name!r})"
    assert list(inspect.signature(rest_utils.verify_rest_response).parameters)[:2] == [
        "response",
        "endpoint",
    ], CHANGED % "verify_rest_response"
    assert list(inspect.signature(TrackingServiceClient._log_url).parameters) == [
        "self",
        "run_id",
    ], CHANGED % "TrackingServiceClient._log_url"
    assert isinstance(inspect.getattr_static(TrackingServiceClient, "store"), property)
    assert hasattr(mlflow.MlflowClient(tracking_uri="sqlite:///:memory:"), "_tracking_client")


def test_the_exporter_splits_by_mlflows_own_limits() -> None:
    assert exporter.MLflowExporter.max_batch_points == validation.MAX_METRICS_PER_BATCH
    key = exporter.NameMapper("MLflow", exporter.INVALID_KEY_CHARS, 250, exporter.fix_path_name)
    n = validation.MAX_METRICS_PER_BATCH + 1
    batch = Batch(
        metrics=[MetricPoint("m", 1.0, i, 10**18) for i in range(n)],
        params={f"p{i}": "x" * (validation.MAX_PARAM_VAL_LENGTH + 1) for i in range(101)},
    )
    requests = exporter.batch_requests(batch, key)
    sizes = [(len(m), len(p), len(t)) for m, p, t in requests]
    assert sizes == [(n - 1, 0, 0), (1, 0, 0), (0, 100, 0), (0, 1, 0)]
    assert {len(p.value) for _, params, _ in requests for p in params} == {
        validation.MAX_PARAM_VAL_LENGTH
    }


@pytest.mark.parametrize("name", ["a@b", "/a", "a//b", "a/./b", "../x", "a/", "é:ü", "x" * 300])
def test_mapped_names_pass_mlflows_own_checks(name: str) -> None:
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    key = exporter.NameMapper(
        "MLflow", exporter.INVALID_KEY_CHARS, MAX_ENTITY_KEY_LENGTH, exporter.fix_path_name
    )
    mapped = key(name)
    assert validation.validate_param_and_metric_name(mapped), mapped
    assert not validation.path_not_unique(mapped), mapped
    assert len(mapped) <= MAX_ENTITY_KEY_LENGTH


def test_context_tags_are_mlflows_default_run_context() -> None:
    from mlflow.tracking.context.default_context import DefaultRunContext

    tags = exporter.context_tags()
    assert tags == DefaultRunContext().tags()
    assert set(tags) == {"mlflow.user", "mlflow.source.name", "mlflow.source.type"}
    assert tags["mlflow.source.type"] == "LOCAL"
