"""A real torchrun job (3 CPU ranks, gloo): one run per job, whatever the number of ranks.

Every rank calls `start_logging` the same way. Read back from the real
trackers: MLflow (its store), W&B (the offline ``.wandb`` files) and ClearML
(the offline sessions), and from a real OTLP receiver every rank exports to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests._distributed import finish, reports, torchrun
from tests._otlp_receiver import OTLPReceiver, attributes
from tests._reliability import assert_exactly_once, mlflow_history, mlflow_run
from tracelet.testing import offline_env, read_clearml_session, read_wandb_run

STEPS = 200
RANKS = 3


def _launch(
    tmp: Path, ranks: str, mlflow_uri: str, receiver: OTLPReceiver
) -> dict[int, dict[str, Any]]:
    pytest.importorskip("torch")
    pytest.importorskip("wandb")
    pytest.importorskip("clearml")
    env = {
        **offline_env(tmp),
        "TEST_STEPS": str(STEPS),
        "TEST_RANKS": ranks,
        "TEST_BACKENDS": "mlflow,wandb,clearml,otlp",
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint or "",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    proc = torchrun(tmp, "--standalone", f"--nproc_per_node={RANKS}", env=env)
    out = finish(proc)
    got = reports(tmp)
    assert all(r["complete"] for r in got.values()), f"{got}\n{out[-6000:]}"
    assert sorted(got) == list(range(RANKS))
    run_ids = {r["run_id"] for r in got.values()}
    assert len(run_ids) == 1, f"the ranks disagree on the run id: {run_ids}"
    # Every rank's OTel Resource carries the job's run id and the rank.
    resources = receiver.resources("metrics")
    seen = {(r["tracelet.run_id"], r["tracelet.rank"]) for r in resources}
    [run_id] = run_ids
    assert seen == {(run_id, rank) for rank in range(RANKS)}
    assert len({r["service.instance.id"] for r in resources}) == RANKS
    # ... and every rank's OTel side has the latest value of what it logged.
    names: dict[int, set[str]] = {}
    for request in receiver.of("metrics"):
        for rm in request.message.resource_metrics:
            rank = attributes(rm.resource.attributes)["tracelet.rank"]
            names.setdefault(rank, set()).update(
                m.name for sm in rm.scope_metrics for m in sm.metrics
            )
    assert all({"loss", "rank_sum"} <= names[rank] for rank in range(RANKS)), names
    return got


def _wandb_runs(tmp: Path) -> list[Any]:
    import wandb

    wandb.teardown()
    return [read_wandb_run(p) for p in sorted((tmp / "wandb").glob("**/*.wandb"))]


def _clearml_sessions(tmp: Path) -> list[Any]:
    folders = [p for p in (tmp / "clearml" / "offline").iterdir() if p.is_dir()]
    return [read_clearml_session(p) for p in folders]


def _expected(rank: int) -> list[tuple[int, float]]:
    return [(step, float(rank * 1000 + step)) for step in range(STEPS)]


@pytest.mark.slow
def test_rank_zero_writes_one_run_per_tracker(
    tmp_path: Path, mlflow_uri: str, receiver: OTLPReceiver
) -> None:
    got = _launch(tmp_path, "zero", mlflow_uri, receiver)
    run_id = got[0]["run_id"]
    assert got[0]["backends"] == ["mlflow", "wandb", "clearml"] and got[0]["complete"]
    assert all(got[r]["backends"] == [] for r in (1, 2))  # the others write no tracker

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    all_runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(all_runs) == 1
    run = mlflow_run(mlflow_uri, run_id)
    assert run.info.status == "FINISHED"
    history = mlflow_history(mlflow_uri, run.info.run_id, "loss")
    assert_exactly_once([s for s, _, _ in history], range(STEPS), "mlflow loss")
    assert [(s, v) for s, v, _ in history] == _expected(0)  # rank 0's points
    assert set(run.data.metrics) == {"loss", "rank_sum"}
    assert run.data.params == {"lr": "0.1", "world_size": str(RANKS)}

    [wandb_run] = _wandb_runs(tmp_path)
    assert wandb_run.run_id == run_id and wandb_run.exit_code == 0
    assert wandb_run.history("loss") == _expected(0)
    assert wandb_run.history("rank_sum") == [(s, 3.0) for s in range(STEPS)]  # 0+1+2

    [session] = _clearml_sessions(tmp_path)
    assert session.properties["tracelet_run_id"] == run_id
    assert session.properties["tracelet_status"] == "FINISHED"
    assert session.scalars[("loss", "loss")] == _expected(0)
    print(f"\nmlflow, wandb, clearml: one run each, {STEPS} points of rank 0 each, once")


@pytest.mark.slow
def test_all_ranks_mode_every_rank_distinguishable(
    tmp_path: Path, mlflow_server: str, receiver: OTLPReceiver
) -> None:
    got = _launch(tmp_path, "all", mlflow_server, receiver)
    run_id = got[0]["run_id"]
    assert all(r["complete"] for r in got.values())

    # MLflow: one run; each rank's series under rank<N>/.
    run = mlflow_run(mlflow_server, run_id)
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) == {
        f"rank{r}/{m}" for r in range(RANKS) for m in ("loss", "rank_sum")
    }
    for rank in range(RANKS):
        history = mlflow_history(mlflow_server, run.info.run_id, f"rank{rank}/loss")
        assert_exactly_once([s for s, _, _ in history], range(STEPS), f"rank {rank}")
        assert [(s, v) for s, v, _ in history] == _expected(rank)
    assert run.data.params == {"lr": "0.1", "world_size": str(RANKS)}  # rank 0's

    # W&B: one run per rank (offline, a run has one writer), grouped by the job.
    runs = {r.run_id: r for r in _wandb_runs(tmp_path)}
    assert set(runs) == {run_id, f"{run_id}-rank1", f"{run_id}-rank2"}
    for rank in range(RANKS):
        w = runs[run_id if rank == 0 else f"{run_id}-rank{rank}"]
        assert w.group == run_id and w.exit_code == 0
        assert w.history(f"rank{rank}/loss") == _expected(rank)

    # ClearML: one task per rank (offline, a task is a session with one writer).
    sessions = {s.properties["tracelet_rank"]: s for s in _clearml_sessions(tmp_path)}
    assert set(sessions) == {"0", "1", "2"}
    for rank in range(RANKS):
        s = sessions[str(rank)]
        assert s.properties["tracelet_run_id"] == run_id
        assert s.properties["tracelet_status"] == "FINISHED"
        assert s.name == ("ddp" if rank == 0 else f"ddp rank{rank}")
        assert s.scalars[(f"rank{rank}", "loss")] == _expected(rank)
    print(
        f"\nall ranks: {RANKS} x {STEPS} points in one MLflow run, {RANKS} W&B runs, {RANKS} tasks"
    )
