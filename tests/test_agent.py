"""The delivery agent: tracker I/O in a process of its own, which outlives the trainer.

Each test runs the trainer as a child process (the test process itself has
MLflow imported for reading back), and reads what the real trackers stored.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests._helpers import wait_for
from tests._reliability import (
    agent_done,
    assert_exactly_once,
    mlflow_history,
    mlflow_run,
    read_json,
    spawn,
)
from tracelet.testing import offline_env

PRELUDE = """
import json, math, os, signal, sys, time
import tracelet
from tracelet import TraceletSettings
from tracelet._journal import count_points

URI = os.environ.get("TEST_URI")
QUIET = TraceletSettings(track_system=False, track_git=False, track_env=False)

def mark(what, **info):
    with open(what + ".tmp", "w") as f:
        json.dump(info, f)
    os.replace(what + ".tmp", what)
"""


def child_json(path: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> dict:
    """The JSON the child writes when it reaches a point of the test."""

    def written() -> bool:
        if proc.poll() is not None and not path.exists():
            raise AssertionError(f"child exited with {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
        return path.exists()

    wait_for(written, timeout, f"{path.name} written by the child", interval=0.02)
    return dict(json.loads(path.read_text()))


@pytest.mark.slow
def test_the_training_process_imports_no_tracker_sdk(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = spawn(
        PRELUDE
        + """
with tracelet.start_logging("no-sdk", "agent", backend=["mlflow", "wandb", "clearml"],
                            config={"mlflow": {"tracking_uri": URI}}, settings=QUIET) as exp:
    exp.log_params({"lr": 0.1})
    for i in range(3000):
        exp.log_metric("loss", 1.0 / (i + 1), iteration=i)
sdks = sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "wandb", "clearml"))
print(json.dumps({"run_id": exp.run_id, "run_dir": str(exp.run_dir), "sdks": sdks,
                  "backends": {b.backend: b.delivered for b in exp.report.backends},
                  "complete": exp.report.complete}))
""",
        tmp_path,
        TEST_URI=uri,
        **offline_env(tmp_path),
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-5000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["sdks"] == [], result["sdks"]
    assert result["complete"], result
    assert result["backends"] == {"mlflow": 3000, "wandb": 3000, "clearml": 3000}

    from tests._trackers import read_clearml, read_wandb

    run_dir = Path(result["run_dir"])
    run = mlflow_run(uri, result["run_id"])
    assert run.info.status == "FINISHED"
    steps = [s for s, _, _ in mlflow_history(uri, run.info.run_id, "loss")]
    assert_exactly_once(steps, range(3000), "mlflow loss")
    for name, read in (("wandb", read_wandb), ("clearml", read_clearml)):
        stored = read(read_json(run_dir / f"{name}.state.json")["resume"])
        assert_exactly_once([s for s, _ in stored.series["loss"]], range(3000), f"{name} loss")


@pytest.mark.slow
def test_a_trainer_killed_with_sigkill_is_delivered_and_ended_killed_by_the_agent(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = spawn(
        PRELUDE
        + """
exp = tracelet.start_logging("sigkill", "agent", backend="mlflow",
                             config={"tracking_uri": URI}, settings=QUIET)
exp.log_params({"lr": 0.1})
for i in range(30_000):
    exp.log_metric("loss", 1.0 / (i + 1), iteration=i)
journal = exp.run_dir / "journal.jsonl"
while count_points(journal) < 30_000:  # what the kill leaves is on disk
    time.sleep(0.01)
mark("ready", run_id=exp.run_id, run_dir=str(exp.run_dir))
while True:
    time.sleep(1)
