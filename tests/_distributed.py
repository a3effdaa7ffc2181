"""Launch a training script under torchrun (CPU, gloo) and read back what its ranks reported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests._reliability import child_env

#: Each rank: a real gloo process group, an all_reduce per step, tracelet as
#: every rank calls it. TEST_* variables shape the run; the rank writes what
#: it saw to out/rank<N>.json.
TRAIN = """
import json, os, sys
import torch
import torch.distributed as dist
import tracelet
from tracelet import TraceletSettings

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
steps = int(os.environ["TEST_STEPS"])
settings = TraceletSettings(
    track_system=os.environ.get("TEST_SYSTEM") == "1",
    metrics_interval=float(os.environ.get("TEST_INTERVAL", "10")),
    track_git=False, track_env=False, ranks=os.environ["TEST_RANKS"])
exp = tracelet.start_logging(
    "ddp", "dist", backend=os.environ["TEST_BACKENDS"].split(","),
    config=json.loads(os.environ.get("TEST_CONFIG", "{}")), settings=settings)
exp.log_params({"lr": 0.1, "world_size": world})
t = torch.zeros(1)
for step in range(steps):
    t.fill_(rank)
    dist.all_reduce(t)  # every rank takes part in every step
    exp.log_metric("loss", rank * 1000 + step, iteration=step)
    exp.log_metric("rank_sum", float(t.item()), iteration=step)
report = exp.end()
os.makedirs("out", exist_ok=True)
with open(f"out/rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "local_rank": int(os.environ["LOCAL_RANK"]), "run_id": report.run_id,
               "run_dir": str(report.run_dir), "points": report.points,
               "complete": report.complete, "backends": [b.backend for b in report.backends],
               "host_samples": exp._run.sampler.samples if exp._run.sampler else None}, f)
dist.barrier()
dist.destroy_process_group()
"""


def write_script(cwd: Path) -> Path:
    path = cwd / "train.py"
    path.write_text(textwrap.dedent(TRAIN))
    return path


def torchrun(
    cwd: Path, *launcher: str, env: dict[str, str], timeout: float = 300
) -> subprocess.Popen[str]:
    """Start ``torchrun <launcher args> train.py`` in `cwd` (not waited for)."""
    script = write_script(cwd)
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *launcher, str(script)],
        cwd=cwd,
        env=child_env(OMP_NUM_THREADS="1", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-6000:]
    return out


def reports(cwd: Path) -> dict[int, dict[str, Any]]:
    """What each rank wrote to out/rank<N>.json, by global rank."""
    found = {}
    for path in (cwd / "out").glob("rank*.json"):
        data = json.loads(path.read_text())
        found[int(data["rank"])] = data
    return found
