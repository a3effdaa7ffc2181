"""Helpers shared by the reliability tests: reading runs back from MLflow, child scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def mlflow_run(uri: str, tracelet_run_id: str) -> Any:
    """The MLflow run a tracelet run created (found by its ``tracelet.run_id`` tag)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments, filter_string=f"tags.`tracelet.run_id` = '{tracelet_run_id}'"
    )
    assert len(runs) == 1, f"expected one MLflow run for {tracelet_run_id}, found {len(runs)}"
    return runs[0]


def mlflow_history(uri: str, run_id: str, name: str) -> list[tuple[int, float, int]]:
    """``(step, value, timestamp_ms)`` of one metric, sorted by step then time."""
    from mlflow import MlflowClient

    history = MlflowClient(uri).get_metric_history(run_id, name)
    return sorted((m.step, m.value, m.timestamp) for m in history)


def assert_exactly_once(steps: list[int], expected: range | list[int], what: str) -> None:
    """Every expected step present once: no gap, no duplicate."""
    assert len(steps) == len(set(steps)), f"{what}: {len(steps) - len(set(steps))} duplicates"
    missing = sorted(set(expected) - set(steps))
    extra = sorted(set(steps) - set(expected))
    assert not missing and not extra, f"{what}: missing {missing[:10]}…, unexpected {extra[:10]}…"


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELET_")}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def spawn(script: str, cwd: Path, **env: str) -> subprocess.Popen[str]:
    """Run `script` (dedented Python) in a child interpreter in `cwd`."""
    path = cwd / "child.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.Popen(
        [sys.executable, str(path)],
        cwd=cwd,
        env=child_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``tracelet`` command (the console script) in a child process."""
    exe = Path(sys.executable).with_name("tracelet")
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def agent_done(run_dir: Path, timeout: float) -> dict[str, Any]:
    """agent.json once the delivery agent reported it is done and its process is gone."""
    import psutil

    from tests._helpers import wait_for

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def done() -> dict[str, Any] | None:
        try:
            status = read_json(run_dir / "agent.json")
        except (OSError, ValueError):
            return None
        return dict(status) if status.get("state") == "done" and gone(status["pid"]) else None

    return wait_for(done, timeout, f"the delivery agent of {run_dir.name} done", interval=0.1)


def kill_node(proc: subprocess.Popen[str], run_dir: Path) -> None:
    """SIGKILL the trainer and its delivery agent, as when their node is lost."""
    import signal

    agent = json.loads((run_dir / "agent.json").read_text())["pid"]
    proc.kill()
    try:
        os.kill(agent, signal.SIGKILL)
    except ProcessLookupError:  # it was done already
        pass
    proc.communicate()


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / ".tracelet" / "runs").glob("*/run.json"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@contextmanager
def stopped(server: Any) -> Iterator[None]:
    """The server stopped inside the block, started again (same port and store) after."""
    server.stop()
    try:
        yield
    finally:
        server.start()
