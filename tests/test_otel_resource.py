"""What a run's Resource carries for dashboards to join on (ranks, SLURM, k8s), and params."""

from __future__ import annotations

import pytest

import tracelet
from tests._helpers import QUIET
from tracelet._otel import (
    MAX_PARAM_ATTRIBUTES,
    MAX_PARAM_VALUE,
    env_resource_keys,
    export_interval_millis,
    k8s_attributes,
    launcher_attributes,
    param_attributes,
)
from tracelet.testing import capture_telemetry


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, {}),
        (
            {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8"},
            {"tracelet.rank": 3, "tracelet.local_rank": 1, "tracelet.world_size": 8},
        ),
        (  # SLURM alone (srun without torchrun)
            {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "77"},
            {
                "tracelet.rank": 5,
                "tracelet.local_rank": 1,
                "tracelet.world_size": 16,
                "tracelet.slurm.job_id": "77",
            },
        ),
        (  # torchrun under SLURM: torchrun's variables win, the job id stays
            {"RANK": "0", "SLURM_PROCID": "2", "SLURM_JOBID": "78"},
            {"tracelet.rank": 0, "tracelet.slurm.job_id": "78"},
        ),
        (  # Open MPI
            {
                "OMPI_COMM_WORLD_RANK": "2",
                "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                "OMPI_COMM_WORLD_SIZE": "4",
            },
            {"tracelet.rank": 2, "tracelet.local_rank": 0, "tracelet.world_size": 4},
        ),
        ({"RANK": "x", "WORLD_SIZE": "-1", "LOCAL_RANK": " 2 "}, {"tracelet.local_rank": 2}),
    ],
)
def test_launcher_attributes(environ: dict[str, str], expected: dict[str, object]) -> None:
    assert launcher_attributes(environ) == expected


def test_k8s_attributes_from_downward_api_variables() -> None:
    assert k8s_attributes({}) == {}
    # Short names count only inside a pod.
    assert k8s_attributes({"POD_NAME": "p", "NODE_NAME": "n"}) == {}
    pod = {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "POD_NAME": "trainer-0",
        "POD_NAMESPACE": "ml",
        "NODE_NAME": "gpu-node-01",
        "POD_UID": "u-1",
        "HOSTNAME": "ignored-when-pod-name-set",
    }
    assert k8s_attributes(pod) == {
        "k8s.pod.name": "trainer-0",
        "k8s.namespace.name": "ml",
        "k8s.node.name": "gpu-node-01",
        "k8s.pod.uid": "u-1",
    }
    # K8S_* names anywhere, and they win over the short ones.
    assert (
        k8s_attributes({**pod, "K8S_POD_NAME": "x", "K8S_NAMESPACE_NAME": "ns"})["k8s.pod.name"]
        == "x"
    )
    # Inside a pod with no pod name variable, HOSTNAME is the pod name.
    assert k8s_attributes({"KUBERNETES_SERVICE_HOST": "h", "HOSTNAME": "trainer-1"}) == {
        "k8s.pod.name": "trainer-1"
    }


def test_resource_carries_them_and_otel_resource_attributes_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("K8S_NODE_NAME", "node-a")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.node.name=from-otel,tracelet.rank=9")
    with capture_telemetry() as telemetry:
        exp = tracelet.start_logging(backend="memory", settings=QUIET)
        exp.log_metric("loss", 1.0)
        resource, _ = telemetry.collect()
    assert resource["tracelet.world_size"] == 2
    assert resource["k8s.node.name"] == "from-otel"
    assert resource["tracelet.rank"] == "9"  # as OTEL_RESOURCE_ATTRIBUTES says (a string)


def test_env_resource_keys() -> None:
    assert env_resource_keys("") == set()
    assert env_resource_keys("a=1, b.c=x=y,junk") == {"a", "b.c"}


def test_export_interval() -> None:
    assert export_interval_millis(10.0, {}) == 10_000
    assert export_interval_millis(0.5, {"OTEL_METRIC_EXPORT_INTERVAL": ""}) == 500
    assert export_interval_millis(10.0, {"OTEL_METRIC_EXPORT_INTERVAL": "1000"}) is None


def test_param_attributes_are_bounded_and_typed() -> None:
    attrs = param_attributes(
        {"lr": 0.1, "opt/name": "adam", "n": 3, "flag": True, "none": None, "long": "x" * 1000}
    )
    assert attrs == {
        "tracelet.param.lr": 0.1,
        "tracelet.param.opt.name": "adam",
        "tracelet.param.n": 3,
        "tracelet.param.flag": True,
        "tracelet.param.none": "None",
        "tracelet.param.long": "x" * MAX_PARAM_VALUE,
    }
    many = param_attributes({f"p{i}": i for i in range(1000)})
    assert len(many) == MAX_PARAM_ATTRIBUTES
    assert "tracelet.param.p0" in many


def test_params_reach_the_info_gauge() -> None:
    with capture_telemetry() as telemetry:
        exp = tracelet.start_logging(backend="memory", settings=QUIET)
        assert "tracelet.run.info" not in telemetry.collect()[1]  # no params: no series
        exp.log_params({"lr": 0.1, "model": {"depth": 18}})
        _, series = telemetry.collect()
    assert series["tracelet.run.info"] == [
        ({"tracelet.param.lr": 0.1, "tracelet.param.model.depth": 18}, 1)
    ]


def test_span_works_without_a_trace_backend_and_adds_no_tag() -> None:
    from tracelet.testing import InMemoryExporter

    exp = tracelet.start_logging(backend="memory", settings=QUIET)
    with exp.span("epoch", epoch=1) as span:
        assert span.get_span_context().trace_id == int(exp.trace_id, 16)
    assert len(exp.trace_id) == 32
    with pytest.raises(ValueError, match="non-empty name"):
        exp.span("")
    exp.end()
    assert "tracelet.trace_id" not in InMemoryExporter.runs[exp.run_id].tags