""",
        tmp_path,
        TEST_URI=uri,
    )
    ready = child_json(tmp_path / "ready", proc)
    proc.kill()
    proc.communicate(timeout=60)
    killed = time.monotonic()
    assert proc.returncode == -signal.SIGKILL
    run_dir = Path(ready["run_dir"])

    status = agent_done(run_dir, timeout=90)  # nobody runs tracelet sync
    took = time.monotonic() - killed
    assert status["backends"]["mlflow"]["delivered"] == 30_000
    assert read_json(run_dir / "run.json")["status"] == "KILLED"
    run = mlflow_run(uri, ready["run_id"])
    assert run.info.status == "KILLED"
    assert run.data.params == {"lr": "0.1"}
    history = mlflow_history(uri, run.info.run_id, "loss")
    assert_exactly_once([s for s, _, _ in history], range(30_000), "loss")
    assert all(v == 1.0 / (s + 1) for s, v, _ in history)
    # Delivered whole; the journal stays for a run continued after the kill.
    assert read_json(run_dir / "run.json")["complete"] is True
    print(f"\nSIGKILL: the agent delivered 30,000 points and ended the run in {took:.1f} s")


@pytest.mark.slow
def test_a_million_points_with_default_settings_are_all_delivered_at_stop(tmp_path: Path) -> None:
    proc = spawn(
        PRELUDE
        + """
N = 1_000_000
tracelet.start_logging("million", "agent")  # default settings: MLflow's store in ./mlflow.db
exp = tracelet.get_active_experiment()
log = exp.log_metric
for i in range(N):
    log("loss", math.sin(i), iteration=i)
t0 = time.perf_counter()
tracelet.stop_logging()
print(json.dumps({"run_id": exp.run_id, "complete": exp.report.complete,
                  "points": exp.report.points, "close_s": time.perf_counter() - t0,
                  "backends": {b.backend: b.delivered for b in exp.report.backends}}))
""",
        tmp_path,
    )
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-5000:]
    result = json.loads(out.strip().splitlines()[-1])
    # The points of the run: the million, and the system samples taken as it started and ended.
    assert result["complete"] and result["points"] >= 1_000_000, result
    assert result["backends"] == {"mlflow": result["points"]}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = mlflow_run(uri, result["run_id"])
    assert run.info.status == "FINISHED"
    history = mlflow_history(uri, run.info.run_id, "loss")
    assert_exactly_once([s for s, _, _ in history], range(1_000_000), "loss")
    assert all(v == math.sin(s) for s, v, _ in history[::997])
    progress = [line for line in err.splitlines() if "delivering run" in line]
    assert progress, err[-3000:]  # stderr is no terminal: progress as log lines
    assert "mlflow" in progress[0] and f"/{result['points']:,}" in progress[0], progress
    print(f"\n1,000,000 points: stop_logging took {result['close_s']:.0f} s; {progress[-1]}")


@pytest.mark.slow
def test_sigterm_with_a_large_backlog_exits_promptly_and_the_agent_delivers_it(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = spawn(
        PRELUDE
        + """
exp = tracelet.start_logging("sigterm", "agent", backend="mlflow",
                             config={"tracking_uri": URI}, settings=QUIET)
for i in range(500_000):
    exp.log_metric("loss", 1.0 / (i + 1), iteration=i)
mark("ready", run_id=exp.run_id, run_dir=str(exp.run_dir))
while True:  # training goes on; SIGTERM arrives with most of the run undelivered
    time.sleep(0.01)
""",
        tmp_path,
        TEST_URI=uri,
    )
    ready = child_json(tmp_path / "ready", proc)
    run_dir = Path(ready["run_dir"])
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    # wait(), not communicate(): the agent inherits the trainer's stdout and stderr,
    # so their pipes end only when the agent is done too.
    proc.wait(timeout=120)
    exited = time.monotonic() - sent
    agent = read_json(run_dir / "agent.json")
    # The trainer did not sit out the delivery: when it was gone, the agent was not done.
    assert agent["state"] != "done" or agent["backends"]["mlflow"]["delivered"] < 500_000, agent

    agent_done(run_dir, timeout=600)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err[-3000:]
    assert "goes on delivering in the background" in err, err[-3000:]
    run = mlflow_run(uri, ready["run_id"])
    assert run.info.status == "KILLED"
    assert read_json(run_dir / "run.json")["status"] == "KILLED"
    steps = [s for s, _, _ in mlflow_history(uri, run.info.run_id, "loss")]
    assert_exactly_once(steps, range(500_000), "loss")
    print(f"\nSIGTERM with 500,000 points undelivered: the trainer exited in {exited:.1f} s")


@pytest.mark.slow
def test_an_agent_that_dies_mid_run_is_replaced_by_delivery_in_the_trainer(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = spawn(
        PRELUDE
        + """
exp = tracelet.start_logging("agent-dies", "agent", backend="mlflow",
                             config={"tracking_uri": URI}, settings=QUIET)
