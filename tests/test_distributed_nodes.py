"""Two "nodes" on one machine, the production shape: one job, one MLflow run.

Two ``torchrun --nnodes=2 --nproc_per_node=2`` launches meet at a c10d
rendezvous on 127.0.0.1, each in its own working directory (its own
``.tracelet``, as on separate machines). They log into one ``mlflow server``
backed by PostgreSQL (a throwaway cluster started here on 127.0.0.1), every
rank in the all-ranks mode, and each node's ranks send OTLP to that node's
own receiver (standing in for the node's collector, ``otel-collector/agent.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._distributed import finish, reports, torchrun
from tests._otlp_receiver import OTLPReceiver, attributes
from tests._reliability import assert_exactly_once, mlflow_history, mlflow_run
from tests._servers import MlflowServer, PostgresServer, free_port, postgres_bin

STEPS = 100
NODES, PER_NODE = 2, 2


@pytest.fixture(scope="module")
def mlflow_on_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with its tracking store in PostgreSQL; yields its URL."""
    pytest.importorskip("psycopg2")
    if postgres_bin("initdb") is None:
        pytest.skip("PostgreSQL is not installed (scripts/install-system-deps.sh)")
    pg = PostgresServer().start()
    try:
        root = tmp_path_factory.mktemp("mlflow-pg")
        server = MlflowServer(root, backend_uri=pg.create_database("mlflow")).start()
        try:
            yield server.url
        finally:
            server.stop()
    finally:
        pg.stop()


def _by_rank(receiver: OTLPReceiver) -> dict[int, dict[str, Any]]:
    """Per rank: its Resource and the names of the metrics it exported."""
    out: dict[int, dict[str, Any]] = {}
    for request in receiver.of("metrics"):
        for rm in request.message.resource_metrics:
            resource = attributes(rm.resource.attributes)
            entry = out.setdefault(
                resource["tracelet.rank"], {"resource": resource, "names": set()}
            )
            entry["names"].update(m.name for sm in rm.scope_metrics for m in sm.metrics)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["zero", "all"])
def test_two_nodes_one_run_system_metrics_once_per_node(
    tmp_path: Path, mlflow_on_postgres: str, mode: str
) -> None:
    pytest.importorskip("torch")
    uri = mlflow_on_postgres
    port = free_port()
    receivers, procs = [], []
    try:
        for node in range(NODES):
            receiver = OTLPReceiver()
            receiver.start_http()
            receivers.append(receiver)
            cwd = tmp_path / f"node{node}"
            cwd.mkdir()
            env = {
                "TEST_STEPS": str(STEPS),
                "TEST_RANKS": mode,
                "TEST_BACKENDS": "mlflow,otlp",
                "TEST_SYSTEM": "1",
                "TEST_INTERVAL": "1",
                "MLFLOW_TRACKING_URI": uri,
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint or "",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            }
            procs.append(
                torchrun(
                    cwd,
                    f"--nnodes={NODES}",
                    f"--nproc_per_node={PER_NODE}",
                    "--rdzv-backend=c10d",
                    f"--rdzv-endpoint=127.0.0.1:{port}",
                    f"--rdzv-id=two-node-job-{mode}",
                    env=env,
                )
            )
        for proc in procs:
            finish(proc)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for receiver in receivers:
            receiver.stop()
    got = [reports(tmp_path / f"node{n}") for n in range(NODES)]
    ranks = {r: rep for node in got for r, rep in node.items()}
    assert sorted(ranks) == list(range(NODES * PER_NODE))
    [run_id] = {rep["run_id"] for rep in ranks.values()}
    assert all(rep["complete"] for rep in ranks.values())
    leaders = sorted(r for r, rep in ranks.items() if rep["local_rank"] == 0)
    assert len(leaders) == NODES
    assert all(ranks[r]["host_samples"] is None for r in ranks if r not in leaders)

    # MLflow on PostgreSQL: one run for the job.
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`tracelet.run_id` = '{run_id}'")
    assert len(runs) == 1
    run = mlflow_run(uri, run_id)
    assert run.info.status == "FINISHED"
    # Every rank's points once ("all"), or rank 0's alone ("zero").
    writers = sorted(ranks) if mode == "all" else [0]
    for rank in writers:
        key = f"rank{rank}/loss" if mode == "all" else "loss"
        history = mlflow_history(uri, run.info.run_id, key)
        assert_exactly_once([s for s, _, _ in history], range(STEPS), f"rank {rank}")
        assert [v for _, v, _ in history] == [float(rank * 1000 + s) for s in range(STEPS)]
    # System metrics: sampled once per node (its local rank 0), every sample once;
    # with "zero", only rank 0's node reaches the tracker.
    if mode == "all":
        sampled = {k.split("/")[0] for k in run.data.metrics if k.split("/")[1:2] == ["system"]}
        assert sampled == {f"rank{r}" for r in leaders}
        keys = {r: f"rank{r}/system/cpu_utilization_percentage" for r in leaders}
    else:
        assert all(k.startswith("system/") or k in ("loss", "rank_sum") for k in run.data.metrics)
        keys = {0: "system/cpu_utilization_percentage"}
    for r, key in keys.items():
        steps = [s for s, _, _ in mlflow_history(uri, run.info.run_id, key)]
        assert_exactly_once(steps, range(ranks[r]["host_samples"]), key)

    # OTLP: each node's receiver heard its own two ranks, all with the job's run id;
    # host metrics come from the node's local rank 0 only.
    for node, receiver in enumerate(receivers):
        heard = _by_rank(receiver)
        assert sorted(heard) == sorted(got[node])
        for rank, entry in heard.items():
            assert entry["resource"]["tracelet.run_id"] == run_id
            assert ("system.cpu.utilization" in entry["names"]) == (rank in leaders)
    print(
        f"\n{mode}: {NODES} nodes x {PER_NODE} ranks, one MLflow run on PostgreSQL; "
        f"host metrics sampled by ranks {leaders}"
    )
