"""Processes stopped by signals: SIGTERM and Ctrl-C drain and close; sync recovers a kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests._helpers import wait_for
from tests._reliability import (
    assert_exactly_once,
    kill_node,
    mlflow_history,
    mlflow_run,
    read_json,
    run_cli,
    run_dirs,
    spawn,
)
from tracelet._journal import count_points

PRELUDE = """
import json, math, os, signal, sys, time
import tracelet
from tracelet import TraceletSettings
from tracelet._journal import count_points

URI = os.environ["TEST_URI"]
SETTINGS = TraceletSettings(track_system=False, track_git=False, track_env=False)

def start(name):
    return tracelet.start_logging(
        name, "signals", backend="mlflow", config={"tracking_uri": URI}, settings=SETTINGS
    )

def mark(what, **info):
    with open(what + ".tmp", "w") as f:
        json.dump(info, f)
    os.replace(what + ".tmp", what)
"""


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> dict:
    """The JSON the child writes when it reaches a point of the test."""

    def written() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"child exited with {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
        return path.exists()

    wait_for(written, timeout, f"{path.name} written by the child", interval=0.02)
    return dict(json.loads(path.read_text()))


def finish(proc: subprocess.Popen[str], timeout: float = 180.0) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def read_loss(uri: str, run_id: str) -> tuple[object, list[int]]:
    run = mlflow_run(uri, run_id)
    return run, [s for s, _, _ in mlflow_history(uri, run.info.run_id, "loss")]


@pytest.mark.slow
def test_sigterm_drains_closes_killed_and_still_terminates(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = spawn(
        PRELUDE
        + """
exp = start("sigterm")
i = 0
while True:  # a training loop that never ends by itself
    exp.log_metric("loss", 1.0 / (i + 1), iteration=i)
    i += 1
    if i == 20_000:
        mark("ready", run_id=exp.run_id)
    if i > 20_000 and i % 50 == 0:
        time.sleep(0.001)
""",
        tmp_path,
        TEST_URI=uri,
    )
    ready = wait_for_file(tmp_path / "ready", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == -signal.SIGTERM, err  # the default action still ended the process
    [run_dir] = run_dirs(tmp_path)
    assert read_json(run_dir / "run.json")["status"] == "KILLED"
    assert not (run_dir / "journal.jsonl").exists(), "everything was delivered at SIGTERM"
    run, steps = read_loss(uri, ready["run_id"])
    assert run.info.status == "KILLED"  # type: ignore[attr-defined]
    assert len(steps) >= 20_000
    assert_exactly_once(steps, range(len(steps)), "loss")  # nothing lost before the signal
    print(f"\nSIGTERM after {len(steps)} points: all delivered, run KILLED")


@pytest.mark.slow
def test_an_application_sigterm_handler_is_chained_not_replaced(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = spawn(
        PRELUDE
        + """
stop = []
def on_term(signum, frame):  # the application's own handler: checkpoint, then stop cleanly
    stop.append(signum)
    mark("handled", signum=signum)
signal.signal(signal.SIGTERM, on_term)
exp = start("chained")
i = 0
while not stop:
    exp.log_metric("loss", float(i), iteration=i)
    i += 1
    if i == 5_000:
        mark("ready", run_id=exp.run_id)
    if i > 5_000 and i % 50 == 0:
        time.sleep(0.001)
mark("left-loop", points=i)
""",
        tmp_path,
        TEST_URI=uri,
    )
    ready = wait_for_file(tmp_path / "ready", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err  # the application decided to exit normally
    assert read_json(tmp_path / "handled")["signum"] == signal.SIGTERM
    points = read_json(tmp_path / "left-loop")["points"]
    run, steps = read_loss(uri, ready["run_id"])
    assert run.info.status == "KILLED"  # type: ignore[attr-defined]
    assert_exactly_once(steps, range(points), "loss")


@pytest.mark.slow
def test_ctrl_c_ends_the_run_killed_with_everything_delivered(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = spawn(
        PRELUDE
        + """
# Ctrl-C as in a terminal, even where the test runner's own SIGINT is ignored
# (a background job): a child would inherit SIG_IGN and never see the signal.
signal.signal(signal.SIGINT, signal.default_int_handler)
with start("ctrl-c") as exp:
    i = 0
    while True:
        exp.log_metric("loss", float(i), iteration=i)
        i += 1
        if i == 5_000:
            mark("ready", run_id=exp.run_id)
        if i > 5_000 and i % 50 == 0:
            time.sleep(0.001)
""",
        tmp_path,
        TEST_URI=uri,
    )
    ready = wait_for_file(tmp_path / "ready", proc)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc)
    assert code != 0 and "KeyboardInterrupt" in err
    run, steps = read_loss(uri, ready["run_id"])
    assert run.info.status == "KILLED"  # type: ignore[attr-defined]
    assert len(steps) >= 5_000
    assert_exactly_once(steps, range(len(steps)), "loss")


@pytest.mark.slow
def test_kill_9_keeps_what_was_journaled_and_sync_recovers_it(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db")
    proc = spawn(
        PRELUDE
        + """
exp = start("sigkill")
exp.log_params({"lr": 0.1})
i = 0
while True:
    exp.log_metric("loss", 1.0 / (i + 1), iteration=i)
    i += 1
    if i == 30_000:  # an idle moment: until the journal on disk holds all of it
        journal = exp.run_dir / "journal.jsonl"
        while not (journal.exists() and count_points(journal) >= 30_000):
            time.sleep(0.01)
        mark("ready", run_id=exp.run_id, run_dir=str(exp.run_dir))
    if i > 30_000 and i % 20 == 0:
        time.sleep(0.0005)
""",
        tmp_path,
        TEST_URI=uri,
    )
    ready = wait_for_file(tmp_path / "ready", proc)
    # The loop runs on: a journal write after the idle moment, and points in flight at the kill.
    journal = Path(ready["run_dir"]) / "journal.jsonl"
    wait_for(lambda: count_points(journal) > 30_000, 120, "a journal write after the idle moment")
    killed_at = time.time_ns()
    run_dir = Path(ready["run_dir"])
    kill_node(proc, run_dir)  # the trainer and its delivery agent: a lost node
    assert proc.returncode == -signal.SIGKILL
    # it never ended (or the agent, killed a moment later, began to end it)
    assert read_json(run_dir / "run.json")["status"] in (None, "KILLED")

    synced = run_cli("sync", str(run_dir), cwd=tmp_path)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    run, steps = read_loss(uri, ready["run_id"])
    assert run.info.status == "KILLED"  # type: ignore[attr-defined]
    assert run.data.params == {"lr": "0.1"}  # type: ignore[attr-defined]
    # Everything logged before the idle moment was journaled; what followed is
    # there up to the last journal write before the kill.
    assert len(steps) >= 30_000
    assert_exactly_once(steps, range(len(steps)), "loss")
    last_ms = max(t for _, _, t in mlflow_history(uri, run.info.run_id, "loss"))  # type: ignore[attr-defined]
    print(
        f"\nkill -9: {len(steps)} points recovered by sync; the last journaled point was "
        f"logged {(killed_at / 1e6 - last_ms):.0f} ms before the kill "
        "(documented window: flush_interval = 200 ms plus one write)"
    )
