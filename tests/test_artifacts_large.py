"""A 500 MB artifact: bounded memory, through a 30 s ``mlflow server`` outage and a SIGKILL.

The trainer is a child process logging into a real ``mlflow server`` (with its
artifact proxy). It logs a 500 MB file (A) while logging points, and reports
its peak RSS. The test stops the server for 30 s during A's upload, restarts
it on the same port and store, and waits for A to arrive from the live
trainer. Then, with the server down again, the trainer logs a second 500 MB
file (B, A's file rewritten) and is killed with SIGKILL; with the server back,
the delivery agent, which outlived the trainer, delivers B. The server ends up
holding A and B once each, byte for byte, and every point.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests._helpers import wait_for
from tests._reliability import agent_done
from tests._servers import MlflowServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak RSS"),
]

MB = 1 << 20
SIZE_MB = 500

TRAINER = textwrap.dedent(
    """
    import json, os, sys, time
    import tracelet
    from tracelet import TraceletSettings

    uri, big, out = sys.argv[1], sys.argv[2], sys.argv[3]

    def status_mb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def peak_mb():  # the peak resident size since the baseline was taken
        return status_mb("VmHWM")

    def baseline_mb():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak (VmHWM) to the current resident size
        return status_mb("VmRSS")

    def report(**fields):
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(fields, f)
        os.replace(tmp, out)

    exp = tracelet.start_logging(
        project="large", exp_name="500mb", backend="mlflow",
        config={"mlflow": {"tracking_uri": uri}},
        settings=TraceletSettings(track_system=False, track_git=False, track_env=False),
    )
    step = 0
    def points(n):
        global step
        for _ in range(n):
            exp.log_metric("loss", 1.0 / (step + 1), iteration=step)
            step += 1

    def go(phase):  # wait for the test's word, logging a point every 0.1 s meanwhile
        while not os.path.exists(f"{out}.{phase}"):
            points(1)
            report(phase="wait-" + phase, run_dir=str(exp.run_dir), base=base, peak=peak_mb(),
                   step=step, failures=exp._deliveries[0].failures)
            time.sleep(0.1)

    def journaled():
        while exp._history.points < step or exp._history.backlog:
            time.sleep(0.01)

    points(100)
    while exp._deliveries[0].delivered < 100:  # MLflow imported and the run open: the baseline
        time.sleep(0.05)
    base = baseline_mb()
    go("a")
    exp.log_artifact(big, "model/a.bin")
    points(100)
    go("b")
    exp.log_artifact(big, "model/b.bin")
    points(100)
    journaled()
    report(phase="b", run_dir=str(exp.run_dir), base=base, peak=peak_mb(), step=step)
    while True:  # until killed
        time.sleep(1)
    """
)


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_random(path: Path, size_mb: int) -> str:
    """`size_mb` MiB of random data, written 1 MiB at a time; returns its hash."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size_mb):
            block = os.urandom(MB)
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def stored(server_root: Path, name: str) -> list[Path]:
    return list((server_root / "artifacts").glob(f"*/*/artifacts/model/{name}"))


def test_500mb_artifact_bounded_memory_outage_and_sigkill(
    tmp_path: Path, mlflow_template: Path
) -> None:
    root = tmp_path / "server"
    root.mkdir()
    server = MlflowServer(root, template=mlflow_template).start()
    big = tmp_path / "big.bin"
    trainer = None
    try:
        hash_a = write_random(big, SIZE_MB)
        script = tmp_path / "trainer.py"
        script.write_text(TRAINER)
        out = tmp_path / "trainer.json"
        trainer = subprocess.Popen(
            [sys.executable, str(script), server.url, str(big), str(out)], cwd=tmp_path
        )

        def state() -> dict[str, object] | None:
            return json.loads(out.read_text()) if out.exists() else None

        first = wait_for(state, 180, "the trainer's run open")
        run_dir = Path(str(first["run_dir"]))
        # The outage: the server down for 30 s from just before A is logged.
        server.stop()
        (tmp_path / "trainer.json.a").touch()
        time.sleep(30)  # the fault itself, not a wait for an outcome
        server.start()
        files = wait_for(
            lambda: [p for p in stored(root, "a.bin") if p.stat().st_size == SIZE_MB * MB],
            300,
            "A uploaded by the live trainer after the outage",
        )
        assert sha256(files[0]) == hash_a
        seen = wait_for(state, 10, "a report")
        assert int(seen["failures"]) > 0  # type: ignore[call-overload]  # the outage hit it
        grown = float(seen["peak"]) - float(seen["base"])  # type: ignore[arg-type]
        print(f"peak RSS grew by {grown:.1f} MB while capturing and uploading {SIZE_MB} MB")
        assert grown < 64, f"peak RSS grew by {grown:.0f} MB for a {SIZE_MB} MB artifact"
        # Delivered to the only backend: its captured copy is freed while the run goes on.
        wait_for(lambda: not (run_dir / "artifacts" / hash_a).exists(), 60, "A's copy freed")

        # B: logged with the server down, the trainer killed before it is uploaded.
        server.stop()
        hash_b = write_random(big, SIZE_MB)
        (tmp_path / "trainer.json.b").touch()
        wait_for(lambda: (s := state()) and s["phase"] == "b", 180, "the trainer logged B")
        step = int(state()["step"])  # type: ignore[index, arg-type]
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(30)
        big.unlink()  # nothing is read from the original any more
        server.start()
        # Nobody runs tracelet sync: the delivery agent outlives the trainer, uploads B
        # once the server is back, and ends the run KILLED.
        status = agent_done(run_dir, timeout=600)

        assert status["backends"]["mlflow"]["closed"]
        assert [sha256(p) for p in stored(root, "b.bin")] == [hash_b]
        assert [sha256(p) for p in stored(root, "a.bin")] == [hash_a]
        assert json.loads((run_dir / "run.json").read_text())["complete"] is True
        assert not list((run_dir / "artifacts").glob("*"))  # freed once the backend has them
        from mlflow import MlflowClient

        client = MlflowClient(server.url)
        state_file = json.loads((run_dir / "mlflow.state.json").read_text())
        history = client.get_metric_history(state_file["resume"]["run_id"], "loss")
        assert sorted(m.step for m in history) == list(range(step))
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
            trainer.wait(30)
        big.unlink(missing_ok=True)
        server.stop()
