"""`tracelet sync`: a backend down at exit, points kept on disk, delivered later exactly once."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tracelet
from tests._helpers import QUIET, wait_for
from tests._reliability import (
    assert_exactly_once,
    mlflow_history,
    mlflow_run,
    read_json,
    run_cli,
)
from tests._servers import MlflowServer, free_port
from tracelet import cli
from tracelet._journal import encode

SHORT = QUIET.model_copy(update={"close_timeout": 3.0})


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path
) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` of this module's own, which the tests stop and restart."""
    srv = MlflowServer(tmp_path_factory.mktemp("sync-server"), template=mlflow_template).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_backend_down_at_exit_is_reported_kept_and_synced(
    server: MlflowServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tracelet")
    exp = tracelet.start_logging(
        "down-at-exit",
        "sync",
        backend="mlflow",
        config={"tracking_uri": server.url, "http_timeout": 2},
        settings=SHORT,
    )
    exp.log_params({"lr": 0.01, "layers": 3})
    for i in range(3000):
        exp.log_metric("loss", 1 / (i + 1), iteration=i)
    [delivery] = exp._deliveries
    # A checkpoint, not a wait for data to land: the MLflow run exists and holds points.
    wait_for(lambda: delivery.delivered >= 1000, what="1000 points delivered")
    server.stop()
    try:
        for i in range(3000, 8000):
            exp.log_metric("loss", 1 / (i + 1), iteration=i)
        report = exp.end()

        # Reported, kept on disk, and the way to deliver it said.
        [mlflow] = report.backends
        assert report.points == 8000 and not report.complete
        assert mlflow.delivered + mlflow.undelivered == 8000 and mlflow.undelivered > 0
        run_dir = exp.run_dir
        assert (run_dir / "journal.jsonl").exists()
        assert f"tracelet sync {run_dir}" in caplog.text
        assert read_json(run_dir / "run.json")["status"] == "FINISHED"

        # Still down: sync says what is missing and exits 1.
        down = run_cli("sync", str(run_dir), "--timeout", "3", cwd=tmp_path)
        assert down.returncode == 1, down.stdout + down.stderr
        assert "still undelivered" in down.stdout
    finally:
        server.start()

    synced = run_cli("sync", str(run_dir), cwd=tmp_path)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "complete" in synced.stdout
    assert not (run_dir / "journal.jsonl").exists()

    run = mlflow_run(server.url, exp.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.01", "layers": "3"}
    history = mlflow_history(server.url, run.info.run_id, "loss")
    assert_exactly_once([s for s, _, _ in history], range(8000), "loss")
    assert [v for _, v, _ in history] == [1 / (i + 1) for i in range(8000)]

    again = run_cli("sync", str(run_dir), cwd=tmp_path)
    assert again.returncode == 0 and "complete" in again.stdout


def test_a_backend_down_from_the_start_is_synced_into_the_store_given(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    exp = tracelet.start_logging(
        "never-up", "sync", backend="mlflow", config={"tracking_uri": dead}, settings=SHORT
    )
    for i in range(2500):
        exp.log_metric("acc", i / 2500, iteration=i)
    exp.set_tags({"stage": "pretrain"})
    with pytest.raises(RuntimeError, match="boom"), exp:
        raise RuntimeError("boom")  # the run ends FAILED, nothing delivered
    report = exp.report
    assert report is not None and report.backends[0].delivered == 0
    assert not (exp.run_dir / "mlflow.state.json").exists()  # the run was never created

    uri = mlflow_store(tmp_path / "later.db")
    code = cli.main(["sync", str(exp.run_dir), "--config", json.dumps({"tracking_uri": uri})])
    assert code == 0
    run = mlflow_run(uri, exp.run_id)
    assert run.info.status == "FAILED"  # the status the run ended with
    assert run.data.tags["stage"] == "pretrain"
    history = mlflow_history(uri, run.info.run_id, "acc")
    assert_exactly_once([s for s, _, _ in history], range(2500), "acc")


def test_a_torn_last_frame_is_ignored_and_the_status_can_be_overridden(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    exp = tracelet.start_logging(
        "torn", "sync", backend="mlflow", config={"tracking_uri": dead}, settings=SHORT
    )
    for i in range(1200):
        exp.log_metric("x", float(i), iteration=i)
    exp.end()
    journal = exp.run_dir / "journal.jsonl"
    torn = encode([("x", 1e9, 99_999, time.time_ns())])
    with journal.open("ab") as f:
        f.write(torn[: len(torn) // 2])  # what a kill -9 in the middle of a write leaves

    uri = mlflow_store(tmp_path / "torn.db")
    assert (
        cli.main(
            [
                "sync",
                str(exp.run_dir),
                "--status",
                "KILLED",
                "--config",
                json.dumps({"mlflow": {"tracking_uri": uri}}),
            ]
        )
        == 0
    )
    run = mlflow_run(uri, exp.run_id)
    assert run.info.status == "KILLED"
    steps = [s for s, _, _ in mlflow_history(uri, run.info.run_id, "x")]
    assert_exactly_once(steps, range(1200), "x")


def test_a_journal_cut_short_of_what_the_run_recorded_is_kept_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    exp = tracelet.start_logging(
        "cut", "sync", backend="mlflow", config={"tracking_uri": dead}, settings=SHORT
    )
    for i in range(5000):
        exp.log_metric("x", float(i), iteration=i)
    exp.end()
    assert read_json(exp.run_dir / "run.json")["points"] == 5000
    journal = exp.run_dir / "journal.jsonl"
    data = journal.read_bytes()
    last = data.rindex(b"\n", 0, len(data) - 1) + 1  # the last frame: 1000 points
    journal.write_bytes(data[: last + (len(data) - last) // 2])  # cut mid-line

    uri = f"sqlite:///{tmp_path / 'cut.db'}"
    code = cli.main(
        ["sync", str(exp.run_dir), "--config", json.dumps({"mlflow": {"tracking_uri": uri}})]
    )
    out = capsys.readouterr().out
    assert code == 1, out
    assert journal.exists()
    assert "1000 points are missing from the journal" in out
    assert "complete: the journal was removed" not in out
    run = mlflow_run(uri, exp.run_id)
    steps = [s for s, _, _ in mlflow_history(uri, run.info.run_id, "x")]
    assert_exactly_once(steps, range(4000), "x")  # the intact frames, once
    assert read_json(exp.run_dir / "run.json")["complete"] is False


def test_sync_refuses_a_run_its_process_still_owns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tracelet.start_logging("live", backend="memory", settings=QUIET)
    exp.log_metric("a", 1.0)
    assert cli.main(["sync", str(exp.run_dir)]) == 2
    assert "still owned by process" in capsys.readouterr().err
    exp.end()
    assert cli.main(["sync", str(exp.run_dir)]) == 0  # ended: unlocked, nothing left to do


def test_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sync", str(tmp_path / "nope")]) == 2
    assert "not a tracelet run directory" in capsys.readouterr().err
    exp = tracelet.start_logging("cfg", backend="memory", settings=QUIET)
    exp.end()
    assert cli.main(["sync", str(exp.run_dir), "--config", "[1]"]) == 2
    assert cli.main(["sync", str(exp.run_dir), "--config", '{"no_such": 1}']) == 2
    assert cli.main(["sync", str(exp.run_dir), "--backend", "wandb"]) == 2
    out = capsys.readouterr().err
    assert "no_such" in out and "has no backend 'wandb'" in out


def test_options_in_run_json_are_the_non_secret_ones(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    uri = mlflow_store(tmp_path / "o.db")
    exp = tracelet.start_logging(
        "opts",
        backend="mlflow",
        config={"tracking_uri": uri, "tracking_token": "tok-123456789", "tags": ["a"]},
        settings=QUIET,
    )
    exp.end()
    saved = read_json(exp.run_dir / "run.json")
    assert saved["options"]["mlflow"]["tracking_uri"] == uri
    assert saved["options"]["mlflow"]["tags"] == ["a"]
    assert "tracking_token" not in saved["options"]["mlflow"]
    assert "tok-123456789" not in (exp.run_dir / "run.json").read_text()
