"""Forked children (DataLoader workers) neither corrupt the parent's run nor hang on its locks."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import tracelet
from tests._helpers import QUIET
from tests._reliability import (
    assert_exactly_once,
    mlflow_history,
    mlflow_run,
    spawn,
)
from tracelet import _lifecycle

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def wait_child(pid: int, timeout: float = 30.0) -> int:
    """The child's exit code; fails (and kills it) if it hangs."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child hung")
        time.sleep(0.01)


def test_a_child_forked_while_locks_are_held_does_not_hang_or_write(
    tmp_path: Path, mlflow_uri: str
) -> None:
    exp = tracelet.start_logging(
        "fork", "fork", backend="mlflow", config={"tracking_uri": mlflow_uri}, settings=QUIET
    )
    for i in range(1000):
        exp.log_metric("loss", float(i), iteration=i)

    # Another thread holds the producer lock and the journal's condition at the fork.
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with exp._run.lock, exp._history._room:
            held.set()
            release.wait()

    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    out = tmp_path / "child.json"
    pid = os.fork()
    if pid == 0:  # the child: every call returns at once and records nothing
        code = 1
        try:
            exp.log_metric("loss", -1.0, iteration=10**6)
            exp.log_metrics({"child": 1.0})
            exp.log_params({"child": True})
            exp.set_tags({"child": "yes"})
            active = tracelet.get_active_experiment()
            tracelet.stop_logging()
            report = exp.end()
            ours = signal.getsignal(signal.SIGTERM) is _lifecycle._handle
            out.write_text(
                json.dumps({"active": active is not None, "points": report.points, "ours": ours})
            )
            code = 0
        finally:
            os._exit(code)
    release.set()
    t.join()
    assert wait_child(pid) == 0
    assert json.loads(out.read_text()) == {"active": False, "points": 0, "ours": False}
    assert signal.getsignal(signal.SIGTERM) is _lifecycle._handle  # the parent keeps it

    assert tracelet.get_active_experiment() is exp  # the parent's run goes on
    for i in range(1000, 2000):
        exp.log_metric("loss", float(i), iteration=i)
    report = exp.end()
    assert report.complete and report.points == 2000
    run = mlflow_run(mlflow_uri, exp.run_id)
    assert run.info.status == "FINISHED"
    assert "child" not in run.data.params and "child" not in run.data.tags
    history = mlflow_history(mlflow_uri, run.info.run_id, "loss")
    assert_exactly_once([s for s, _, _ in history], range(2000), "loss")


def _worker(k: int) -> tuple[bool, int]:
    exp = tracelet.get_active_experiment()
    return exp is None, k * k


def test_fork_pool_workers_see_no_active_run(tmp_path: Path, mlflow_uri: str) -> None:
    exp = tracelet.start_logging(
        "pool", "fork", backend="mlflow", config={"tracking_uri": mlflow_uri}, settings=QUIET
    )
    exp.log_metric("loss", 1.0, iteration=0)
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(2)
    try:
        results = pool.map(_worker, range(8))
    finally:
        pool.close()  # workers leave on their own, as a DataLoader's do
        pool.join()
    assert results == [(True, k * k) for k in range(8)]
    exp.log_metric("loss", 2.0, iteration=1)
    report = exp.end()
    assert report.complete and report.points == 2


def test_a_child_that_exits_normally_leaves_the_parents_run_open(
    tmp_path: Path, mlflow_store: Callable[[Path], str]
) -> None:
    """At exit a child runs atexit hooks: they must not end (or write) the parent's run."""
    uri = mlflow_store(tmp_path / "mlflow.db")  # the child opens this migrated copy
    proc = spawn(
        """
import os, sys, json, tracelet, logging
from tracelet import TraceletSettings
logging.basicConfig()
s = TraceletSettings(track_system=False, track_git=False, track_env=False)
exp = tracelet.start_logging("exit", "fork", backend="mlflow",
                             config={"tracking_uri": os.environ["TEST_URI"]}, settings=s)
for i in range(500):
    exp.log_metric("loss", float(i), iteration=i)
pid = os.fork()
if pid == 0:
    exp.log_metric("loss", 99.0, iteration=9999)   # ignored, with one warning
    exp.log_metric("loss", 98.0, iteration=9998)
    sys.exit(0)                                      # atexit hooks run here
_, status = os.waitpid(pid, 0)
for i in range(500, 1000):
    exp.log_metric("loss", float(i), iteration=i)
report = exp.end()
print(json.dumps({"child": os.waitstatus_to_exitcode(status), "complete": report.complete,
                  "points": report.points, "run_id": exp.run_id}))
""",
        tmp_path,
        TEST_URI=uri,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["child"] == 0 and result["complete"] and result["points"] == 1000
    assert err.count("is a fork of the process running experiment") == 1
    run = mlflow_run(uri, result["run_id"])
    assert run.info.status == "FINISHED"
    history = mlflow_history(uri, run.info.run_id, "loss")
    assert_exactly_once([s for s, _, _ in history], range(1000), "loss")