for i in range(20_000):
    exp.log_metric("loss", float(i), iteration=i)
while not exp._deliveries[0].delivered:
    time.sleep(0.01)
os.kill(json.loads((exp.run_dir / "agent.json").read_text())["pid"], signal.SIGKILL)
while not exp._run._fell_back:
    time.sleep(0.01)
for i in range(20_000, 40_000):
    exp.log_metric("loss", float(i), iteration=i)
exp.end()
print(json.dumps({"run_id": exp.run_id, "complete": exp.report.complete,
                  "sdks": sorted(m for m in sys.modules if m.startswith("mlflow"))[:1]}))
""",
        tmp_path,
        TEST_URI=uri,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-5000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["complete"]
    assert result["sdks"] == ["mlflow"]  # the fallback delivers from the trainer
    assert "delivering from this process instead" in err
    run = mlflow_run(uri, result["run_id"])
    assert run.info.status == "FINISHED"
    steps = [s for s, _, _ in mlflow_history(uri, run.info.run_id, "loss")]
    assert_exactly_once(steps, range(40_000), "loss")


def test_nan_and_inf_survive_the_journal_frames() -> None:
    from tracelet._journal import add_frame, encode
    from tracelet.export import Batch

    values = [0.5, math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324]
    records = [("m", v, i, i) for i, v in enumerate(values)] + [("p", {"big": 2**70})]
    batch = Batch()
    for line in encode(records).splitlines(keepends=True):
        add_frame(batch, line)
    got = [p.value for p in batch.metrics]
    assert [repr(v) for v in got] == [repr(v) for v in values]
    assert batch.params == {"big": 2**70}


def test_an_agent_that_cannot_start_is_said_once_and_the_run_delivers_from_the_trainer(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import tracelet
    from tests._helpers import QUIET
    from tracelet import _agentlink

    def no_process(*args: object, **kwargs: object) -> None:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(_agentlink.subprocess, "Popen", no_process)
    with tracelet.start_logging(
        "no-agent", "agent", backend="mlflow", config={"tracking_uri": mlflow_uri}, settings=QUIET
    ) as exp:
        for i in range(500):
            exp.log_metric("loss", float(i), iteration=i)
    assert exp.report is not None and exp.report.complete
    said = [r for r in caplog.records if "cannot start the delivery agent" in r.getMessage()]
    assert len(said) == 1
    run = mlflow_run(mlflow_uri, exp.run_id)
    steps = [s for s, _, _ in mlflow_history(mlflow_uri, run.info.run_id, "loss")]
    assert_exactly_once(steps, range(500), "loss")


def test_the_agent_gets_secrets_through_its_pipe_and_no_file_holds_them(
    tmp_path: Path, mlflow_uri: str
) -> None:
    import tracelet
    from tests._helpers import QUIET

    token = "sk-agent-pipe-0123456789abcdef"
    with tracelet.start_logging(
        "secret",
        "agent",
        backend="mlflow",
        config={"tracking_uri": mlflow_uri, "mlflow": {"tags": {"api_token": token}}},
        settings=QUIET,
    ) as exp:
        exp.log_metric("loss", 1.0, iteration=0)
    assert exp.report is not None and exp.report.complete
    for path in exp.run_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_without_waiting_the_run_returns_at_once_and_the_agent_finishes_it(
    mlflow_uri: str,
) -> None:
    import tracelet
    from tests._helpers import QUIET

    settings = QUIET.model_copy(update={"wait_for_delivery": False})
    with tracelet.start_logging(
        "no-wait", "agent", backend="mlflow", config={"tracking_uri": mlflow_uri}, settings=settings
    ) as exp:
        for i in range(5000):
            exp.log_metric("loss", float(i), iteration=i)
    report = exp.report
    assert report is not None and report.background and not report.complete
    status = agent_done(exp.run_dir, timeout=300)
    assert status["backends"]["mlflow"]["delivered"] == 5000
    run = mlflow_run(mlflow_uri, exp.run_id)
    assert run.info.status == "FINISHED"
    steps = [s for s, _, _ in mlflow_history(mlflow_uri, run.info.run_id, "loss")]
    assert_exactly_once(steps, range(5000), "loss")
    assert read_json(exp.run_dir / "run.json")["complete"] is True
