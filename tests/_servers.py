"""Real servers the end-to-end tests start on 127.0.0.1 and stop by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """Stop a server started with ``start_new_session=True``: its whole process group."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass


class MlflowServer:
    """``mlflow server --workers 1`` on 127.0.0.1; `stop` and `start` keep port and store.

    Given a migrated `template` store (the ``mlflow_template`` fixture), the
    server starts on a copy of it instead of migrating a new one.
    """

    def __init__(self, root: Path, port: int | None = None, template: Path | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        if template is not None:
            shutil.copyfile(template, root / "server.db")
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MlflowServer:
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        # `python -m mlflow`, not bin/mlflow: a venv layered over another one
        # (a worktree's) runs MLflow from the other one and has no console script.
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'server.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            env=env,
            stdout=open(self.root / "server.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() takes the whole tree
        )
        wait_http(f"{self.url}/health", timeout=90, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
        self.proc = None
