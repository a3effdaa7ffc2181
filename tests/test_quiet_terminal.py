"""What a first run prints on the user's terminal: nothing from MLflow creating its store.

MLflow gives its loggers their own stderr handler, so creating a new local
store used to print "Creating initial MLflow database tables..." and
"Updating database tables" at INFO on every fresh directory. Each case runs
in a fresh interpreter, as a user's script does, with no logging configured.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

RUN = """
import logging, sys
if sys.argv[1:] == ["explicit"]:  # the user asked for MLflow's store messages
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.INFO)
import tracelet
with tracelet.start_logging("first", "hello") as exp:
    for step in range(100):
        exp.log_metric("loss", 1 / (step + 1), iteration=step)
assert exp.report.complete, exp.report
level = logging.getLogger("mlflow.store.db.utils").level
assert level == (logging.INFO if sys.argv[1:] == ["explicit"] else logging.NOTSET), level
"""


def run(tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELET_", "MLFLOW_"))}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", TRACELET_TRACK_SYSTEM="false", **extra)
    return subprocess.run(
        [sys.executable, "-c", RUN, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_new_local_store_prints_nothing(tmp_path: Path) -> None:
    proc = run(tmp_path)  # MLflow's default store: ./mlflow.db, created now
    assert proc.returncode == 0, proc.stderr
    assert "database tables" not in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "INFO" in line] == [], proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run_] = client.search_runs([client.get_experiment_by_name("hello").experiment_id])
    assert len(client.get_metric_history(run_.info.run_id, "loss")) == 100


def test_a_level_the_user_set_is_kept(tmp_path: Path) -> None:
    # MLflow runs where tracker I/O runs: a level set on its loggers in the training
    # process applies with delivery="thread" (the agent is a process of its own).
    proc = run(tmp_path, "explicit", TRACELET_DELIVERY="thread")
    assert proc.returncode == 0, proc.stderr
    assert "Creating initial MLflow database tables" in proc.stderr, proc.stderr


FAILING = """
import logging, sys
if sys.argv[1:] == ["configured"]:  # the application's own logging format names the logger
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
import tracelet
from tracelet import TraceletSettings
settings = TraceletSettings(
    track_system=False, track_git=False, track_env=False, close_timeout=3.0
)
# Nothing listens on port 9: every request fails with a long urllib3 error.
uri = {"tracking_uri": "http://127.0.0.1:9", "http_max_retries": 0, "http_timeout": 1}
with tracelet.start_logging("down", "p", backend="mlflow", config=uri, settings=settings) as exp:
    exp.log_metric("loss", 1.0, iteration=0)
"""


def test_a_failing_backend_says_so_in_short_lines_that_name_tracelet_once(
    tmp_path: Path,
) -> None:
    for mode, prefix in (("bare", "tracelet: "), ("configured", "WARNING tracelet")):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACELET_", "MLFLOW_"))}
        done = subprocess.run(
            [sys.executable, "-c", FAILING, mode],
            cwd=tmp_path,
            env={**env, "MLFLOW_DISABLE_TELEMETRY": "true"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [line for line in done.stderr.splitlines() if "tracelet" in line]
        failed = [line for line in lines if "failed to start" in line]
        assert len(failed) == 1, done.stderr
        assert failed[0].startswith(prefix), failed
        for line in lines:
            assert "tracelet: tracelet:" not in line, line  # the logger name says it once
        assert max(len(line) for line in failed) < 400, failed  # the error in a line, not a repr
